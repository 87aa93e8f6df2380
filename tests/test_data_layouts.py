"""load_dataset reads a data root in this project's layout (``<root>/cifar10/``, ``<root>/svhn/``,
``<root>/mnist/``) and in torchvision's (``<root>/cifar-10-batches-py/`` or the tar.gz,
``<root>/{train,test}_32x32.mat``, ``<root>/MNIST/raw/``), the project's first; a missing
dataset's error names both places."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mondeq.data import MNIST_FILES, MissingDatasetError, load_dataset
from tests.fake_datasets import write_fake_cifar10, write_fake_svhn


def to_torchvision_layout(root: Path, name: str) -> None:
    """Moves what the fake writers put in ``root/name/`` to where torchvision keeps it."""
    target = root / "MNIST" / "raw" if name == "mnist" else root
    target.mkdir(parents=True, exist_ok=True)
    for item in (root / name).iterdir():
        shutil.move(str(item), str(target / item.name))
    (root / name).rmdir()


def write_tiny_mnist(root: Path, n: int = 7, *, seed: int = 0, gzipped: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The four MNIST files in IDX format (n images each) under ``root/mnist``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for image_name, label_name in MNIST_FILES.values():
        for name, array, header in ((image_name, images, b"\x00\x00\x08\x03" + b"".join(
                d.to_bytes(4, "big") for d in images.shape)),
                (label_name, labels, b"\x00\x00\x08\x01" + n.to_bytes(4, "big"))):
            blob = header + array.tobytes()
            if gzipped:
                (folder / name).write_bytes(gzip.compress(blob))
            else:
                (folder / name.removesuffix(".gz")).write_bytes(blob)
    return images, labels


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
