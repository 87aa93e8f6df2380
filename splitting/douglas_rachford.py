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

import time

import torch

from .loop import check_settings, initial_state, iterate
from .operator import LinearOperator, Resolvent, check_alpha
from .prox import Prox
from .result import SolverResult
from .state import State, tmap


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
    start = time.perf_counter()
    alpha = check_alpha(alpha)
    check_settings(op, bias, tol=tol, max_iter=max_iter, residual=residual, z0=z0)
    if resolvent is None:
        resolvent = op.resolvent(alpha)
    # R is linear: R(u½ + αb) = R u½ + R(αb), so R(αb) is computed once per solve.
    resolved_bias = resolvent.solve(tuple(alpha * b for b in bias))

    def step(carry: tuple[State, State]) -> tuple[tuple[State, State], State]:
        z, u = carry
        u_half = tuple(zi.mul(2).sub_(ui) for zi, ui in zip(z, u))
        z_half = tmap(torch.add, resolvent.solve(u_half), resolved_bias)
        u = tuple(zh.sub_(zi).add_(ui) for zh, zi, ui in zip(z_half, z, u))
        z = prox.apply(u, alpha)
        return (z, u), z

    z = initial_state(op, bias, z0)
    u = tuple(t.clone() for t in z)
    return iterate(step, (z, u), z, op=op, prox=prox, bias=bias, tol=tol, max_iter=max_iter,
                   residual=residual, start=start, resolvent=resolvent, mask=mask)
