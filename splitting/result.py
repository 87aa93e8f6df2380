"""The small frozen result every splitting solver returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from torch import Tensor

from .operator import Resolvent
from .state import State


@dataclass(frozen=True)
class SolverResult:
    """What a solve produced and what it cost.

    Attributes:
        z: the equilibrium estimate, a state (tuple of tensors, batch first).
        iterations: number of iterations run.
        residuals: per-sample relative residual after each iteration, shape (iterations, batch).
        converged: whether every sample's residual reached ``tol``.
        time: wall-clock seconds spent in the solve (including the factorisation).
        true_residual: per-sample ‖z − σ(Wz + Ux + b)‖ / ‖z‖ of the returned z, shape (batch,);
            computed on first access (one more application of W), by ``residual_fn``.
        resolvent: the factorisation used (``None`` for methods that need none); the implicit
            backward pass reuses it transposed.
        sample_iterations: per-sample iteration at which that sample's residual first reached
            ``tol`` (``iterations`` for samples that never did), int64, shape (batch,). With
            ``mask=True`` a sample stops changing from that iteration on.
    """

    z: State
    iterations: int
    residuals: Tensor
    converged: bool
    time: float
    residual_fn: Callable[[], Tensor] = field(repr=False, compare=False)
    resolvent: Resolvent | None = field(default=None, repr=False)
    sample_iterations: Tensor | None = field(default=None, repr=False)

    @cached_property
    def true_residual(self) -> Tensor:
        """Per-sample relative fixed-point residual of ``z`` (computed once, on first access)."""
        return self.residual_fn()

    @property
    def max_residual(self) -> float:
        """Largest per-sample residual at the last iteration."""
        return float(self.residuals[-1].max()) if self.iterations else float("inf")
