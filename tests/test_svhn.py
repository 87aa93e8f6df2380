"""SVHN reader on .mat files the test writes in the official layout. No network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from mondeq.data import (ChecksumError, DatasetFileError, MissingDatasetError, download,
                         load_dataset, load_svhn)
from mondeq.data import svhn as svhn_module
from tests.fake_datasets import write_fake_svhn


pytestmark = pytest.mark.usefixtures("no_network")  # tests/conftest.py


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)


@pytest.mark.parametrize("label_dtype", [np.uint8, np.float64])
def test_reads_what_was_written(tmp_path: Path, label_dtype: type) -> None:
    written = write_fake_svhn(tmp_path, n_train=31, n_test=9, label_dtype=label_dtype)
    for split in ("train", "test"):
        images, labels = load_svhn(tmp_path / "svhn", split=split)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape == (len(written[split][1]), 3, 32, 32)
        assert torch.equal(labels, torch.from_numpy(written[split][1]))
        assert torch.equal(_as_uint8(images), torch.from_numpy(written[split][0]))
    images, labels = load_dataset("svhn", tmp_path, train=False)
    assert torch.equal(labels, torch.from_numpy(written["test"][1]))


def _write_mat(path: Path, x: np.ndarray, y: np.ndarray, **extra: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": x, "y": y, **extra})


def test_label_ten_is_digit_zero_and_channel_order(tmp_path: Path) -> None:
    x = np.zeros((32, 32, 3, 3), dtype=np.uint8)      # (row, col, channel, image)
    x[5, 17, 0, 1], x[5, 17, 1, 1], x[5, 17, 2, 1] = 10, 20, 30
    y = np.array([[10], [1], [9]], dtype=np.uint8)
    _write_mat(tmp_path / "test_32x32.mat", x, y)
    images, labels = load_svhn(tmp_path, split="test")
    assert labels.tolist() == [0, 1, 9]
    pixels = _as_uint8(images)
    assert pixels[1, :, 5, 17].tolist() == [10, 20, 30]
    assert int(pixels.sum()) == 60
    assert pixels[1, :, 17, 5].tolist() == [0, 0, 0]   # rows and columns not swapped


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetError, match="train_32x32.mat") as info:
        load_svhn(tmp_path, split="train")
    assert isinstance(info.value, FileNotFoundError)
    assert "download=True" in str(info.value)


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extra"):
        load_svhn(tmp_path, split="extra")


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    write_fake_svhn(tmp_path, n_train=20, n_test=5)
    path = tmp_path / "svhn" / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetFileError, match="train_32x32.mat") as info:
        load_svhn(tmp_path / "svhn", split="train")
    assert "not a readable" in str(info.value) and "official file" in str(info.value)
    assert "delete" not in str(info.value)  # it may be the user's own file under this name


def test_not_a_mat_file(tmp_path: Path) -> None:
    (tmp_path / "test_32x32.mat").write_bytes(b"<html>404</html>" * 20)
    with pytest.raises(DatasetFileError, match="test_32x32.mat"):
        load_svhn(tmp_path, split="test")


@pytest.mark.parametrize("x, y, what", [
    (np.zeros((3, 32, 32, 2), np.uint8), np.ones((2, 1), np.uint8), "32, 32, 3, N"),
    (np.zeros((32, 32, 3, 2), np.float64), np.ones((2, 1), np.uint8), "uint8"),
    (np.zeros((32, 32, 3, 2), np.uint8), np.ones((3, 1), np.uint8), "2 images but 3 labels"),
    (np.zeros((32, 32, 3, 2), np.uint8), np.array([[0], [1]], np.uint8), "1..10"),
    (np.zeros((32, 32, 3, 2), np.uint8), np.array([[11], [1]], np.uint8), "1..10"),
])
def test_wrong_layout(tmp_path: Path, x: np.ndarray, y: np.ndarray, what: str) -> None:
    _write_mat(tmp_path / "test_32x32.mat", x, y)
    with pytest.raises(DatasetFileError, match=what):
        load_svhn(tmp_path, split="test")


def test_wrong_variable_names(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"images": np.zeros((32, 32, 3, 1), np.uint8)})
    with pytest.raises(DatasetFileError, match="X and y"):
        load_svhn(tmp_path, split="test")


def test_download_md5_mismatch_then_match(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = tmp_path / "source"
    written = write_fake_svhn(source, n_train=8, n_test=4)
    blob = (source / "svhn" / "test_32x32.mat").read_bytes()
    served = [b"<html>moved</html>"]
    calls: list[str] = []

    def fake_fetch(url: str, dest, *, timeout: float) -> int:
        calls.append(url)
        dest.write(served[0])
        return len(served[0])

    monkeypatch.setattr(download, "_fetch", fake_fetch)
    root = tmp_path / "root" / "svhn"
    with pytest.raises(ChecksumError, match=svhn_module.SVHN_MD5["test_32x32.mat"]):
        load_svhn(root, split="test", download=True)
    assert calls == [svhn_module.SVHN_URL + "test_32x32.mat"]
    assert list(root.iterdir()) == []
    served[0] = blob
    monkeypatch.setitem(svhn_module.SVHN_MD5, "test_32x32.mat", hashlib.md5(blob).hexdigest())
    _, labels = load_svhn(root, split="test", download=True)
    assert torch.equal(labels, torch.from_numpy(written["test"][1]))
