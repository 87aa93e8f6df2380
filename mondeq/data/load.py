"""One entry point for every dataset: ``load_dataset(name, root)``, reading the data root in this
project's layout (``<root>/<name>/``) or in torchvision's (:data:`mondeq.data.root.TORCHVISION_LAYOUT`)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor

from .cifar10 import load_cifar10
from .fashion_mnist import load_fashion_mnist
from .mnist import load_mnist
from ..errors import MissingDatasetError
from .root import SYSTEM_FOLDERS, dataset_folders
from .specs import dataset_spec
from .svhn import load_svhn

__all__ = ["load_dataset"]

#: What torchvision's layout holds, for the missing-dataset message.
_TORCHVISION_FILES = {"mnist": "*-ubyte.gz or *-ubyte", "fashion-mnist": "*-ubyte.gz or *-ubyte",
                      "cifar10": "cifar-10-batches-py/ or cifar-10-python.tar.gz",
                      "svhn": "train_32x32.mat, test_32x32.mat"}


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    download: bool = False,
) -> tuple[Tensor, Tensor]:
    """Loads a split of ``name`` from the data root, in this project's layout or torchvision's.

    The project's layout (``<root>/mnist/``, ``<root>/fashion-mnist/``, ``<root>/cifar10/``,
    ``<root>/svhn/``) is tried first, then torchvision's: ``<root>/MNIST/raw/``,
    ``<root>/FashionMNIST/raw/``, ``<root>/cifar-10-batches-py/`` (or
    ``<root>/cifar-10-python.tar.gz``), ``<root>/train_32x32.mat`` and ``<root>/test_32x32.mat``;
    then a system folder a distribution installs the dataset in
    (:data:`mondeq.data.root.SYSTEM_FOLDERS`: Debian's ``/usr/share/datasets/fashion-mnist``);
    last, a ``root`` given here that is itself the dataset's folder (``data/mnist``).

    Args:
        name: "mnist", "fashion-mnist", "cifar10" or "svhn" (a key of
            :data:`mondeq.data.DATASETS`).
        root: The data root, resolved by :func:`mondeq.data.resolve_data_root`: this argument,
            else ``$MONDEQ_DATA``, else the checkout's ``data/``, else ``~/.cache/mondeq``.
        train: The training split if true, else the test split.
        download: Fetch missing files from the official addresses (MD5-checked) into the
            project's layout when neither layout has them.

    Returns:
        ``(images, labels)``: float32 images in [0, 1] of shape (N, C, H, W) and int64 labels
        of shape (N,).

    Raises:
        ValueError: If ``name`` is unknown.
        MissingDatasetError: If neither layout has the files and ``download`` is false (the
            message names both places).
        DatasetFileError: If a file is truncated or corrupt (the message names it).
    """
    spec = dataset_spec(name)
    ours, torchvision = dataset_folders(spec.name, root)
    misses = []
    system = SYSTEM_FOLDERS.get(spec.name, ())
    given = (Path(root),) if root is not None else ()  # a root that is the dataset's own folder
    for folder in (ours, torchvision, *system, *given):
        try:
            return _load(spec.name, folder, train=train, download=False)
        except MissingDatasetError as err:
            misses.append(err)
    if download:
        return _load(spec.name, ours, train=train, download=True)
    raise MissingDatasetError(
        f"{spec.name} ({'train' if train else 'test'} split) not found under the data root "
        f"{ours.parent}: looked in {ours} (this project's layout) and in {torchvision} "
        f"(torchvision's layout: {_TORCHVISION_FILES[spec.name]})"
        + "".join(f" and in {folder} (the system's copy)" for folder in system)
        + f". In the first: {misses[0]}"
    ) from misses[-1]


def _load(name: str, folder: Path, *, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """One dataset's reader on one folder."""
    if name == "mnist":
        return load_mnist(folder, train=train, download=download)
    if name == "fashion-mnist":
        return load_fashion_mnist(folder, train=train, download=download)
    if name == "cifar10":
        return load_cifar10(folder, train=train, download=download)
    return load_svhn(folder, split="train" if train else "test", download=download)
