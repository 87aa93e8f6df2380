"""Datasets: reading, downloading and batching MNIST.

The four MNIST files are stored in the repository under ``data/mnist`` as
gzip-compressed IDX files, so the project runs offline.  Missing files can be
fetched from the standard mirrors with :func:`download_mnist`; every download
is written to a temporary file, checked against a hard-coded MD5 and only then
moved into place.

Checksums are taken over the *decompressed* IDX payload rather than over the
``.gz`` bytes.  The payload checksums are the well-known ones for MNIST and do
not depend on how a copy happened to be gzip-compressed (the copies committed
to this repository were recompressed, so their ``.gz`` bytes differ from the
mirrors' although their contents are identical).

Example:
    >>> images, labels = load_mnist(train=False)
    >>> images.shape, labels.shape
    (torch.Size([10000, 1, 28, 28]), torch.Size([10000]))
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_ROOT",
    "ENV_VAR",
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_MEAN",
    "MNIST_MIRRORS",
    "MNIST_STD",
    "ChecksumError",
    "DatasetFileError",
    "DownloadError",
    "batches",
    "denormalize",
    "download_mnist",
    "file_md5",
    "load_mnist",
    "mnist_root",
    "normalize",
    "num_batches",
    "read_idx",
]

#: Environment variable naming the root directory of all datasets; MNIST is
#: then looked for in ``$MONDEQ_DATA/mnist``.
ENV_VAR = "MONDEQ_DATA"

#: Directory holding the MNIST files committed to the repository.
DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "data" / "mnist"

#: Mirrors tried in order by :func:`download_mnist`.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: File names of the (images, labels) pair of each split.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: MD5 of the decompressed IDX payload of each file (see the module docstring).
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}

#: Mean and standard deviation of the MNIST training pixels (in [0, 1]).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UINT8 = 0x08
_CHUNK = 1 << 20
_USER_AGENT = "mondeq-data/1.0 (+python-urllib)"


class DatasetFileError(ValueError):
    """A dataset file on disk is corrupt, truncated or not what was expected."""


class ChecksumError(DatasetFileError):
    """A downloaded file does not have the expected MD5 checksum."""


class DownloadError(OSError):
    """No mirror could deliver a dataset file."""


def _corrupt(path: Path, what: str) -> DatasetFileError:
    return DatasetFileError(
        f"{path}: {what}. The file is corrupt or incomplete; delete it so that "
        "it is downloaded again."
    )


def _read_payload(path: Path) -> bytes:
    """Returns the (decompressed if gzip) bytes of ``path``."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"invalid or truncated gzip data ({exc})") from exc


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Reads an IDX file (gzip-compressed or plain) into a uint8 tensor.

    Only the unsigned-byte element type (code ``0x08``), which all MNIST
    files use, is supported.  Gzip compression is detected from the file's
    leading bytes, not from its name.

    Args:
        path: Path of the IDX file.

    Returns:
        A ``torch.uint8`` tensor whose shape is given by the file's header.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DatasetFileError: If the file is not valid gzip, has a wrong magic
            number or element type, or its size does not match its header.
    """
    path = Path(path)
    data = _read_payload(path)
    if len(data) < 4:
        raise _corrupt(path, f"only {len(data)} bytes, too short for an IDX header")
    zero0, zero1, dtype_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise _corrupt(
            path,
            f"wrong magic number 0x{int.from_bytes(data[:4], 'big'):08x} "
            "(an IDX file starts with two zero bytes)",
        )
    if dtype_code != _IDX_UINT8:
        raise _corrupt(
            path,
            f"unsupported IDX element type 0x{dtype_code:02x} "
            f"(only 0x{_IDX_UINT8:02x}, unsigned byte, is supported)",
        )
    if ndim == 0:
        raise _corrupt(path, "IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(
            path, f"truncated header: {len(data)} bytes, need {header} for {ndim} dims"
        )
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    count = 1
    for dim in shape:
        count *= dim
    if len(data) != header + count:
        raise _corrupt(
            path,
            f"size mismatch: header declares shape {shape} ({count} bytes of data) "
            f"but the file holds {len(data) - header} bytes of data",
        )
    if count == 0:
        return torch.empty(shape, dtype=torch.uint8)
    buf = bytearray(data)  # writable buffer; the tensor keeps it alive
    return torch.frombuffer(buf, dtype=torch.uint8, count=count, offset=header).view(
        shape
    )


def file_md5(path: str | os.PathLike[str]) -> str:
    """Computes the MD5 of a file's payload, decompressing it if it is gzip.

    This is the checksum stored in :data:`MNIST_MD5`.

    Args:
        path: Path of the file.

    Returns:
        The hexadecimal MD5 digest of the (decompressed) contents.

    Raises:
        DatasetFileError: If the file looks like gzip but cannot be
            decompressed.
    """
    path = Path(path)
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        is_gzip = fh.read(2) == _GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if is_gzip else open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"invalid or truncated gzip data ({exc})") from exc
    return digest.hexdigest()


def mnist_root() -> Path:
    """Returns the directory MNIST is loaded from by default.

    This is ``$MONDEQ_DATA/mnist`` if the ``MONDEQ_DATA`` environment variable
    is set (and non-empty), else :data:`DEFAULT_ROOT`.  The variable is read on
    every call, so it may be changed at run time.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser() / "mnist"
    return DEFAULT_ROOT


def _fetch(url: str, dest: BinaryIO, *, timeout: float) -> int:
    """Streams ``url`` into the open binary file ``dest``; returns bytes written."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    written = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        while chunk := response.read(_CHUNK):
            dest.write(chunk)
            written += len(chunk)
    return written


def _download_file(
    name: str, root: Path, mirrors: Sequence[str], *, timeout: float
) -> None:
    """Downloads ``name`` into ``root``, trying each mirror in turn."""
    target = root / name
    expected = MNIST_MD5[name]
    failures: list[str] = []
    checksum_error: ChecksumError | None = None
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        print(f"Downloading {url}", file=sys.stderr, flush=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                size = _fetch(url, fh, timeout=timeout)
            try:
                actual = file_md5(tmp)
            except DatasetFileError as exc:
                actual = f"<unreadable: {exc.__cause__ or exc}>"
            if actual != expected:
                checksum_error = ChecksumError(
                    f"{target}: checksum mismatch for file downloaded from {url}: "
                    f"expected md5 {expected}, got {actual}. "
                    "Nothing was written; the download may be corrupt."
                )
                failures.append(f"{url}: checksum mismatch (got {actual})")
                continue
            os.replace(tmp, target)
            print(
                f"  saved {target} ({size / 1e6:.1f} MB)", file=sys.stderr, flush=True
            )
            return
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    if checksum_error is not None:
        raise checksum_error
    raise DownloadError(
        f"could not download {name} into {root}; tried:\n  " + "\n  ".join(failures)
    )


def download_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    timeout: float = 60.0,
) -> Path:
    """Downloads those of the four MNIST files that are missing from ``root``.

    Each file is fetched into a temporary file in ``root``, its MD5 is
    checked against :data:`MNIST_MD5`, and only then is it renamed into
    place, so an interrupted or corrupt download never leaves a bad file.
    Mirrors are tried in order; files already present are left untouched.

    Args:
        root: Directory for the files; created if needed.  Defaults to
            :func:`mnist_root`.
        mirrors: Base URLs to try, in order.
        timeout: Socket timeout per request, in seconds.

    Returns:
        The directory holding the files.

    Raises:
        ChecksumError: If a file was downloaded but no mirror delivered it
            with the expected checksum.
        DownloadError: If a file could not be downloaded at all.
    """
    root = mnist_root() if root is None else Path(root)
    if not mirrors:
        raise ValueError("mirrors must name at least one base URL")
    root.mkdir(parents=True, exist_ok=True)
    for name in MNIST_MD5:
        if not (root / name).is_file():
            _download_file(name, root, mirrors, timeout=timeout)
    return root


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Loads the MNIST training or test split into memory.

    Args:
        root: Directory holding the MNIST files.  Defaults to
            :func:`mnist_root` (``$MONDEQ_DATA/mnist`` or the repository's
            ``data/mnist``).
        train: Load the 60000-image training split if true, else the
            10000-image test split.
        download: Download missing files with :func:`download_mnist`.

    Returns:
        ``(images, labels)``: images as ``float32`` in ``[0, 1]`` of shape
        ``(N, 1, 28, 28)`` and labels as ``int64`` of shape ``(N,)``.

    Raises:
        FileNotFoundError: If a file is missing and ``download`` is false.
        DatasetFileError: If a file is corrupt or the files do not fit
            together.
    """
    root = mnist_root() if root is None else Path(root)
    image_name, label_name = MNIST_FILES["train" if train else "test"]
    image_path, label_path = root / image_name, root / label_name
    for path in (image_path, label_path):
        if not path.is_file():
            if not download:
                raise FileNotFoundError(
                    f"MNIST file {path} is missing; pass download=True to "
                    "load_mnist (or call download_mnist) to fetch it"
                )
            download_mnist(root)
            break

    raw_images = read_idx(image_path)
    raw_labels = read_idx(label_path)
    if raw_images.dim() != 3 or tuple(raw_images.shape[1:]) != (28, 28):
        raise _corrupt(
            image_path,
            f"expected images of shape (N, 28, 28), got {tuple(raw_images.shape)}",
        )
    if raw_labels.dim() != 1 or raw_labels.shape[0] != raw_images.shape[0]:
        raise _corrupt(
            label_path,
            f"expected {raw_images.shape[0]} labels to match {image_path.name}, "
            f"got shape {tuple(raw_labels.shape)}",
        )
    if raw_labels.numel() and int(raw_labels.max()) > 9:
        raise _corrupt(label_path, f"label {int(raw_labels.max())} is outside 0..9")

    images = raw_images.unsqueeze(1).to(torch.float32).div_(255.0)
    labels = raw_labels.to(torch.int64)
    return images, labels


def normalize(
    images: Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> Tensor:
    """Returns ``(images - mean) / std`` as a new tensor.

    Args:
        images: Pixel tensor, typically in ``[0, 1]``.
        mean: Value subtracted.
        std: Value divided by; must be positive.

    Raises:
        ValueError: If ``std`` is not positive.
    """
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    return (images - mean) / std


def denormalize(
    images: Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> Tensor:
    """Inverts :func:`normalize`: returns ``images * std + mean``.

    Raises:
        ValueError: If ``std`` is not positive.
    """
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    return images * std + mean


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Returns how many batches :func:`batches` yields for ``n`` samples.

    Args:
        n: Number of samples.
        batch_size: Samples per batch.
        drop_last: Whether a final, smaller batch is dropped.

    Raises:
        ValueError: If ``n`` is negative or ``batch_size`` is not positive.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields ``(x, y)`` minibatches from in-memory tensors.

    Plain tensor indexing; much cheaper than a ``DataLoader`` for data that
    already sits in memory.  Every sample appears exactly once per pass
    (unless ``drop_last`` drops the tail).  The number of batches is
    ``num_batches(len(images), batch_size, drop_last=drop_last)``.

    Args:
        images: Inputs, first dimension indexing samples.
        labels: Targets with the same first dimension as ``images``.
        batch_size: Samples per batch (the last batch may be smaller).
        shuffle: Draw a fresh random permutation for this pass.
        generator: Random generator for the permutation (for reproducibility).
        drop_last: Drop a final batch smaller than ``batch_size``.

    Yields:
        ``(x, y)`` slices (views when not shuffled, copies when shuffled).

    Raises:
        ValueError: If the lengths differ or ``batch_size`` is not positive.
    """
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(
            f"images and labels differ in length: {n} vs {labels.shape[0]}"
        )
    count = num_batches(n, batch_size, drop_last=drop_last)
    if shuffle:
        perm_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=perm_device)
        image_order = order.to(images.device)
        label_order = order.to(labels.device)
        for i in range(count):
            window = slice(i * batch_size, (i + 1) * batch_size)
            yield images[image_order[window]], labels[label_order[window]]
    else:
        for i in range(count):
            start = i * batch_size
            yield images[start : start + batch_size], labels[start : start + batch_size]
