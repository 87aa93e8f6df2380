"""Tests for mondeq.data (MNIST reading, downloading, batching). No network."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from mondeq import data
from mondeq.data import (
    DEFAULT_ROOT,
    MNIST_FILES,
    MNIST_MD5,
    MNIST_MEAN,
    MNIST_STD,
    ChecksumError,
    DatasetFileError,
    DownloadError,
    batches,
    denormalize,
    download_mnist,
    file_md5,
    load_mnist,
    mnist_root,
    normalize,
    num_batches,
    read_idx,
)

TEST_IMAGES, TEST_LABELS = MNIST_FILES["test"]


@pytest.fixture(autouse=True)
def _no_env_and_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clears MONDEQ_DATA and makes any real network access fail loudly."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)

    def _refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("test attempted network access")

    monkeypatch.setattr(urllib.request, "urlopen", _refuse)


def _write_idx(path: Path, header: bytes, payload: bytes, *, compress: bool) -> Path:
    blob = header + payload
    path.write_bytes(gzip.compress(blob) if compress else blob)
    return path


# --------------------------------------------------------------------- real files


@pytest.mark.parametrize(("train", "n"), [(True, 60000), (False, 10000)])
def test_load_real_mnist(train: bool, n: int) -> None:
    images, labels = load_mnist(train=train, download=False)
    assert images.shape == (n, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.shape == (n,)
    assert labels.dtype == torch.int64
    assert float(images.min()) == 0.0
    assert float(images.max()) == 1.0
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    assert torch.equal(torch.unique(labels), torch.arange(10))


def test_real_files_match_checksums_and_stats() -> None:
    for name, md5 in MNIST_MD5.items():
        assert file_md5(DEFAULT_ROOT / name) == md5
    images, labels = load_mnist(train=True, download=False)
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]  # well-known first labels
    assert abs(float(images.mean()) - MNIST_MEAN) < 1e-3
    assert abs(float(images.std()) - MNIST_STD) < 1e-3


def test_read_idx_raw_header() -> None:
    labels = read_idx(DEFAULT_ROOT / TEST_LABELS)
    assert labels.dtype == torch.uint8
    assert labels.shape == (10000,)
    images = read_idx(DEFAULT_ROOT / TEST_IMAGES)
    assert images.shape == (10000, 28, 28)


def test_read_idx_plain_file(tmp_path: Path) -> None:
    header = bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    path = _write_idx(tmp_path / "plain-idx", header, bytes(range(6)), compress=False)
    out = read_idx(path)
    assert torch.equal(out, torch.arange(6, dtype=torch.uint8).view(2, 3))


def test_mnist_root_honours_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert mnist_root() == DEFAULT_ROOT
    assert DEFAULT_ROOT == Path(data.__file__).resolve().parents[2] / "data" / "mnist"
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    assert mnist_root() == tmp_path / "mnist"
    with pytest.raises(FileNotFoundError):
        load_mnist(train=False, download=False)


# ------------------------------------------------------------------ corrupt files


def test_truncated_gzip_raises(tmp_path: Path) -> None:
    raw = (DEFAULT_ROOT / TEST_LABELS).read_bytes()
    path = tmp_path / TEST_LABELS
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetFileError, match=TEST_LABELS) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "official file" in str(info.value)
    assert "delete" not in str(info.value)  # a wrong file under this name may be the user's own


def test_truncated_file_through_load_mnist(tmp_path: Path) -> None:
    shutil.copy(DEFAULT_ROOT / TEST_LABELS, tmp_path / TEST_LABELS)
    raw = (DEFAULT_ROOT / TEST_IMAGES).read_bytes()
    (tmp_path / TEST_IMAGES).write_bytes(raw[:-1000])
    with pytest.raises(DatasetFileError, match=TEST_IMAGES):
        load_mnist(tmp_path, train=False, download=False)


def test_garbage_gzip_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(b"\x1f\x8b" + b"not really gzip data" * 10)
    with pytest.raises(DatasetFileError, match="bad.gz"):
        read_idx(path)


def test_truncated_payload_raises_size_mismatch(tmp_path: Path) -> None:
    payload = gzip.decompress((DEFAULT_ROOT / TEST_LABELS).read_bytes())
    path = tmp_path / TEST_LABELS
    path.write_bytes(gzip.compress(payload[:-10]))  # valid gzip, short payload
    with pytest.raises(DatasetFileError, match="size mismatch") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_wrong_magic_raises(tmp_path: Path) -> None:
    payload = bytearray(gzip.decompress((DEFAULT_ROOT / TEST_LABELS).read_bytes()))
    payload[0:2] = b"\x12\x34"
    path = tmp_path / TEST_LABELS
    path.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(DatasetFileError, match="magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_unsupported_dtype_raises(tmp_path: Path) -> None:
    header = bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big")
    path = _write_idx(tmp_path / "f32.gz", header, b"\0\0\0\0", compress=True)
    with pytest.raises(DatasetFileError, match="element type"):
        read_idx(path)


def test_too_short_header_raises(tmp_path: Path) -> None:
    path = _write_idx(tmp_path / "short", bytes([0, 0, 8, 3]), b"\0\0", compress=False)
    with pytest.raises(DatasetFileError, match="short"):
        read_idx(path)


def test_dataset_file_error_is_value_error() -> None:
    assert issubclass(DatasetFileError, ValueError)
    assert issubclass(ChecksumError, DatasetFileError)


# ------------------------------------------------------------------- downloading


def test_missing_file_without_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download_mnist") as info:
        load_mnist(tmp_path, train=False, download=False)
    assert TEST_IMAGES in str(info.value)


def _patch_fetch(monkeypatch: pytest.MonkeyPatch, source) -> list[str]:
    """Replaces the internal fetch; ``source(url)`` returns the bytes served."""
    calls: list[str] = []

    def fake_fetch(url: str, dest, *, timeout: float) -> int:
        calls.append(url)
        blob = source(url)
        dest.write(blob)
        return len(blob)

    monkeypatch.setattr(data.download, "_fetch", fake_fetch)
    return calls


def test_download_wrong_bytes_raises_checksum_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _patch_fetch(monkeypatch, lambda url: b"<html>not found</html>")
    with pytest.raises(ChecksumError) as info:
        download_mnist(tmp_path)
    message = str(info.value)
    first = next(iter(MNIST_MD5))
    assert first in message
    assert MNIST_MD5[first] in message
    assert hashlib.md5(b"<html>not found</html>").hexdigest() in message
    # Both mirrors were tried, and nothing (not even a temporary file) remains.
    assert len(calls) == len(data.MNIST_MIRRORS)
    assert list(tmp_path.iterdir()) == []


def test_download_corrupt_gzip_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    good = (DEFAULT_ROOT / TEST_LABELS).read_bytes()
    _patch_fetch(monkeypatch, lambda url: good[:-100])
    with pytest.raises(ChecksumError):
        download_mnist(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_right_bytes_succeeds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = _patch_fetch(
        monkeypatch, lambda url: (DEFAULT_ROOT / url.rsplit("/", 1)[1]).read_bytes()
    )
    root = tmp_path / "nested" / "mnist"
    assert download_mnist(root) == root
    assert sorted(p.name for p in root.iterdir()) == sorted(MNIST_MD5)
    assert len(calls) == 4
    assert all(url.startswith(data.MNIST_MIRRORS[0]) for url in calls)
    assert "Downloading" in capsys.readouterr().err
    # Present files are not fetched again.
    download_mnist(root)
    assert len(calls) == 4
    images, labels = load_mnist(root, train=False, download=False)
    assert images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)


def test_load_mnist_downloads_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _patch_fetch(
        monkeypatch, lambda url: (DEFAULT_ROOT / url.rsplit("/", 1)[1]).read_bytes()
    )
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    images, labels = load_mnist(train=False)
    assert images.shape == (10000, 1, 28, 28)
    assert (tmp_path / "mnist" / TEST_IMAGES).is_file()


def test_download_falls_back_to_second_mirror(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """First mirror errors at the urllib level; the second serves the file."""
    served: list[str] = []

    class FakeResponse(io.BytesIO):
        def __enter__(self) -> FakeResponse:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    def fake_urlopen(request: urllib.request.Request, timeout: float) -> FakeResponse:
        url = request.full_url
        served.append(url)
        if url.startswith(data.MNIST_MIRRORS[0]):
            raise urllib.error.URLError("mirror down")
        return FakeResponse((DEFAULT_ROOT / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    download_mnist(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(MNIST_MD5)
    assert len(served) == 8
    for name in MNIST_MD5:
        assert file_md5(tmp_path / name) == MNIST_MD5[name]


def test_download_all_mirrors_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fail(url: str, dest, *, timeout: float) -> int:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(data.download, "_fetch", fail)
    with pytest.raises(DownloadError, match="offline"):
        download_mnist(tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ normalize, batches


def test_normalize_inverse() -> None:
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = normalize(x)
    assert torch.allclose(denormalize(y), x, atol=1e-6)
    assert torch.allclose(y * MNIST_STD + MNIST_MEAN, x, atol=1e-6)
    z = normalize(x, 0.5, 2.0)
    assert torch.allclose(z, (x - 0.5) / 2.0)
    assert torch.allclose(denormalize(z, 0.5, 2.0), x, atol=1e-6)
    assert not torch.equal(x, y)  # input untouched, new tensor
    with pytest.raises(ValueError, match="std"):
        normalize(x, 0.0, 0.0)


@pytest.mark.parametrize(("n", "bs"), [(103, 10), (100, 10), (5, 32), (0, 4)])
def test_batches_cover_all_once_when_shuffled(n: int, bs: int) -> None:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2)
    labels = torch.arange(n)
    gen = torch.Generator().manual_seed(1)
    out = list(batches(images, labels, bs, shuffle=True, generator=gen))
    assert len(out) == num_batches(n, bs)
    seen = torch.cat([y for _, y in out]) if out else torch.empty(0, dtype=torch.int64)
    assert torch.equal(seen.sort().values, torch.arange(n))
    for x, y in out:
        assert x.shape[0] == y.shape[0] <= bs
        assert torch.equal(x[:, 0, 0, 0].long(), y)  # images stay paired with labels
    if n >= 2 * bs:
        assert not torch.equal(seen, torch.arange(n))  # actually shuffled


def test_batches_reproducible_and_ordered() -> None:
    images, labels = torch.randn(50, 3), torch.arange(50)
    a = [y for _, y in batches(images, labels, 7, shuffle=True,
                               generator=torch.Generator().manual_seed(3))]
    b = [y for _, y in batches(images, labels, 7, shuffle=True,
                               generator=torch.Generator().manual_seed(3))]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    ordered = torch.cat([y for _, y in batches(images, labels, 7, shuffle=False)])
    assert torch.equal(ordered, labels)


def test_batches_drop_last_and_errors() -> None:
    images, labels = torch.zeros(23, 2), torch.arange(23)
    out = list(batches(images, labels, 5, shuffle=False, drop_last=True))
    assert len(out) == num_batches(23, 5, drop_last=True) == 4
    assert num_batches(23, 5) == 5
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(images, labels, 0, shuffle=False))
    with pytest.raises(ValueError, match="length"):
        list(batches(images, labels[:-1], 4, shuffle=False))
