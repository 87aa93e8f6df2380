r"""Forward-backward splitting for :math:`0 \in (I - W)z - b + \partial f(z)`.

.. math:: z_{k+1} = \mathrm{prox}_{\alpha f}\big((1 - \alpha) z_k + \alpha (W z_k + b)\big)

converges linearly for :math:`0 < \alpha < 2m / L^2` with :math:`L \ge \|I - W\|_2`
(Winston & Kolter, "Monotone operator equilibrium networks", NeurIPS 2020).
"""
from __future__ import annotations

import time
import warnings


from .errors import InvalidSettingError, StepSizeWarning
from .loop import check_settings, initial_state, iterate
from .operator import LinearOperator, Resolvent, check_alpha
from .prox import Prox
from .result import SolverResult
from .state import State, tmap

ALPHA_CHECKS = ("warn", "raise", "ignore")


def max_stable_alpha(op: LinearOperator) -> float:
    """FB's convergence limit 2m/L² for this operator."""
    return 2.0 * op.m / op.lipschitz() ** 2


def forward_backward(
    op: LinearOperator,
    prox: Prox,
    bias: State,
    *,
    alpha: float = 0.1,
    tol: float = 1e-3,
    max_iter: int = 500,
    z0: State | None = None,
    residual: str = "step",
    check_step: str = "warn",
    resolvent: Resolvent | None = None,
    mask: bool = False,
) -> SolverResult:
    """Solve for the equilibrium by forward-backward iteration.

    Args:
        op: the operator W (protocol of :class:`~splitting.operator.LinearOperator`).
        prox: the nonlinearity σ = prox_f.
        bias: Ux + b as a state, batch first.
        alpha: step size; converges for 0 < α < 2m/L².
        tol: stop when every sample's relative residual is ≤ tol.
        max_iter: iteration cap.
        z0: optional warm start.
        residual: ``"step"`` (change between iterates) or ``"fixed_point"`` (true residual).
        check_step: what to do when α ≥ 2m/L²: ``"warn"`` (default; the run goes on and may
            diverge, reported as ``converged=False``), ``"raise"`` or ``"ignore"``.
        resolvent: unused (FB needs no factorisation); accepted so all solvers share a signature.
        mask: freeze each sample once it has converged (see :func:`splitting.loop.iterate`).

    Returns:
        :class:`~splitting.result.SolverResult`.
    """
    start = time.perf_counter()
    alpha = check_alpha(alpha)
    check_settings(op, bias, tol=tol, max_iter=max_iter, residual=residual, z0=z0)
    if check_step not in ALPHA_CHECKS:
        raise InvalidSettingError(f"check_step must be one of {ALPHA_CHECKS}, got {check_step!r}")
    if check_step != "ignore":
        limit = max_stable_alpha(op)
        if alpha >= limit:
            message = (f"forward-backward step alpha={alpha:g} is outside the convergent range "
                       f"0 < alpha < 2m/L^2 = {limit:.4g} (m={op.m:g}, L={op.lipschitz():.4g}); "
                       f"use a smaller alpha or Peaceman-Rachford, which converges for any alpha")
            if check_step == "raise":
                raise InvalidSettingError(message)
            warnings.warn(message, StepSizeWarning, stacklevel=2)

    def step(z: State) -> tuple[State, State]:
        wz = op.mv(z)
        v = tmap(lambda zi, wi, bi: (1 - alpha) * zi + alpha * (wi + bi), z, wz, bias)
        z_new = prox.apply(v, alpha)
        return z_new, z_new

    z = initial_state(op, bias, z0)
    return iterate(step, z, z, op=op, prox=prox, bias=bias, tol=tol, max_iter=max_iter,
                   residual=residual, start=start, resolvent=None, mask=mask)
