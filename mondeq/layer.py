"""The MonDEQ module: a monotone parametrisation + a nonlinearity + solver settings."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from splitting import SOLVERS, EquilibriumStats, Prox, ReLU, State, equilibrium
from .errors import InputDTypeError, InvalidSettingError, NonFiniteInputError, UnsupportedExportError
from splitting.implicit import GRADIENTS
from splitting.operator import check_alpha

from .parametrisation import MonotoneParametrisation

LOW_PRECISION = (torch.float16, torch.bfloat16)
_VALIDATED = ("solver", "nonlinearity", "alpha")


def prox_for(module: object) -> str | None:
    """The :mod:`splitting` prox (as code) computing the same σ as a ``torch.nn`` activation, or
    ``None`` when there is none (``nn.Sigmoid`` → ``splitting.Sigmoid()``, ``nn.LeakyReLU(0.2)`` →
    ``splitting.LeakyReLU(0.2)``). Activations steeper than slope 1 are no prox and map to None."""
    simple = {nn.ReLU: "splitting.ReLU()", nn.Tanh: "splitting.Tanh()", nn.Sigmoid: "splitting.Sigmoid()"}
    if type(module) in simple:
        return simple[type(module)]
    if isinstance(module, nn.LeakyReLU) and 0 <= module.negative_slope <= 1:
        return f"splitting.LeakyReLU({module.negative_slope:g})"
    if isinstance(module, nn.Softplus):
        return f"splitting.Softplus({module.beta:g})"
    if isinstance(module, nn.Hardtanh) and type(module) is nn.Hardtanh:
        return f"splitting.HardTanh({module.min_val:g}, {module.max_val:g})"
    if isinstance(module, nn.Softshrink):
        return f"splitting.SoftThreshold({module.lambd:g})"
    return None


class MonDEQ(nn.Module):
    r"""Implicit layer :math:`x \mapsto z^\star`, :math:`z^\star = \sigma(Wz^\star + Ux + b)`.

    The equilibrium exists and is unique for every parameter value. Gradients are exact implicit
    gradients computed by the same splitting method on the transposed problem; forward-mode
    derivatives are exact too (see :mod:`splitting.implicit`).

    Args:
        linear: the parametrisation of U, b and W (e.g. :class:`~mondeq.operators.dense.MonotoneLinear`).
        nonlinearity: a proximal nonlinearity σ, an instance of :class:`splitting.Prox`
            (default :class:`splitting.ReLU`).
        solver: ``"pr"``, ``"fb"``, ``"dr"``, ``"anderson-pr"``, ``"anderson-fb"``, ``"fbf"``
            (see ``splitting.SOLVERS``) or a solver callable; may be reassigned later
            (``layer.solver = "dr"``).
        alpha: splitting step size, 0 < α < ∞.
        tol: converged means every sample's true relative residual
            ‖z − σ(Wz + Ux + b)‖/‖z‖ ≤ tol (for the forward solve and the backward one).
        max_iter: forward iteration cap, ≥ 1.
        backward_tol, backward_max_iter: backward settings (default: the forward ones).
        gradient: ``"exact"`` (default) or ``"jacobian-free"``, an explicit inexact option that
            skips the backward solve (:func:`splitting.equilibrium`; never the default).
    """

    def __init__(self, linear: MonotoneParametrisation, nonlinearity: Prox | None = None, *,
                 solver: str | Callable = "pr", alpha: float = 1.0, tol: float = 1e-2,
                 max_iter: int = 50, backward_tol: float | None = None,
                 backward_max_iter: int | None = None, gradient: str = "exact") -> None:
        super().__init__()
        if not isinstance(linear, MonotoneParametrisation):
            raise TypeError(f"linear must be a mondeq.MonotoneParametrisation (MonotoneLinear, "
                            f"MonotoneConv, ...), got {type(linear).__name__}")
        self.linear = linear
        self.nonlinearity = ReLU() if nonlinearity is None else nonlinearity
        self.solver = solver
        self.alpha = alpha
        self.tol = _check_tol(tol, "tol")
        self.max_iter = _check_iterations(max_iter, "max_iter")
        self.backward_tol = None if backward_tol is None else _check_tol(backward_tol, "backward_tol")
        self.backward_max_iter = (None if backward_max_iter is None
                                  else _check_iterations(backward_max_iter, "backward_max_iter"))
        if gradient not in GRADIENTS:
            raise InvalidSettingError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        self.gradient = gradient

    def __setattr__(self, name: str, value) -> None:
        # nn.Module would register an nn.Module value (nn.Tanh()) as a submodule and skip the
        # validating property; route the validated settings to their properties
        if name in _VALIDATED:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def solver(self) -> Callable:
        """The splitting method (a callable of ``splitting.SOLVERS``' signature)."""
        return self._solver

    @solver.setter
    def solver(self, solver: str | Callable) -> None:
        if isinstance(solver, str):
            if solver not in SOLVERS:
                raise InvalidSettingError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
            solver = SOLVERS[solver]
        elif not callable(solver):
            raise InvalidSettingError(f"solver must be a name in {sorted(SOLVERS)} or a callable, got {solver!r}")
        self._solver = solver

    @property
    def nonlinearity(self) -> Prox:
        """The proximal nonlinearity σ."""
        return self._nonlinearity

    @nonlinearity.setter
    def nonlinearity(self, nonlinearity: Prox) -> None:
        if not isinstance(nonlinearity, Prox):
            equivalent = prox_for(nonlinearity)
            hint = (f"use {equivalent} instead, the same σ with an exact prox" if equivalent else
                    "subclass splitting.Prox (or splitting.ScalarProx for a nondecreasing "
                    "1-Lipschitz σ) to add a proximal nonlinearity")
            raise TypeError(
                f"nonlinearity must be a splitting.Prox (e.g. splitting.ReLU(), splitting.Tanh()), "
                f"got {nonlinearity!r}: the splitting methods need prox(v, alpha) and "
                f"derivative(v), not just σ(v); {hint}")
        self._nonlinearity = nonlinearity

    @property
    def alpha(self) -> float:
        """The splitting step size."""
        return self._alpha

    @alpha.setter
    def alpha(self, alpha: float) -> None:
        self._alpha = check_alpha(alpha)

    def forward(self, x: Tensor) -> State:
        """The equilibrium state (a tuple of tensors, batch first) for input ``x``."""
        return self.forward_with_stats(x)[0]

    def forward_with_stats(self, x: Tensor, *, z0: State | None = None) -> tuple[State, EquilibriumStats]:
        """Like :meth:`forward`, also returning the solver results (iterations, residuals, time).

        Raises:
            StateShapeError: wrong input shape or an empty batch.
            TypeError: half-precision parameters, or an input dtype that differs from the
                parameters' outside autocast.
            NonFiniteInputError: the solve failed and the input or a parameter is not finite
                (named in the message).
            UnsupportedExportError: called under ``torch.jit.trace`` or ``torch.export``.
        """
        if torch.jit.is_tracing():
            raise UnsupportedExportError.capture("torch.jit.trace")
        if torch.compiler.is_exporting():
            raise UnsupportedExportError.capture("torch.export")
        self.check_input(x)
        solve = equilibrium
        if torch.compiler.is_compiling():  # one opaque call, imported here: no extra traced frame
            from splitting.opaque import equilibrium as solve
        z, stats = solve(self.linear.operator(), self.nonlinearity, self.linear.bias(x),
                         solver=self.solver, alpha=self.alpha, tol=self.tol,
                         max_iter=self.max_iter, z0=z0, backward_tol=self.backward_tol,
                         backward_max_iter=self.backward_max_iter, gradient=self.gradient)
        if not stats.forward.converged:
            self._raise_if_not_finite(x)
        return z, stats

    def __prepare_scriptable__(self) -> "MonDEQ":
        """``torch.jit.script`` calls this before compiling: refuse early, with a typed error."""
        raise UnsupportedExportError.capture("torch.jit.script")

    def check_input(self, x: Tensor) -> None:
        """Shape, emptiness and dtype checks (no device synchronisation)."""
        self.linear.check_input(x)
        dtype = self.linear.dtype
        if dtype in LOW_PRECISION:
            raise TypeError(f"monDEQ parameters are {dtype}; the equilibrium solve needs float32 or "
                            f"float64 parameters: keep them in float32 and train under "
                            f"torch.autocast for low-precision speed")
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise InputDTypeError(f"input dtype {x.dtype} differs from the parameters' {dtype}; convert "
                                  f"the input (x.to({dtype})) or run under torch.autocast")

    def _raise_if_not_finite(self, x: Tensor) -> None:
        """After a failed solve, name the non-finite tensor if there is one (syncs; failure only)."""
        bad = [] if bool(torch.isfinite(x).all()) else ["input x"]
        bad += [f"parameter {name}" for name, p in self.linear.named_parameters()
                if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteInputError(f"{', '.join(bad)} contain(s) NaN or inf, so the equilibrium "
                                      f"is undefined; check the data pipeline, the learning rate "
                                      f"or the solver (forward-backward with too large an alpha)")

    def extra_repr(self) -> str:
        name = getattr(self.solver, "__name__", repr(self.solver))
        return (f"nonlinearity={self.nonlinearity!r}, m={self.linear.m:g}, solver={name}, "
                f"alpha={self.alpha:g}, tol={self.tol:g}, max_iter={self.max_iter}")


def _check_tol(tol: float, name: str) -> float:
    if isinstance(tol, bool) or not 0 < tol < float("inf"):
        raise InvalidSettingError(f"{name} must be > 0 and finite, got {tol}")
    return float(tol)


def _check_iterations(n: int, name: str) -> int:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise InvalidSettingError(f"{name} must be a positive integer, got {n}")
    return int(n)


@contextmanager
def solver_settings(layer: MonDEQ, *, tol: float | None = None,
                    max_iter: int | None = None) -> Iterator[MonDEQ]:
    """Temporarily change a layer's forward tolerance and iteration cap (``None`` keeps it)."""
    saved = (layer.tol, layer.max_iter)
    try:
        if tol is not None:
            layer.tol = float(tol)
        if max_iter is not None:
            layer.max_iter = int(max_iter)
        yield layer
    finally:
        layer.tol, layer.max_iter = saved
