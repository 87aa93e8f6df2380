"""Typed errors raised by the dataset readers and downloaders."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ChecksumError", "DatasetFileError", "DownloadError", "MissingDatasetError", "corrupt"]


class DatasetFileError(ValueError):
    """A dataset file on disk is corrupt, truncated or not what was expected."""


class ChecksumError(DatasetFileError):
    """A downloaded file does not have the expected MD5 checksum."""


class MissingDatasetError(DatasetFileError, FileNotFoundError):
    """A dataset file is not on disk (and downloading was not asked for).

    Also a :class:`FileNotFoundError`, so ``except FileNotFoundError`` keeps working.
    """


class DownloadError(OSError):
    """No mirror could deliver a dataset file."""


def corrupt(path: Path, what: str) -> DatasetFileError:
    """Builds the error for a file that exists but cannot be read as expected."""
    return DatasetFileError(
        f"{path}: {what}. The file is corrupt or incomplete; delete it so that "
        "it is downloaded again (or copy a good one in its place)."
    )
