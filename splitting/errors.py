"""Typed errors and warnings raised by the splitting solvers and the layers built on them."""
from __future__ import annotations


class InvalidSettingError(ValueError):
    """A solver or layer setting is outside its valid range (α ≤ 0, tol ≤ 0, m ≤ 0, ...)."""


class NonFiniteInputError(ValueError):
    """An input, bias or gradient contains NaN or ±inf."""


class StateShapeError(ValueError):
    """A tensor does not have the shape the operator expects."""


class StepSizeWarning(UserWarning):
    """Forward-backward's step α is outside its convergent range 0 < α < 2m/L²."""


class ConvergenceWarning(UserWarning):
    """A solver stopped at max_iter before its residual reached tol."""


class UnsupportedDerivativeError(RuntimeError):
    """A derivative autograd asked for that an equilibrium cannot give exactly (second order,
    vmap-based transforms); raised instead of returning a silently wrong value."""
