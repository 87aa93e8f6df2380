"""CIFAR-10 reader on files the test writes in the official python-batch format. No network."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mondeq.data import (ChecksumError, DatasetFileError, MissingDatasetError, download,
                         load_cifar10, load_dataset)
from mondeq.data import cifar10 as cifar_module
from tests.fake_datasets import write_fake_cifar10


pytestmark = pytest.mark.usefixtures("no_network")  # tests/conftest.py


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)


@pytest.mark.parametrize("archive", [False, True])
def test_reads_what_was_written(tmp_path: Path, archive: bool) -> None:
    written = write_fake_cifar10(tmp_path, n_train=23, n_test=7, archive=archive)
    for train, split in ((True, "train"), (False, "test")):
        images, labels = load_cifar10(tmp_path / "cifar10", train=train)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape == (len(written[split][1]), 3, 32, 32)
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
        assert torch.equal(labels, torch.from_numpy(written[split][1]))
        assert torch.equal(_as_uint8(images), torch.from_numpy(written[split][0]))


def test_load_dataset_uses_the_data_roots_cifar10_folder(tmp_path: Path) -> None:
    written = write_fake_cifar10(tmp_path, n_train=10, n_test=5)
    images, labels = load_dataset("cifar10", tmp_path, train=False)
    assert torch.equal(labels, torch.from_numpy(written["test"][1]))
    assert images.shape == (5, 3, 32, 32)


def _one_image_batch(path: Path, pixel: tuple[int, int], rgb: tuple[int, int, int], *,
                     str_keys: bool = False, label: int = 7) -> None:
    """Writes a one-image batch, placing each byte by the documented layout:
    index = channel·1024 + row·32 + col (channel-major, each plane row-major)."""
    flat = np.zeros(3072, dtype=np.uint8)
    row, col = pixel
    for channel, value in enumerate(rgb):
        flat[channel * 1024 + row * 32 + col] = value
    batch = {"data": flat[None, :], "labels": [label]}
    if not str_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.mark.parametrize("str_keys", [False, True])
def test_channel_order_and_pixel_position(tmp_path: Path, str_keys: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _one_image_batch(folder / "test_batch", (5, 17), (10, 20, 30), str_keys=str_keys)
    images, labels = load_cifar10(tmp_path, train=False)
    assert labels.tolist() == [7]
    assert _as_uint8(images)[0, :, 5, 17].tolist() == [10, 20, 30]
    assert int(_as_uint8(images).sum()) == 60          # nothing anywhere else
    # Also accepted: root pointing straight at the batches folder.
    images2, _ = load_cifar10(folder, train=False)
    assert torch.equal(images, images2)


def test_training_split_is_batches_one_to_five_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _one_image_batch(folder / f"data_batch_{i}", (i, i), (i, 2 * i, 3 * i), label=i)
    images, labels = load_cifar10(tmp_path, train=True)
    assert labels.tolist() == [1, 2, 3, 4, 5]
    for i in range(1, 6):
        assert _as_uint8(images)[i - 1, :, i, i].tolist() == [i, 2 * i, 3 * i]


def test_archive_members_in_any_order(tmp_path: Path) -> None:
    """The official archive does not store the batches in order; the split still is 1..5."""
    batches = tmp_path / "batches"
    batches.mkdir()
    for i in range(1, 6):
        _one_image_batch(batches / f"data_batch_{i}", (i, 2 * i), (i, 0, 0), label=i)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        for i in (4, 2, 5, 1, 3):
            tar.add(batches / f"data_batch_{i}", arcname=f"cifar-10-batches-py/data_batch_{i}")
    images, labels = load_cifar10(folder, train=True)
    assert labels.tolist() == [1, 2, 3, 4, 5]
    assert [int(_as_uint8(images)[i - 1, 0, i, 2 * i]) for i in range(1, 6)] == [1, 2, 3, 4, 5]


def test_missing_everything(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetError, match="download=True") as info:
        load_cifar10(tmp_path / "cifar10", train=False)
    assert isinstance(info.value, FileNotFoundError)
    assert "cifar-10-python.tar.gz" in str(info.value)


def test_missing_one_training_batch(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path, n_train=10, n_test=5)
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(MissingDatasetError, match="data_batch_3"):
        load_cifar10(tmp_path / "cifar10", train=True)
    load_cifar10(tmp_path / "cifar10", train=False)   # the test split is still complete


def test_truncated_batch_names_the_file(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path, n_train=10, n_test=5)
    path = tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(DatasetFileError, match="test_batch") as info:
        load_cifar10(tmp_path / "cifar10", train=False)
    assert "not a readable" in str(info.value) and "official file" in str(info.value)
    assert "delete" not in str(info.value)  # it may be the user's own file under this name


def test_truncated_archive_names_the_archive(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path, n_train=10, n_test=5, archive=True)
    path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetFileError, match="cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "cifar10", train=True)


def test_archive_without_the_batch(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10"
    folder.mkdir()
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DatasetFileError, match="test_batch"):
        load_cifar10(folder, train=False)


@pytest.mark.parametrize("batch, what", [
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "2 images but 1 labels"),
    ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [1, 2]}, "shape"),
    ({b"data": np.zeros((1, 3072), np.float32), b"labels": [1]}, "uint8"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "outside 0..9"),
    ({b"pixels": np.zeros((1, 3072), np.uint8)}, "no 'data' entry"),
    ([1, 2, 3], "dict"),
])
def test_malformed_batch(tmp_path: Path, batch: object, what: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetFileError, match=what):
        load_cifar10(tmp_path, train=False)


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    with pytest.raises(DatasetFileError, match="refusing"):
        load_cifar10(tmp_path, train=False)


def _serve(monkeypatch: pytest.MonkeyPatch, blob: bytes) -> list[str]:
    calls: list[str] = []

    def fake_fetch(url: str, dest, *, timeout: float) -> int:
        calls.append(url)
        dest.write(blob)
        return len(blob)

    monkeypatch.setattr(download, "_fetch", fake_fetch)
    return calls


def test_download_checks_md5_and_leaves_nothing_on_mismatch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _serve(monkeypatch, b"<html>moved</html>")
    folder = tmp_path / "cifar10"
    with pytest.raises(ChecksumError, match=cifar_module.CIFAR10_MD5):
        load_cifar10(folder, train=False, download=True)
    assert calls == [cifar_module.CIFAR10_URL]
    assert list(folder.iterdir()) == []


def test_download_with_matching_md5_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = tmp_path / "source"
    written = write_fake_cifar10(source, n_train=10, n_test=5, archive=True)
    blob = (source / "cifar10" / "cifar-10-python.tar.gz").read_bytes()
    monkeypatch.setattr(cifar_module, "CIFAR10_MD5", hashlib.md5(blob).hexdigest())
    calls = _serve(monkeypatch, blob)
    images, labels = load_dataset("cifar10", tmp_path / "root", train=False, download=True)
    assert torch.equal(labels, torch.from_numpy(written["test"][1]))
    assert (tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == blob
    load_dataset("cifar10", tmp_path / "root", train=True, download=True)
    assert len(calls) == 1                              # present archive not fetched again
