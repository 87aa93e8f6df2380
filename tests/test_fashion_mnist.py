"""Fashion-MNIST is read like MNIST: the data root's ``fashion-mnist/``, torchvision's
``FashionMNIST/raw/`` and Debian's system folder, in that order, from the official gzip IDX files
(small ones the tests write, and the real ones where this machine has them)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mondeq.data import (DATASETS, FASHION_MNIST_FILES, FASHION_MNIST_MD5, FASHION_MNIST_MEAN,
                         FASHION_MNIST_STD, ChecksumError, DatasetFileError, MissingDatasetError,
                         download_fashion_mnist, file_md5, load_dataset, load_fashion_mnist)
from mondeq.data import root as data_root
from tests.fake_datasets import write_idx_pair
from mondeq.models import build_model

#: The developers' copy of the real files (``../shared/data`` beside the checkout), then Debian's.
REAL = [p for p in (Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist",
                    data_root.SYSTEM_FOLDERS["fashion-mnist"][0])
        if all((p / name).is_file() for name in FASHION_MNIST_MD5)]



def assert_loaded(got: tuple[torch.Tensor, torch.Tensor], want: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = got
    assert images.dtype == torch.float32 and images.shape == (len(want[1]), 1, 28, 28)
    assert torch.equal(images[:, 0], torch.from_numpy(want[0].astype(np.float32) / 255))
    assert torch.equal(labels, torch.from_numpy(want[1].astype(np.int64)))


@pytest.fixture
def no_system_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Points the Debian folder at an empty folder (so this machine's copy does not answer)."""
    empty = tmp_path / "system"
    monkeypatch.setitem(data_root.SYSTEM_FOLDERS, "fashion-mnist", (empty,))
    return empty


@pytest.mark.parametrize("train", [True, False])
def test_reads_the_official_gzip_idx_files_in_the_projects_layout(tmp_path: Path, no_system_copy: Path,
                                                                  train: bool) -> None:
    written = write_idx_pair(tmp_path / "fashion-mnist", 9, seed=1)
    assert_loaded(load_dataset("fashion-mnist", tmp_path, train=train), written)


@pytest.mark.parametrize("gzipped", [True, False])
def test_reads_torchvisions_layout(tmp_path: Path, no_system_copy: Path, gzipped: bool) -> None:
    written = write_idx_pair(tmp_path / "FashionMNIST" / "raw", 5, seed=2, gzipped=gzipped)
    assert_loaded(load_dataset("fashion-mnist", tmp_path, train=False), written)


def test_reads_debians_system_folder_after_the_data_root(tmp_path: Path, no_system_copy: Path) -> None:
    system = write_idx_pair(no_system_copy, 4, seed=3)
    assert_loaded(load_dataset("fashion-mnist", tmp_path / "root", train=False), system)
    ours = write_idx_pair(tmp_path / "root" / "fashion-mnist", 6, seed=4)
    assert_loaded(load_dataset("fashion-mnist", tmp_path / "root", train=False), ours)


def test_the_data_root_rule_applies(tmp_path: Path, no_system_copy: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_idx_pair(tmp_path / "env" / "fashion-mnist", 3, seed=5)
    monkeypatch.setenv("MONDEQ_DATA", str(tmp_path / "env"))
    assert_loaded(load_dataset("fashion-mnist", train=False), written)
    assert_loaded(load_fashion_mnist(train=False), written)


def test_missing_files_name_every_place_looked_in(tmp_path: Path, no_system_copy: Path) -> None:
    with pytest.raises(MissingDatasetError) as err:
        load_dataset("fashion-mnist", tmp_path, train=True)
    for place in (tmp_path / "fashion-mnist", tmp_path / "FashionMNIST" / "raw", no_system_copy):
        assert str(place) in str(err.value)


def test_a_truncated_file_is_a_typed_error_naming_it(tmp_path: Path, no_system_copy: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    write_idx_pair(folder, 4, seed=6)
    path = folder / FASHION_MNIST_FILES["test"][0]
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DatasetFileError, match=path.name):
        load_dataset("fashion-mnist", tmp_path, train=False)


def test_the_spec_normalises_with_the_training_statistics() -> None:
    spec = DATASETS["fashion-mnist"]
    assert (spec.in_channels, spec.image_size, spec.num_classes) == (1, 28, 10)
    model = build_model({"dataset": "fashion-mnist", "model": "fc", "hidden": 8}).double()
    x = torch.full((1, 1, 28, 28), FASHION_MNIST_MEAN + FASHION_MNIST_STD, dtype=torch.float64)
    assert torch.allclose(model.normalization(x), torch.ones_like(x))


def test_download_refuses_a_file_with_the_wrong_payload(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    write_idx_pair(mirror, 2, seed=7)  # valid IDX, wrong contents
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download_fashion_mnist(tmp_path / "dest", mirrors=[mirror.as_uri() + "/"])
    assert not any((tmp_path / "dest").iterdir())  # nothing half-written


@pytest.mark.skipif(not REAL, reason="the real Fashion-MNIST files are not on this machine")
def test_download_accepts_a_regzipped_copy_by_its_payload_checksum(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in FASHION_MNIST_FILES["train"]:  # present already: not fetched again
        (dest / name).symlink_to(REAL[0] / name)
    download_fashion_mnist(dest, mirrors=[REAL[0].as_uri() + "/"])
    for name in FASHION_MNIST_FILES["test"]:
        assert file_md5(dest / name) == FASHION_MNIST_MD5[name]


@pytest.mark.skipif(not REAL, reason="the real Fashion-MNIST files are not on this machine")
def test_the_real_files_have_the_official_contents() -> None:
    """Zalando's payload checksums, 60,000 + 10,000 images of 28 × 28, 6,000 + 1,000 per class,
    and the pixel statistics the spec normalises with."""
    folder = REAL[0]
    payload = {name: gzip.decompress((folder / name).read_bytes()) for name in FASHION_MNIST_MD5}
    for name, md5 in FASHION_MNIST_MD5.items():
        assert hashlib.md5(payload[name]).hexdigest() == md5, name
    test_images, test_labels = load_fashion_mnist(folder, train=False)
    assert test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test_labels).tolist() == [1000] * 10
    train_pixels = torch.frombuffer(bytearray(payload["train-images-idx3-ubyte.gz"]), dtype=torch.uint8,
                                    offset=16)
    train_labels = torch.frombuffer(bytearray(payload["train-labels-idx1-ubyte.gz"]), dtype=torch.uint8,
                                    offset=8)
    assert train_pixels.numel() == 60000 * 28 * 28
    assert torch.bincount(train_labels).tolist() == [6000] * 10
    counts = torch.bincount(train_pixels, minlength=256).double()  # the statistics from the histogram
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = ((counts * values).sum() / counts.sum()).item()
    std = ((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt().item()
    assert abs(mean - FASHION_MNIST_MEAN) < 1e-4 and abs(std - FASHION_MNIST_STD) < 1e-4


@pytest.mark.skipif(not REAL, reason="the real Fashion-MNIST files are not on this machine")
def test_a_copy_in_torchvisions_layout_reads_the_same(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_MNIST_FILES["test"]:
        shutil.copy(REAL[0] / name, raw / name)
    got = load_dataset("fashion-mnist", tmp_path, train=False)
    want = load_fashion_mnist(REAL[0], train=False)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_the_train_command_takes_fashion_mnist(tmp_path: Path, no_system_copy: Path) -> None:
    """``mondeq train --dataset fashion-mnist`` trains on the files and the run rebuilds with the
    dataset's normalisation (what the reproduce rows and the pretrained models rely on)."""
    from mondeq.cli import train
    from mondeq.models import load_run

    write_idx_pair(tmp_path / "data" / "fashion-mnist", 48, seed=8)
    train.main(["--dataset", "fashion-mnist", "--data-root", str(tmp_path / "data"), "--epochs", "1",
                "--hidden", "8", "--batch-size", "16", "--epsilons", "0.1", "--out", str(tmp_path / "run")])
    model = load_run(tmp_path / "run")
    assert model.run_config["dataset"] == "fashion-mnist"
    assert model.normalization.mean.tolist() == [FASHION_MNIST_MEAN]
    assert model.normalization.std.tolist() == [FASHION_MNIST_STD]
