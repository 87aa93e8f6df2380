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

__all__ = ["ChecksumError", "CheckpointError", "ClassifierTypeError", "ConvergenceWarning", "DatasetFileError",
           "DeviceUnavailableError", "DownloadError", "InputDTypeError", "InputRangeError", "InputRangeWarning",
           "InputScaleError", "InputShapeError",
           "InvalidSettingError", "LabelError", "MissingDatasetError", "MissingDependencyError",
           "MonDEQError", "NonAffineReadoutError", "NonFiniteInputError", "ResumeConfigError",
           "RunExistsError", "StateShapeError", "StepSizeWarning", "UnsupportedDerivativeError",
           "UnsupportedExportError", "UnknownPretrainedError", "PretrainedChecksumError"]


class NonAffineReadoutError(MonDEQError, TypeError):
    """Certificates and Lipschitz margins need ``logits = H z + c``; the readout or head of this
    classifier is not known to be affine."""


class CheckpointError(MonDEQError, ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model it is loaded into."""


class DeviceUnavailableError(MonDEQError, RuntimeError):
    """A device asked for (``map_location``, ``--device``) that this machine does not have; the
    file being loaded was not judged (it may be perfectly good). The message names the device
    and how to load on one that exists."""


class RunExistsError(MonDEQError, FileExistsError):
    """An output folder already holds a run (or a program's results) that the command would
    overwrite; the message names what is there and the option that continues or replaces it."""


class ResumeConfigError(MonDEQError, ValueError):
    """Options given for a resumed run contradict the configuration saved with it."""


class DatasetFileError(MonDEQError, ValueError):
    """A dataset file on disk is corrupt, truncated or not what was expected."""

    @classmethod
    def corrupt(cls, path: Path, what: str) -> "DatasetFileError":
        """The error for a file that exists but cannot be read as expected."""
        return cls(f"{path}: {what}. It is not a readable dataset file: a truncated download, or "
                   "another file under this name. Move it aside and put the official file in its "
                   "place (the loaders of MNIST and Fashion-MNIST fetch a missing file when asked "
                   "to download).")


class ChecksumError(DatasetFileError):
    """A downloaded file does not have the expected MD5 checksum."""


class MissingDatasetError(DatasetFileError, FileNotFoundError):
    """A dataset file is not on disk (and downloading was not asked for).

    Also a :class:`FileNotFoundError`, so ``except FileNotFoundError`` keeps working.
    """


class DownloadError(MonDEQError, OSError):
    """No mirror could deliver a dataset file."""


class MissingDependencyError(MonDEQError, ImportError):
    """An optional feature needs a package that is not installed; the message names the
    ``pip install`` that provides it."""

    def __init__(self, feature: str, package: str, extra: str | None = None) -> None:
        hint = f"pip install {package}" + (f" (or pip install 'mondeq[{extra}]')" if extra else "")
        super().__init__(f"{feature} needs the {package!r} package, which is not installed: {hint}")


class InputShapeError(MonDEQError, ValueError):
    """An input batch whose examples do not have the shape (or size) the model takes; the
    message names the expected and the received shapes."""


class ClassifierTypeError(MonDEQError, TypeError):
    """A function that needs a classifier (certificates, attacks) was given something else, such
    as the classifier's ``MonDEQ`` layer."""


class InputDTypeError(MonDEQError, TypeError):
    """Inputs of a dtype that has no pixel scale (integers other than ``uint8``, ``bool``,
    complex) or that differs from the parameters' outside autocast; the message names the
    conversion."""


class InputRangeError(MonDEQError, ValueError):
    """Floating inputs outside the pixel range an attack keeps them in (``bounds``): clamping
    would move the clean point itself, so the attack would not be one of radius ε."""


class InputRangeWarning(UserWarning):
    """Floating inputs outside [0, 1] given to a certificate of an image classifier (one with an
    input normalisation): its radii are in the pixel scale [0, 1], so 0..255 floats or inputs
    normalised twice give certificates about other images than the user meant."""


class LabelError(MonDEQError, ValueError):
    """Labels that cannot go with a batch of inputs: not integers, not one per example, or
    outside ``0..classes−1``."""


class InputScaleError(MonDEQError, TypeError):
    """An option that converted between input scales (``input_scale`` of :func:`mondeq.certify`,
    ``mean``/``std`` of :func:`mondeq.pgd`), given after the model took ownership of its input
    normalisation: inputs, ε and radii are now in pixel scale everywhere."""


class UnsupportedExportError(MonDEQError, RuntimeError):
    """``torch.jit.trace``, ``torch.jit.script`` and ``torch.export`` cannot capture a monDEQ
    layer: the solve stops on a data-dependent test and the gradient is an implicit solve, neither
    of which a static graph holds. The message names the capture that was tried and what to use.

    Build it with :meth:`capture` (a plain constructor, so that it can be raised under
    ``torch.export``'s strict tracing too)."""

    @classmethod
    def capture(cls, how: str) -> "UnsupportedExportError":
        """The error for the capture ``how`` (e.g. ``"torch.jit.trace"``)."""
        return cls(
            f"{how} cannot capture a monDEQ layer: its equilibrium solve runs a data-dependent "
            f"number of iterations and its gradient is an implicit solve, which a static graph "
            f"cannot hold. Run the model eagerly (torch.compile(model) compiles everything around "
            f"the solve, which stays one eager call), or ship the state_dict with the run's config "
            f"and rebuild it with mondeq.build_model / mondeq.load_run for inference")


class StructureTooLargeError(InvalidSettingError):
    """A parametrisation without its own block structure is too large to build densely."""

    def __init__(self, name: str, state: int, inputs: int, limit: int) -> None:
        super().__init__(
            f"{name} provides no block_structure(), and its dense fallback (W by probing) is built "
            f"only up to {limit} state or input values (got {state} and {inputs}); implement "
            f"block_structure() on {name} (README, 'Writing your own operator') or use a smaller layer")


class UnknownPretrainedError(MonDEQError, ValueError):
    """A pretrained model name that the registry does not hold (the message lists those it does)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no pretrained model named {name!r}{did_you_mean(name, known)}; mondeq.pretrained() "
                         f"lists them: {', '.join(known) or 'none installed'}")


def did_you_mean(name: str, known) -> str:
    """`` (did you mean 'a' or 'b'?)`` for the (at most two) names of ``known`` close to ``name``,
    else ``""``."""
    import difflib

    near = difflib.get_close_matches(name, list(known), n=2)
    return f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""


class PretrainedChecksumError(MonDEQError, OSError):
    """A pretrained model's weights file is not the one its registry entry recorded."""

    def __init__(self, path: object, expected: str, actual: str) -> None:
        super().__init__(f"{path}: SHA-256 {actual}, but the registry recorded {expected}; the "
                         f"file is damaged or was replaced: reinstall the package (pip install "
                         f"--force-reinstall mondeq) or record the model again "
                         f"(experiments/check_pretrained.py --record)")
