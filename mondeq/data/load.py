"""One entry point for every dataset: ``load_dataset(name, root)``."""

from __future__ import annotations

import os

from torch import Tensor

from .cifar10 import load_cifar10
from .mnist import load_mnist
from .root import resolve_data_root
from .specs import dataset_spec
from .svhn import load_svhn

__all__ = ["load_dataset"]


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    download: bool = False,
) -> tuple[Tensor, Tensor]:
    """Loads a split of ``name`` from the data root's ``name/`` folder.

    Args:
        name: "mnist", "cifar10" or "svhn" (a key of :data:`mondeq.data.DATASETS`).
        root: The data root (the folder holding ``mnist/``, ``cifar10/``, ``svhn/``), resolved
            by :func:`mondeq.data.resolve_data_root`: this argument, else ``$MONDEQ_DATA``,
            else the checkout's ``data/``, else ``~/.cache/mondeq``.
        train: The training split if true, else the test split.
        download: Fetch missing files from the official addresses (MD5-checked).

    Returns:
        ``(images, labels)``: float32 images in [0, 1] of shape (N, C, H, W) and int64 labels
        of shape (N,).

    Raises:
        ValueError: If ``name`` is unknown.
        MissingDatasetError: If files are missing and ``download`` is false.
        DatasetFileError: If a file is truncated or corrupt (the message names it).
    """
    spec = dataset_spec(name)
    folder = resolve_data_root(root) / spec.name
    if spec.name == "mnist":
        return load_mnist(folder, train=train, download=download)
    if spec.name == "cifar10":
        return load_cifar10(folder, train=train, download=download)
    return load_svhn(folder, split="train" if train else "test", download=download)
