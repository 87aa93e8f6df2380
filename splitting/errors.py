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
