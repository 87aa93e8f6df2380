"""The MonDEQ module: a monotone parametrisation + a nonlinearity + solver settings."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from splitting import SOLVERS, EquilibriumStats, Prox, ReLU, State, equilibrium
from splitting.errors import InvalidSettingError
from splitting.operator import check_alpha

from .base import MonotoneParametrisation


class MonDEQ(nn.Module):
    r"""Implicit layer :math:`x \mapsto z^\star`, :math:`z^\star = \sigma(Wz^\star + Ux + b)`.

    The equilibrium exists and is unique for every parameter value. Gradients are exact implicit
    gradients computed by the same splitting method on the transposed problem.

    Args:
        linear: the parametrisation of U, b and W (e.g. :class:`~mondeq.dense.MonotoneLinear`).
        nonlinearity: a proximal nonlinearity σ (default ReLU).
        solver: ``"pr"``, ``"fb"`` (see ``splitting.SOLVERS``) or a solver callable.
        alpha: splitting step size.
        tol: per-sample relative residual at which the forward solve stops.
        max_iter: forward iteration cap.
        backward_tol, backward_max_iter: backward settings (default: the forward ones).
    """

    def __init__(self, linear: MonotoneParametrisation, nonlinearity: Prox | None = None, *,
                 solver: str | Callable = "pr", alpha: float = 1.0, tol: float = 1e-2,
                 max_iter: int = 50, backward_tol: float | None = None,
                 backward_max_iter: int | None = None) -> None:
        super().__init__()
        if isinstance(solver, str):
            if solver not in SOLVERS:
                raise InvalidSettingError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
            solver = SOLVERS[solver]
        self.linear = linear
        self.nonlinearity = nonlinearity if nonlinearity is not None else ReLU()
        self.solver = solver
        self.alpha = check_alpha(alpha)
        self.tol = tol
        self.max_iter = max_iter
        self.backward_tol = backward_tol
        self.backward_max_iter = backward_max_iter

    def forward(self, x: Tensor) -> State:
        """The equilibrium state (a tuple of tensors, batch first) for input ``x``."""
        return self.forward_with_stats(x)[0]

    def forward_with_stats(self, x: Tensor, *, z0: State | None = None) -> tuple[State, EquilibriumStats]:
        """Like :meth:`forward`, also returning the solver results (iterations, residuals, time)."""
        self.linear.check_input(x)
        return equilibrium(self.linear.operator(), self.nonlinearity, self.linear.bias(x),
                           solver=self.solver, alpha=self.alpha, tol=self.tol, max_iter=self.max_iter,
                           z0=z0, backward_tol=self.backward_tol,
                           backward_max_iter=self.backward_max_iter)

    def extra_repr(self) -> str:
        name = getattr(self.solver, "__name__", repr(self.solver))
        return f"solver={name}, alpha={self.alpha:g}, tol={self.tol:g}, max_iter={self.max_iter}"
