"""load_dataset reads a data root in this project's layout (``<root>/cifar10/``, ``<root>/svhn/``,
``<root>/mnist/``) and in torchvision's (``<root>/cifar-10-batches-py/`` or the tar.gz,
``<root>/{train,test}_32x32.mat``, ``<root>/MNIST/raw/``), the project's first; a missing
dataset's error names both places."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mondeq.data import MissingDatasetError, load_dataset
from tests.fake_datasets import write_fake_cifar10, write_fake_svhn, write_idx_pair


def to_torchvision_layout(root: Path, name: str) -> None:
    """Moves what the fake writers put in ``root/name/`` to where torchvision keeps it."""
    target = root / "MNIST" / "raw" if name == "mnist" else root
    target.mkdir(parents=True, exist_ok=True)
    for item in (root / name).iterdir():
        shutil.move(str(item), str(target / item.name))
    (root / name).rmdir()


def write_tiny_mnist(root: Path, n: int = 7, *, seed: int = 0, gzipped: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The four MNIST files in IDX format (n images each) under ``root/mnist``."""
    return write_idx_pair(root / "mnist", n, seed=seed, gzipped=gzipped)


def check_images(got: tuple[torch.Tensor, torch.Tensor], want: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = got
    expected = torch.from_numpy(want[0].astype(np.float32) / 255).reshape(images.shape)
    assert torch.equal(images, expected)
    assert torch.equal(labels, torch.from_numpy(want[1].astype(np.int64)))


@pytest.mark.parametrize("archive", [False, True])
def test_cifar10_in_torchvision_layout(tmp_path: Path, archive: bool) -> None:
    written = write_fake_cifar10(tmp_path, archive=archive)
    to_torchvision_layout(tmp_path, "cifar10")
    assert (tmp_path / ("cifar-10-python.tar.gz" if archive else "cifar-10-batches-py")).exists()
    check_images(load_dataset("cifar10", tmp_path, train=False), written["test"])
    check_images(load_dataset("cifar10", tmp_path, train=True), written["train"])


def test_svhn_in_torchvision_layout(tmp_path: Path) -> None:
    written = write_fake_svhn(tmp_path)
    to_torchvision_layout(tmp_path, "svhn")
    assert (tmp_path / "train_32x32.mat").is_file() and (tmp_path / "test_32x32.mat").is_file()
    check_images(load_dataset("svhn", tmp_path, train=True), written["train"])
    check_images(load_dataset("svhn", tmp_path, train=False), written["test"])


@pytest.mark.parametrize("gzipped", [True, False])
def test_mnist_in_torchvision_layout(tmp_path: Path, gzipped: bool) -> None:
    """torchvision keeps MNIST/raw/*-ubyte.gz and, once extracted, the plain *-ubyte files."""
    written = write_tiny_mnist(tmp_path, gzipped=gzipped)
    to_torchvision_layout(tmp_path, "mnist")
    check_images(load_dataset("mnist", tmp_path, train=False), written)


@pytest.mark.parametrize("name", ["cifar10", "svhn", "mnist"])
def test_project_layout_comes_first(tmp_path: Path, name: str) -> None:
    """With both layouts present, the project's own ``<root>/<name>/`` is read."""
    if name == "mnist":
        write_tiny_mnist(tmp_path, n=5, seed=1)
        to_torchvision_layout(tmp_path, name)
        ours = write_tiny_mnist(tmp_path, n=3, seed=2)
    else:
        writer = write_fake_cifar10 if name == "cifar10" else write_fake_svhn
        writer(tmp_path, n_test=9, seed=1)
        to_torchvision_layout(tmp_path, name)
        ours = writer(tmp_path, n_test=4, seed=2)["test"]
    check_images(load_dataset(name, tmp_path, train=False), ours)


@pytest.mark.parametrize("name, ours, theirs", [
    ("cifar10", "cifar10", "."),
    ("svhn", "svhn", "."),
    ("mnist", "mnist", "MNIST/raw"),
])
def test_missing_dataset_names_both_layouts(tmp_path: Path, name: str, ours: str, theirs: str) -> None:
    with pytest.raises(MissingDatasetError) as info:
        load_dataset(name, tmp_path, train=False)
    message = str(info.value)
    assert f"{tmp_path / ours} (this project's layout)" in message
    assert f"{tmp_path / theirs} (torchvision's layout" in message


@pytest.mark.parametrize("name", ["cifar10", "svhn", "mnist"])
def test_a_root_that_is_the_datasets_own_folder_is_read(tmp_path: Path, name: str) -> None:
    """``--data-root data/mnist`` (the dataset's folder, not the folder above it) reads the same
    files as ``--data-root data``, for every command, as `mondeq certify` always did."""
    if name == "mnist":
        written = write_tiny_mnist(tmp_path, n=4, seed=3)
    else:
        writer = write_fake_cifar10 if name == "cifar10" else write_fake_svhn
        written = writer(tmp_path, n_test=4, seed=3)["test"]
    check_images(load_dataset(name, tmp_path / name, train=False), written)
    check_images(load_dataset(name, tmp_path, train=False), written)
