"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): Zalando's 28 × 28 grey clothing images, ten classes.

The dataset is a drop-in replacement for MNIST: four gzip IDX files with MNIST's own names
(``train-images-idx3-ubyte.gz`` …), 60,000 training and 10,000 test images. They are read by the
MNIST reader (:func:`~mondeq.data.mnist.read_idx`); what differs is where they live, their
checksums, their mirror and their pixel statistics.

Where the files are looked for (:func:`mondeq.data.load_dataset`): the data root's
``fashion-mnist/`` (this project's layout), then torchvision's ``FashionMNIST/raw/``, then the
system folder of Debian's ``dataset-fashion-mnist`` package, :data:`DEBIAN_FOLDER`.

Checksums are over the *decompressed* IDX payload, as for MNIST: Debian re-gzipped the files, so
its ``.gz`` bytes differ from Zalando's while the contents are identical.

Example:
    >>> images, labels = load_fashion_mnist("/usr/share/datasets/fashion-mnist", train=False)
    >>> images.shape
    torch.Size([10000, 1, 28, 28])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from .download import download_file, file_md5
from ..errors import MissingDatasetError
from .mnist import MNIST_FILES, load_mnist
from .root import SYSTEM_FOLDERS, resolve_data_root

__all__ = ["DEBIAN_FOLDER", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES", "FASHION_MNIST_MD5",
           "FASHION_MNIST_MEAN", "FASHION_MNIST_MIRRORS", "FASHION_MNIST_STD",
           "download_fashion_mnist", "load_fashion_mnist"]

#: Where Debian's ``dataset-fashion-mnist`` package installs the four files.
DEBIAN_FOLDER = SYSTEM_FOLDERS["fashion-mnist"][0]

#: Zalando's mirror (the address torchvision's ``FashionMNIST`` downloads from).
FASHION_MNIST_MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

#: File names of the (images, labels) pair of each split: MNIST's names.
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = dict(MNIST_FILES)

#: MD5 of the decompressed IDX payload of each file (the same for Zalando's and Debian's copies).
FASHION_MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
}

#: Mean and standard deviation of the 60,000 training images' pixels in [0, 1] (measured on
#: the files: 0.28604, 0.35302).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

#: The label names, in label order.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
    "Ankle boot")


def download_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    mirrors: Sequence[str] = FASHION_MNIST_MIRRORS,
    timeout: float = 60.0,
) -> Path:
    """Downloads those of the four files that are missing from ``root`` (temporary file, payload
    MD5 check against :data:`FASHION_MNIST_MD5`, atomic rename; mirrors tried in order).

    Args:
        root: Folder for the files (created if needed); default: the data root's
            ``fashion-mnist/``.
        mirrors: Base URLs to try, in order.
        timeout: Socket timeout per request, in seconds.

    Returns:
        The folder holding the files.

    Raises:
        ChecksumError: A file arrived but with the wrong checksum from every mirror.
        DownloadError: A file could not be downloaded at all.
    """
    folder = resolve_data_root() / "fashion-mnist" if root is None else Path(root)
    if not mirrors:
        raise ValueError("mirrors must name at least one base URL")
    folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in FASHION_MNIST_MD5.items():
        if not (folder / name).is_file() and not (folder / name.removesuffix(".gz")).is_file():
            urls = [mirror.rstrip("/") + "/" + name for mirror in mirrors]
            download_file(name, folder, urls, md5, checksum=file_md5, timeout=timeout)
    return folder


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    download: bool = False,
) -> tuple[Tensor, Tensor]:
    """Loads the Fashion-MNIST training or test split from one folder.

    Args:
        root: The folder holding the four files (gzip, or plain as in torchvision's
            ``FashionMNIST/raw/``); default: the data root's ``fashion-mnist/``. To search the
            data root's layouts and the Debian folder, use ``load_dataset("fashion-mnist")``.
        train: The 60,000-image training split if true, else the 10,000-image test split.
        download: Fetch missing files with :func:`download_fashion_mnist`.

    Returns:
        ``(images, labels)``: float32 images in [0, 1] of shape (N, 1, 28, 28) and int64 labels
        of shape (N,) (:data:`FASHION_MNIST_CLASSES` names them).

    Raises:
        MissingDatasetError: A file is missing and ``download`` is false.
        DatasetFileError: A file is corrupt, or the pair does not fit together.
    """
    folder = resolve_data_root() / "fashion-mnist" if root is None else Path(root)
    for name in FASHION_MNIST_FILES["train" if train else "test"]:
        if not (folder / name).is_file() and not (folder / name.removesuffix(".gz")).is_file():
            if not download:
                raise MissingDatasetError(
                    f"Fashion-MNIST file {folder / name} is missing "
                    "(mondeq.data.download_fashion_mnist(folder) fetches the four files)")
            download_fashion_mnist(folder)
            break
    return load_mnist(folder, train=train, download=False)  # same IDX format and file names
