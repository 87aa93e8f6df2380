"""Downloading dataset files safely: temporary file, MD5 check, then an atomic rename.

Every download is streamed into a temporary file in the target folder, its checksum is compared
with a hard-coded MD5, and only then is it renamed into place, so an interrupted or corrupt
download never leaves a bad file behind. Mirrors are tried in order.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from ..errors import ChecksumError, DatasetFileError, DownloadError

__all__ = ["download_file", "file_md5", "raw_md5"]

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_USER_AGENT = "mondeq-data/1.0 (+python-urllib)"


def raw_md5(path: str | os.PathLike[str]) -> str:
    """Returns the hexadecimal MD5 of a file's bytes (as published for CIFAR-10 and SVHN)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_md5(path: str | os.PathLike[str]) -> str:
    """Computes the MD5 of a file's payload, decompressing it if it is gzip.

    This is the checksum stored in ``MNIST_MD5``: it does not depend on how a copy happened to
    be gzip-compressed.

    Args:
        path: Path of the file.

    Returns:
        The hexadecimal MD5 digest of the (decompressed) contents.

    Raises:
        DatasetFileError: If the file looks like gzip but cannot be decompressed.
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
        raise DatasetFileError.corrupt(path, f"invalid or truncated gzip data ({exc})") from exc
    return digest.hexdigest()


def _fetch(url: str, dest: BinaryIO, *, timeout: float) -> int:
    """Streams ``url`` into the open binary file ``dest``; returns bytes written."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    written = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        while chunk := response.read(_CHUNK):
            dest.write(chunk)
            written += len(chunk)
    return written


def download_file(
    name: str,
    root: Path,
    urls: Sequence[str],
    md5: str,
    *,
    checksum: Callable[[Path], str] = raw_md5,
    timeout: float = 60.0,
) -> Path:
    """Downloads one file into ``root / name``, trying each URL in turn.

    Args:
        name: File name in ``root``.
        root: Target folder; created if needed.
        urls: Full addresses to try, in order.
        md5: Expected hexadecimal MD5, as computed by ``checksum``.
        checksum: Function computing the checksum of a file (raw bytes by default).
        timeout: Socket timeout per request, in seconds.

    Returns:
        The path of the file.

    Raises:
        ChecksumError: If some URL delivered the file but none with the expected checksum.
        DownloadError: If no URL could deliver the file at all.
    """
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    failures: list[str] = []
    checksum_error: ChecksumError | None = None
    for url in urls:
        print(f"Downloading {url}", file=sys.stderr, flush=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                size = _fetch(url, fh, timeout=timeout)
            try:
                actual = checksum(tmp)
            except DatasetFileError as exc:
                actual = f"<unreadable: {exc.__cause__ or exc}>"
            if actual != md5:
                checksum_error = ChecksumError(
                    f"{target}: checksum mismatch for file downloaded from {url}: "
                    f"expected md5 {md5}, got {actual}. "
                    "Nothing was written; the download may be corrupt."
                )
                failures.append(f"{url}: checksum mismatch (got {actual})")
                continue
            os.replace(tmp, target)
            print(f"  saved {target} ({size / 1e6:.1f} MB)", file=sys.stderr, flush=True)
            return target
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    if checksum_error is not None:
        raise checksum_error
    raise DownloadError(
        f"could not download {name} into {root}; tried:\n  " + "\n  ".join(failures)
    )
