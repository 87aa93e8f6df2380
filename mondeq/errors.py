"""Every typed error of the library, in one place.

:class:`MonDEQError` is the root (``except mondeq.MonDEQError`` catches any error the library
raises). The solver-level errors are defined in :mod:`splitting.errors` (``splitting`` imports
nothing from ``mondeq``) and re-exported here; the rest belong to the network side. Each error
also derives from the built-in exception its condition naturally raises, so ``except
ValueError`` and the like keep working.
"""
from __future__ import annotations

from pathlib import Path

from splitting.errors import (ConvergenceWarning, InvalidSettingError, MonDEQError,
                              NonFiniteInputError, StateShapeError, StepSizeWarning,
                              UnsupportedDerivativeError)

__all__ = ["ChecksumError", "CheckpointError", "ConvergenceWarning", "DatasetFileError",
           "DownloadError", "InvalidSettingError", "MissingDatasetError", "MonDEQError",
           "NonAffineReadoutError", "NonFiniteInputError", "ResumeConfigError", "StateShapeError",
           "StepSizeWarning", "UnsupportedDerivativeError"]


class NonAffineReadoutError(MonDEQError, TypeError):
    """Certificates and Lipschitz margins need ``logits = H z + c``; the readout or head of this
    classifier is not known to be affine."""


class CheckpointError(MonDEQError, ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model it is loaded into."""


class ResumeConfigError(MonDEQError, ValueError):
    """Options given for a resumed run contradict the configuration saved with it."""


class DatasetFileError(MonDEQError, ValueError):
    """A dataset file on disk is corrupt, truncated or not what was expected."""

    @classmethod
    def corrupt(cls, path: Path, what: str) -> "DatasetFileError":
        """The error for a file that exists but cannot be read as expected."""
        return cls(f"{path}: {what}. The file is corrupt or incomplete; delete it so that it is "
                   "downloaded again (or copy a good one in its place).")


class ChecksumError(DatasetFileError):
    """A downloaded file does not have the expected MD5 checksum."""


class MissingDatasetError(DatasetFileError, FileNotFoundError):
    """A dataset file is not on disk (and downloading was not asked for).

    Also a :class:`FileNotFoundError`, so ``except FileNotFoundError`` keeps working.
    """


class DownloadError(MonDEQError, OSError):
    """No mirror could deliver a dataset file."""
