r"""Douglas-Rachford splitting for :math:`0 \in (I - W)z - b + \partial f(z)`, any :math:`\alpha > 0`.

Peaceman-Rachford with the reflected update averaged. With :math:`R = (I + \alpha(I - W))^{-1}`:

.. math::
    u_{1/2} = 2z - u,\quad z_{1/2} = R(u_{1/2} + \alpha b),\quad
    u \leftarrow \tfrac12 u + \tfrac12 (2z_{1/2} - u_{1/2}) = u + z_{1/2} - z,\quad
    z = \mathrm{prox}_{\alpha f}(u)

The DR map is the average of the identity and PR's map, so it is firmly nonexpansive and converges
for every α > 0 even without strong monotonicity; when I − W is strongly monotone (monDEQs) PR's
map is already a contraction and DR trades that for robustness (Lions & Mercier 1979; Winston &
Kolter 2020, Appendix).
"""
from __future__ import annotations

from .operator import LinearOperator, Resolvent
from .peaceman_rachford import relaxed_peaceman_rachford
from .prox import Prox
from .result import SolverResult
from .state import State


def douglas_rachford(
    op: LinearOperator,
    prox: Prox,
    bias: State,
    *,
    alpha: float = 1.0,
    tol: float = 1e-3,
    max_iter: int = 100,
    z0: State | None = None,
    residual: str = "step",
    resolvent: Resolvent | None = None,
    mask: bool = False,
) -> SolverResult:
    """Solve for the equilibrium by Douglas-Rachford iteration.

    Args:
        op: the operator W.
        prox: the nonlinearity σ = prox_f.
        bias: Ux + b as a state, batch first.
        alpha: step size, any α > 0.
        tol: stop when every sample's relative residual is ≤ tol.
        max_iter: iteration cap.
        z0: optional warm start (the auxiliary variable u starts at z0 too).
        residual: ``"step"`` (change between iterates) or ``"fixed_point"`` (true residual).
        resolvent: a factorisation of ``op`` for this α to reuse; built here when ``None``.
        mask: freeze each sample once it has converged (see :func:`splitting.loop.iterate`).

    Returns:
        :class:`~splitting.result.SolverResult` carrying the resolvent for the backward pass.
    """
    return relaxed_peaceman_rachford(op, prox, bias, relaxation=0.5, alpha=alpha, tol=tol,
                                     max_iter=max_iter, z0=z0, residual=residual,
                                     resolvent=resolvent, mask=mask)
