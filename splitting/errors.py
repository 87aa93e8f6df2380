"""Typed errors and warnings raised by the splitting solvers and the layers built on them.

:class:`MonDEQError` is the root of every error of the library, of this package and of
:mod:`mondeq` alike (``except MonDEQError`` catches them all); it is defined here because
``splitting`` is the package at the bottom, which imports nothing from ``mondeq``. Each error also
derives from the built-in exception its condition has always raised (``ValueError``,
``TypeError``, ...), so existing ``except`` clauses keep working.
"""
from __future__ import annotations


class MonDEQError(Exception):
    """Root of every error raised by ``splitting`` and ``mondeq``."""


class InvalidSettingError(MonDEQError, ValueError):
    """A solver or layer setting is outside its valid range (α ≤ 0, tol ≤ 0, m ≤ 0, ...)."""


class NonFiniteInputError(MonDEQError, ValueError):
    """An input, bias or gradient contains NaN or ±inf."""


class StateShapeError(MonDEQError, ValueError):
    """A tensor does not have the shape the operator expects."""


class UnsupportedDerivativeError(MonDEQError, RuntimeError):
    """A derivative autograd asked for that an equilibrium cannot give exactly (second order,
    vmap-based transforms); raised instead of returning a silently wrong value."""


class StepSizeWarning(UserWarning):
    """Forward-backward's step α is outside its convergent range 0 < α < 2m/L²."""


class ConvergenceWarning(UserWarning):
    """A solver stopped at max_iter before its residual reached tol."""


#: Folders whose frames are the library's own, skipped when a warning names its caller's line
#: (``splitting``'s; :mod:`mondeq` adds its own with :func:`attribute_warnings_past`; ``torch``'s
#: is always skipped).
_LIBRARY_FOLDERS: list[str] = []


def attribute_warnings_past(file_or_folder: str) -> None:
    """Treat the frames of files under ``file_or_folder`` (a package's ``__file__`` names its
    folder) as library frames in :func:`warn_at_caller`."""
    import os

    path = os.path.abspath(file_or_folder)
    path = (os.path.dirname(path) if path.endswith(".py") else path) + os.sep
    if path not in _LIBRARY_FOLDERS:
        _LIBRARY_FOLDERS.append(path)


attribute_warnings_past(__file__)


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first frame outside the library and ``torch``: the
    user's line that called the model, or that called ``backward()`` (a fixed ``stacklevel``
    would name ``torch/nn/modules/module.py`` or ``torch/autograd/function.py``)."""
    import os
    import sys
    import warnings

    import torch

    skipped = (*_LIBRARY_FOLDERS, os.path.dirname(os.path.abspath(torch.__file__)) + os.sep, "<frozen")
    frame, level = sys._getframe(1), 2  # stacklevel 2 names that frame
    while frame is not None and frame.f_code.co_filename.startswith(skipped):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 3)
