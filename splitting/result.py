"""The small frozen result every splitting solver returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from torch import Tensor

from .operator import Resolvent
from .state import State


@dataclass(frozen=True, repr=False)
class SolverResult:
    """What a solve produced and what it cost.

    Attributes:
        z: the equilibrium estimate, a state (tuple of tensors, batch first).
        iterations: iterations run up to the one whose state is returned (the first at which
            every sample met ``tol``, for a converged solve).
        residuals: per-sample relative residual of each iteration's candidate state, shape
            (iterations, batch): exact for forward-backward, an estimate for the other methods
            (see :mod:`splitting.loop`).
        converged: every sample's TRUE relative fixed-point residual
            ‖z − σ(Wz + b)‖/‖z‖ is ≤ ``tol`` (checked directly on the returned ``z``).
        time: wall-clock seconds spent in the solve (including the factorisation).
        true_residual: per-sample ‖z − σ(Wz + b)‖/‖z‖ of the returned z, shape (batch,); known
            already for a converged solve, otherwise computed on first access (one more
            application of W) by ``residual_fn``.
        resolvent: the factorisation used (``None`` for methods that need none); the implicit
            backward pass reuses it transposed.
        sample_iterations: per-sample iteration from which that sample met the stopping test
            (``iterations`` for samples that never did), int64, shape (batch,). With
            ``mask=True`` a sample stops changing from that iteration on, and each sample's
            count and state are those it would get solved alone.
    """

    z: State
    iterations: int
    residuals: Tensor
    converged: bool
    time: float
    residual_fn: Callable[[], Tensor] = field(compare=False)
    resolvent: Resolvent | None = None
    sample_iterations_fn: Callable[[], Tensor] | None = field(default=None, compare=False)

    @cached_property
    def true_residual(self) -> Tensor:
        """Per-sample relative fixed-point residual of ``z`` (computed once, on first access)."""
        return self.residual_fn()

    @cached_property
    def sample_iterations(self) -> Tensor | None:
        """Per-sample iteration counts (see the class docstring; computed on first access)."""
        return None if self.sample_iterations_fn is None else self.sample_iterations_fn()

    @property
    def max_residual(self) -> float:
        """Largest per-sample true residual of the returned state (inf for an empty trace)."""
        return float(self.true_residual.max()) if self.iterations else float("inf")

    def __repr__(self) -> str:
        shapes = ", ".join("×".join(map(str, t.shape)) for t in self.z)
        return (f"SolverResult(z=({shapes}), iterations={self.iterations}, "
                f"converged={self.converged}, time={self.time:.4g}s)")
