"""CIFAR-10: reading the official python batches, from a folder or from the official tar.gz.

The official distribution ``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/`` with five
training batches ``data_batch_1`` … ``data_batch_5`` (10000 images each) and ``test_batch``.
Each batch is a pickled dict whose ``data`` entry is an N×3072 uint8 array, one image per row,
channel-major (1024 red, then 1024 green, then 1024 blue values, each a row-major 32×32 plane),
and whose ``labels`` entry lists N integers in 0..9. The batches were pickled by Python 2, so
their keys read as bytes (``b"data"``) or, with ``encoding="latin1"``, as str; both are accepted.

The pickles are read with a restricted unpickler that only rebuilds numpy arrays and plain
containers, so a tampered file cannot run code.

The data root's ``cifar10/`` folder may hold the extracted ``cifar-10-batches-py/`` or just the
tar.gz (read in place, without extracting); :func:`download_cifar10` fetches the tar.gz from the
official address and checks its MD5.

Example:
    >>> images, labels = load_cifar10("/datasets/cifar10", train=False)
    >>> images.shape, labels.shape
    (torch.Size([10000, 3, 32, 32]), torch.Size([10000]))
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .download import download_file
from ..errors import DatasetFileError, MissingDatasetError
from .root import resolve_data_root

__all__ = [
    "CIFAR10_ARCHIVE", "CIFAR10_FOLDER", "CIFAR10_MD5", "CIFAR10_URL", "download_cifar10",
    "load_cifar10", "read_cifar10_batch",
]

#: The official archive (https://www.cs.toronto.edu/~kriz/cifar.html) and its MD5, as published
#: by its authors and checked by e.g. torchvision's ``CIFAR10.tgz_md5``.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
#: The folder inside the archive.
CIFAR10_FOLDER = "cifar-10-batches-py"

_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCHES = ("test_batch",)
_PIXELS = 3 * 32 * 32

# What a CIFAR batch pickle may reference: numpy's array reconstruction (numpy 1 and 2 paths).
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _entry(batch: dict, key: str) -> object:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_cifar10_batch(blob: bytes, *, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parses one pickled CIFAR-10 batch.

    Args:
        blob: The pickle's bytes.
        source: Where the bytes came from (named in errors).

    Returns:
        ``(data, labels)``: uint8 array (N, 3, 32, 32) and int64 array (N,).

    Raises:
        DatasetFileError: If the bytes are not a well-formed CIFAR-10 batch.
    """
    try:
        batch = _ArrayUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as exc:
        raise DatasetFileError.corrupt(source, f"not a readable CIFAR-10 pickle batch ({type(exc).__name__}: "
                              f"{exc})") from exc
    if not isinstance(batch, dict):
        raise DatasetFileError.corrupt(source, f"expected a pickled dict, got {type(batch).__name__}")
    try:
        data, labels = _entry(batch, "data"), _entry(batch, "labels")
    except KeyError as exc:
        raise DatasetFileError.corrupt(source, f"the batch has no {exc} entry (keys: {sorted(map(str, batch))})")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DatasetFileError.corrupt(source, f"expected data of shape (N, {_PIXELS}) uint8, got "
                              f"{data.shape} {data.dtype}")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.shape[0] != data.shape[0]:
        raise DatasetFileError.corrupt(source, f"{data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetFileError.corrupt(source, f"labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return data.reshape(-1, 3, 32, 32), labels


def _batches_folder(root: Path) -> Path | None:
    for folder in (root / CIFAR10_FOLDER, root):
        if (folder / "test_batch").is_file() or (folder / "data_batch_1").is_file():
            return folder
    return None


def _read_from_folder(folder: Path, names: tuple[str, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise MissingDatasetError(
                f"CIFAR-10 batch {path} is missing (the folder {folder} should hold "
                f"{', '.join(_TRAIN_BATCHES + _TEST_BATCHES)}); copy the complete "
                f"{CIFAR10_FOLDER}/ or {CIFAR10_ARCHIVE} there")
        out.append(read_cifar10_batch(path.read_bytes(), source=path))
    return out


def _read_from_archive(archive: Path, names: tuple[str, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Reads the wanted batches in one pass over the archive (no extraction, no seeking back)."""
    wanted = {f"{CIFAR10_FOLDER}/{name}": name for name in names}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or not member.isfile():
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                found[name] = read_cifar10_batch(fh.read(), source=archive / member.name)
                if len(found) == len(names):
                    break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetFileError.corrupt(archive, f"invalid or truncated tar.gz archive ({exc})") from exc
    missing = [f"{CIFAR10_FOLDER}/{n}" for n in names if n not in found]
    if missing:
        raise DatasetFileError.corrupt(archive, f"the archive has no file {', '.join(missing)}")
    return [found[name] for name in names]


def download_cifar10(root: str | os.PathLike[str] | None = None, *, timeout: float = 60.0) -> Path:
    """Downloads ``cifar-10-python.tar.gz`` into ``root`` (default: the data root's ``cifar10/``)
    unless it is there, checking its MD5 (:data:`CIFAR10_MD5`).

    Returns:
        The path of the archive.

    Raises:
        ChecksumError: If the download does not have the expected MD5 (nothing is written).
        DownloadError: If the address cannot be reached.
    """
    root = resolve_data_root() / "cifar10" if root is None else Path(root)
    target = root / CIFAR10_ARCHIVE
    if target.is_file():
        return target
    return download_file(CIFAR10_ARCHIVE, root, [CIFAR10_URL], CIFAR10_MD5, timeout=timeout)


def load_cifar10(
    root: str | os.PathLike[str] | None = None, *, train: bool = True, download: bool = False
) -> tuple[Tensor, Tensor]:
    """Loads the CIFAR-10 training (50000 images) or test (10000 images) split into memory.

    Args:
        root: Folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz`` (or the
            batches themselves). Defaults to the data root's ``cifar10/``
            (see :func:`mondeq.data.resolve_data_root`).
        train: The five training batches if true, else ``test_batch``.
        download: Fetch the official archive when neither the batches nor the archive exist.

    Returns:
        ``(images, labels)``: float32 images in [0, 1] of shape (N, 3, 32, 32), channels in
        R, G, B order, and int64 labels of shape (N,) in 0..9.

    Raises:
        MissingDatasetError: If the files are absent and ``download`` is false.
        DatasetFileError: If a batch or the archive is truncated or corrupt (names the file).
    """
    root = resolve_data_root() / "cifar10" if root is None else Path(root)
    names = _TRAIN_BATCHES if train else _TEST_BATCHES
    folder = _batches_folder(root)
    archive = root / CIFAR10_ARCHIVE
    if folder is not None:
        parts = _read_from_folder(folder, names)
    else:
        if not archive.is_file():
            if not download:
                raise MissingDatasetError(
                    f"CIFAR-10 not found in {root}: expected {root / CIFAR10_FOLDER}/ or "
                    f"{archive}. Pass download=True to load_cifar10 (or call download_cifar10) "
                    f"to fetch {CIFAR10_URL}, or copy the files there (set --data-root or "
                    "$MONDEQ_DATA to their parent).")
            download_cifar10(root)
        parts = _read_from_archive(archive, names)
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images = torch.from_numpy(data).to(torch.float32).div_(255.0)
    return images, torch.from_numpy(labels)
