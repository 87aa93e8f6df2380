r"""Forward-backward-forward (Tseng) splitting for :math:`0 \in A(z) + \partial f(z)`.

With :math:`A(z) = (I - W)z - b`, monotone and Lipschitz with constant
:math:`L = \|I - W\|_2`, one step is

.. math::
    y = \mathrm{prox}_{\alpha f}\big(z - \alpha A(z)\big)
      = \mathrm{prox}_{\alpha f}\big((1 - \alpha) z + \alpha (W z + b)\big),\qquad
    z^{+} = y - \alpha\big(A(y) - A(z)\big)

(Tseng, "A modified forward-backward splitting method for maximal monotone mappings",
SIAM J. Control Optim. 38(2), 2000; Bauschke & Combettes, *Convex Analysis and Monotone Operator
Theory in Hilbert Spaces*, 2nd ed., Thm. 26.17). The iterates converge to the zero of
:math:`A + \partial f` for every :math:`0 < \alpha < 1/L`, with no inverse of :math:`I - W` and
without strong monotonicity; when :math:`A` is :math:`m`-strongly monotone (a monDEQ) the
convergence is linear. The step range :math:`1/L` is wider than forward-backward's
:math:`2m/L^2` whenever :math:`L > 2m` (the usual case: the skew part :math:`G - G^\top` and
:math:`F^\top F` enlarge :math:`L` but not :math:`m`), at the price of two applications of
:math:`W` per step instead of one.

The second forward step evaluates :math:`W y + b` anyway, so the true residual
:math:`\|y - \sigma(Wy + b)\| / \|y\|` of the intermediate point :math:`y` comes for free: the
candidate handed to the stopping rule is :math:`y`, with its exact residual (``exact=True`` in
:func:`splitting.loop.iterate`).
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from .forward_backward import check_step_size
from .loop import check_settings, initial_state, iterate, relative_residual
from .operator import LinearOperator, Resolvent, check_alpha
from .prox import Prox
from .result import SolverResult
from .state import State, tmap

RULE = "1/L"


def max_stable_alpha_fbf(op: LinearOperator) -> float:
    r"""Forward-backward-forward's convergence limit :math:`1/L`, :math:`L` = ``op.lipschitz()``
    (an upper bound on :math:`\|I - W\|_2`, so the limit is a safe one)."""
    return 1.0 / op.lipschitz()


def forward_backward_forward(
    op: LinearOperator,
    prox: Prox,
    bias: State,
    *,
    alpha: float = 0.1,
    tol: float = 1e-3,
    max_iter: int = 500,
    z0: State | None = None,
    check_step: str = "on_failure",
    resolvent: Resolvent | None = None,
    mask: bool = False,
) -> SolverResult:
    """Solve for the equilibrium by Tseng's forward-backward-forward iteration.

    Args:
        op: the operator W (protocol of :class:`~splitting.operator.LinearOperator`).
        prox: the nonlinearity σ = prox_f.
        bias: Ux + b as a state, batch first.
        alpha: step size; converges for 0 < α < 1/L, L = ‖I − W‖₂.
        tol: converged means every sample's true relative residual ‖z − σ(Wz + b)‖/‖z‖ ≤ tol.
        max_iter: iteration cap (each iteration applies W twice).
        z0: optional warm start.
        check_step: when to compare α with 1/L (an SVD-sized computation): ``"on_failure"``
            (default: only after a solve that did not converge, then warn), ``"warn"`` or
            ``"raise"`` (before the solve), ``"ignore"``.
        resolvent: unused (FBF needs no factorisation); accepted so all solvers share a signature.
        mask: freeze each sample once it has converged (see :func:`splitting.loop.iterate`).

    Returns:
        :class:`~splitting.result.SolverResult`; its state is the last intermediate point y,
        whose residual the stopping rule knows exactly.
    """
    start = time.perf_counter()
    alpha = check_alpha(alpha)
    check_settings(op, bias, tol=tol, max_iter=max_iter, z0=z0)
    settings = dict(method="forward-backward-forward", limit=max_stable_alpha_fbf, rule=RULE)
    check_step_size(op, alpha, check_step, **settings)

    def correct(y: Tensor, w: Tensor, z: Tensor, v: Tensor) -> Tensor:
        # z⁺ = y − α(A(y) − A(z)) with A(y) = y − w, A(z) = z − v (w = Wy + b, v = Wz + b)
        return y + alpha * ((w - y) - (v - z))

    def step(z: State) -> tuple[State, State, Tensor]:
        v = tmap(torch.add, op.mv(z), bias)
        y = prox.apply(tmap(lambda zi, vi: torch.lerp(zi, vi, alpha), z, v), alpha)
        w = tmap(torch.add, op.mv(y), bias)
        residual = relative_residual(y, prox.apply(w))
        return tmap(correct, y, w, z, v), y, residual

    z = initial_state(op, bias, z0)
    result = iterate(step, z, op=op, prox=prox, bias=bias, tol=tol, max_iter=max_iter, start=start,
                     resolvent=None, exact=True, mask=mask)
    check_step_size(op, alpha, check_step, converged=result.converged, **settings)
    return result
