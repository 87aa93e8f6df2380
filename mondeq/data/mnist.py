"""MNIST: reading the IDX files and downloading them from the standard mirrors.

The four MNIST files are stored in the repository under ``data/mnist`` as gzip-compressed IDX
files, so the project runs offline. Missing files can be fetched with :func:`download_mnist`
(temporary file, MD5 check, atomic rename; see :mod:`mondeq.data.download`).

Checksums are taken over the *decompressed* IDX payload rather than over the ``.gz`` bytes. The
payload checksums are the well-known ones for MNIST and do not depend on how a copy happened to
be gzip-compressed (the copies committed to this repository were recompressed, so their ``.gz``
bytes differ from the mirrors' although their contents are identical).

Example:
    >>> images, labels = load_mnist(train=False)
    >>> images.shape, labels.shape
    (torch.Size([10000, 1, 28, 28]), torch.Size([10000]))
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .download import download_file, file_md5
from ..errors import DatasetFileError, MissingDatasetError
from .root import _SOURCE_TREE, resolve_data_root

__all__ = [
    "DEFAULT_ROOT",
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_MEAN",
    "MNIST_MIRRORS",
    "MNIST_STD",
    "download_mnist",
    "load_mnist",
    "mnist_root",
    "read_idx",
]

#: The MNIST folder of the source checkout (``data/mnist`` next to the package). It exists only
#: when running from a checkout; :func:`mnist_root` is the folder actually used.
DEFAULT_ROOT = _SOURCE_TREE / "data" / "mnist"

#: Mirrors tried in order by :func:`download_mnist`.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: File names of the (images, labels) pair of each split.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: MD5 of the decompressed IDX payload of each file (see the module docstring).
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}

#: Mean and standard deviation of the MNIST training pixels (in [0, 1]).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UINT8 = 0x08


def _read_payload(path: Path) -> bytes:
    """Returns the (decompressed if gzip) bytes of ``path``."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetFileError.corrupt(path, f"invalid or truncated gzip data ({exc})") from exc


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Reads an IDX file (gzip-compressed or plain) into a uint8 tensor.

    Only the unsigned-byte element type (code ``0x08``), which all MNIST
    files use, is supported.  Gzip compression is detected from the file's
    leading bytes, not from its name.

    Args:
        path: Path of the IDX file.

    Returns:
        A ``torch.uint8`` tensor whose shape is given by the file's header.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DatasetFileError: If the file is not valid gzip, has a wrong magic
            number or element type, or its size does not match its header.
    """
    path = Path(path)
    data = _read_payload(path)
    if len(data) < 4:
        raise DatasetFileError.corrupt(path, f"only {len(data)} bytes, too short for an IDX header")
    zero0, zero1, dtype_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DatasetFileError.corrupt(
            path,
            f"wrong magic number 0x{int.from_bytes(data[:4], 'big'):08x} "
            "(an IDX file starts with two zero bytes)",
        )
    if dtype_code != _IDX_UINT8:
        raise DatasetFileError.corrupt(
            path,
            f"unsupported IDX element type 0x{dtype_code:02x} "
            f"(only 0x{_IDX_UINT8:02x}, unsigned byte, is supported)",
        )
    if ndim == 0:
        raise DatasetFileError.corrupt(path, "IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFileError.corrupt(
            path, f"truncated header: {len(data)} bytes, need {header} for {ndim} dims"
        )
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    count = 1
    for dim in shape:
        count *= dim
    if len(data) != header + count:
        raise DatasetFileError.corrupt(
            path,
            f"size mismatch: header declares shape {shape} ({count} bytes of data) "
            f"but the file holds {len(data) - header} bytes of data",
        )
    if count == 0:
        return torch.empty(shape, dtype=torch.uint8)
    buf = bytearray(data)  # writable buffer; the tensor keeps it alive
    return torch.frombuffer(buf, dtype=torch.uint8, count=count, offset=header).view(
        shape
    )


def mnist_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Returns the folder MNIST is loaded from: ``resolve_data_root(root) / "mnist"``.

    With no argument this is ``$MONDEQ_DATA/mnist`` if the ``MONDEQ_DATA`` environment variable
    is set (and non-empty), else the checkout's ``data/mnist`` (:data:`DEFAULT_ROOT`) when
    running from a source checkout, else ``~/.cache/mondeq/mnist``. The environment is read on
    every call, so it may be changed at run time.

    Args:
        root: An explicit data root (the folder holding ``mnist/``).
    """
    return resolve_data_root(root) / "mnist"


def download_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    timeout: float = 60.0,
) -> Path:
    """Downloads those of the four MNIST files that are missing from ``root``.

    Each file is fetched into a temporary file in ``root``, its MD5 is
    checked against :data:`MNIST_MD5`, and only then is it renamed into
    place, so an interrupted or corrupt download never leaves a bad file.
    Mirrors are tried in order; files already present are left untouched.

    Args:
        root: Directory for the files; created if needed.  Defaults to
            :func:`mnist_root`.
        mirrors: Base URLs to try, in order.
        timeout: Socket timeout per request, in seconds.

    Returns:
        The directory holding the files.

    Raises:
        ChecksumError: If a file was downloaded but no mirror delivered it
            with the expected checksum.
        DownloadError: If a file could not be downloaded at all.
    """
    root = mnist_root() if root is None else Path(root)
    if not mirrors:
        raise ValueError("mirrors must name at least one base URL")
    root.mkdir(parents=True, exist_ok=True)
    for name in MNIST_MD5:
        if not (root / name).is_file():
            urls = [mirror.rstrip("/") + "/" + name for mirror in mirrors]
            download_file(name, root, urls, MNIST_MD5[name], checksum=file_md5, timeout=timeout)
    return root


def _idx_file(root: Path, name: str) -> Path:
    """``root/name`` (gzip), or the uncompressed ``root/name`` without ``.gz`` that torchvision's
    ``MNIST/raw/`` also holds when only that one is there."""
    plain = root / name.removesuffix(".gz")
    return plain if not (root / name).is_file() and plain.is_file() else root / name


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Loads the MNIST training or test split into memory.

    Args:
        root: Directory holding the MNIST files (gzip-compressed, or plain as in
            torchvision's ``MNIST/raw/``).  Defaults to :func:`mnist_root` (the ``mnist/``
            folder of the data root).
        train: Load the 60000-image training split if true, else the
            10000-image test split.
        download: Download missing files with :func:`download_mnist`.

    Returns:
        ``(images, labels)``: images as ``float32`` in ``[0, 1]`` of shape
        ``(N, 1, 28, 28)`` and labels as ``int64`` of shape ``(N,)``.

    Raises:
        MissingDatasetError: If a file is missing and ``download`` is false (also a
            ``FileNotFoundError``).
        DatasetFileError: If a file is corrupt or the files do not fit
            together.
    """
    root = mnist_root() if root is None else Path(root)
    image_name, label_name = MNIST_FILES["train" if train else "test"]
    image_path, label_path = _idx_file(root, image_name), _idx_file(root, label_name)
    for path in (image_path, label_path):
        if not path.is_file():
            if not download:
                raise MissingDatasetError(
                    f"MNIST file {path} is missing (mondeq.data.download_mnist(root) fetches the "
                    "four files)"
                )
            download_mnist(root)
            break

    raw_images = read_idx(image_path)
    raw_labels = read_idx(label_path)
    if raw_images.dim() != 3 or tuple(raw_images.shape[1:]) != (28, 28):
        raise DatasetFileError.corrupt(
            image_path,
            f"expected images of shape (N, 28, 28), got {tuple(raw_images.shape)}",
        )
    if raw_labels.dim() != 1 or raw_labels.shape[0] != raw_images.shape[0]:
        raise DatasetFileError.corrupt(
            label_path,
            f"expected {raw_images.shape[0]} labels to match {image_path.name}, "
            f"got shape {tuple(raw_labels.shape)}",
        )
    if raw_labels.numel() and int(raw_labels.max()) > 9:
        raise DatasetFileError.corrupt(label_path, f"label {int(raw_labels.max())} is outside 0..9")

    images = raw_images.unsqueeze(1).to(torch.float32).div_(255.0)
    labels = raw_labels.to(torch.int64)
    return images, labels
