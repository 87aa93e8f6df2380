"""SVHN (cropped digits): reading the official ``train_32x32.mat`` / ``test_32x32.mat``.

Each file is a MATLAB (v5) file with two variables: ``X``, a 32×32×3×N uint8 array indexed
(row, column, channel, image), and ``y``, an N×1 array of labels 1..10 where 10 stands for the
digit 0. They are read with :func:`scipy.io.loadmat`; labels are mapped 10 → 0 so that the label
is the digit. :func:`download_svhn` fetches a file from the official address
(http://ufldl.stanford.edu/housenumbers/) and checks its MD5.

Example:
    >>> images, labels = load_svhn("/datasets/svhn", split="test")
    >>> images.shape, labels.shape
    (torch.Size([26032, 3, 32, 32]), torch.Size([26032]))
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import scipy.io
import torch
from torch import Tensor

from .download import download_file
from ..errors import DatasetFileError, MissingDatasetError
from .root import resolve_data_root

__all__ = ["SVHN_FILES", "SVHN_MD5", "SVHN_URL", "download_svhn", "load_svhn"]

#: Official address of the cropped-digit files.
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
#: File of each split.
SVHN_FILES: dict[str, str] = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
#: MD5 of each official file (as checked by e.g. torchvision's ``SVHN.split_list``).
SVHN_MD5: dict[str, str] = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}


def _split_file(split: str) -> str:
    if split not in SVHN_FILES:
        raise ValueError(f"split must be one of {sorted(SVHN_FILES)}, got {split!r}")
    return SVHN_FILES[split]


def download_svhn(
    root: str | os.PathLike[str] | None = None, *, split: str = "train", timeout: float = 60.0
) -> Path:
    """Downloads ``split``'s .mat file into ``root`` (default: the data root's ``svhn/``) unless
    it is there, checking its MD5 (:data:`SVHN_MD5`).

    Returns:
        The path of the file.

    Raises:
        ChecksumError: If the download does not have the expected MD5 (nothing is written).
        DownloadError: If the address cannot be reached.
    """
    name = _split_file(split)
    root = resolve_data_root() / "svhn" if root is None else Path(root)
    if (root / name).is_file():
        return root / name
    return download_file(name, root, [SVHN_URL + name], SVHN_MD5[name], timeout=timeout)


def load_svhn(
    root: str | os.PathLike[str] | None = None, *, split: str = "train", download: bool = False
) -> tuple[Tensor, Tensor]:
    """Loads the SVHN training (73257 images) or test (26032 images) split into memory.

    Args:
        root: Folder holding ``train_32x32.mat`` / ``test_32x32.mat``. Defaults to the data
            root's ``svhn/`` (see :func:`mondeq.data.resolve_data_root`).
        split: ``"train"`` or ``"test"``.
        download: Fetch the file from the official address when it is missing.

    Returns:
        ``(images, labels)``: float32 images in [0, 1] of shape (N, 3, 32, 32) (R, G, B) and
        int64 labels of shape (N,) in 0..9 (the file's 10 is the digit 0).

    Raises:
        ValueError: If ``split`` is not "train" or "test".
        MissingDatasetError: If the file is absent and ``download`` is false.
        DatasetFileError: If the file is truncated, corrupt or not laid out as the official one.
    """
    name = _split_file(split)
    root = resolve_data_root() / "svhn" if root is None else Path(root)
    path = root / name
    if not path.is_file():
        if not download:
            raise MissingDatasetError(
                f"SVHN file {path} is missing. Pass download=True to load_svhn (or call "
                f"download_svhn) to fetch {SVHN_URL + name}, or copy it there (set --data-root or "
                "$MONDEQ_DATA to the folder holding svhn/).")
        download_svhn(root, split=split)
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except (ValueError, TypeError, OSError, EOFError, KeyError, IndexError, zlib.error,
            NotImplementedError) as exc:  # scipy's MatReadError is a ValueError
        raise DatasetFileError.corrupt(path, f"not a readable MATLAB file ({type(exc).__name__}: {exc})") from exc
    if "X" not in mat or "y" not in mat:
        raise DatasetFileError.corrupt(path, f"expected variables X and y, found {sorted(k for k in mat if not k.startswith('__'))}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetFileError.corrupt(path, f"expected X of shape (32, 32, 3, N) uint8, got {x.shape} {x.dtype}")
    n = x.shape[3]
    if y.size != n:
        raise DatasetFileError.corrupt(path, f"{n} images but {y.size} labels in y")
    labels = y.reshape(-1)
    if n and (not np.all(labels == np.round(labels)) or labels.min() < 1 or labels.max() > 10):
        raise DatasetFileError.corrupt(path, f"labels must be integers 1..10, got min {labels.min()}, "
                            f"max {labels.max()}")
    labels = labels.astype(np.int64) % 10
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return images.to(torch.float32).div_(255.0), torch.from_numpy(labels)
