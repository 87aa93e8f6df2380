r"""Forward-backward splitting for :math:`0 \in (I - W)z - b + \partial f(z)`.

.. math:: z_{k+1} = \mathrm{prox}_{\alpha f}\big((1 - \alpha) z_k + \alpha (W z_k + b)\big)

converges linearly for :math:`0 < \alpha < 2m / L^2` with :math:`L \ge \|I - W\|_2`
(Winston & Kolter, "Monotone operator equilibrium networks", NeurIPS 2020). Each step evaluates
:math:`W z_k + b`, so the true residual of :math:`z_k` comes for free: the solve returns the
first iterate whose residual meets ``tol`` (the input of the last step).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from .errors import InvalidSettingError, StepSizeWarning, warn_at_caller
from .loop import check_settings, initial_state, iterate, relative_residual
from .operator import LinearOperator, Resolvent, check_alpha
from .prox import Prox
from .result import SolverResult
from .state import State, tmap

ALPHA_CHECKS = ("on_failure", "warn", "raise", "ignore")


def max_stable_alpha(op: LinearOperator) -> float:
    """FB's convergence limit 2m/L² for this operator."""
    return 2.0 * op.m / op.lipschitz() ** 2


def check_step_size(op: LinearOperator, alpha: float, check_step: str, *, method: str,
                    converged: bool | None = None,
                    limit: Callable[[LinearOperator], float] = max_stable_alpha,
                    rule: str = "2m/L^2") -> None:
    """Compare α with the method's step limit (one norm computation of I − W) and warn or raise.

    ``"on_failure"`` (the default of the FB methods) checks only after a solve that did not
    converge (``converged=False``), so a successful solve never pays for the norm; ``"warn"`` and
    ``"raise"`` check before the solve; ``"ignore"`` never checks.

    Args:
        limit: the method's convergent range is ``0 < alpha < limit(op)`` (FB: 2m/L²;
            forward-backward-forward: 1/L).
        rule: that limit as a formula, for the message.
    """
    if check_step not in ALPHA_CHECKS:
        raise InvalidSettingError(f"check_step must be one of {ALPHA_CHECKS}, got {check_step!r}")
    due = (check_step in ("warn", "raise") and converged is None) or (
        check_step == "on_failure" and converged is False)
    if not due:
        return
    try:
        bound = limit(op)
    except torch.linalg.LinAlgError:  # W has NaN or inf entries: no step size can help
        bound = float("nan")
    if not math.isfinite(bound) or bound == 0.0:
        warn_at_caller(f"{method} with alpha={alpha:g} did not converge and the operator W is not "
                       f"finite (a parameter is NaN or inf), so no step size can converge: if "
                       f"training produced this, the previous steps diverged; use a smaller alpha "
                       f"({method} needs alpha < {rule}) or Peaceman-Rachford",
                       StepSizeWarning)
        return
    if alpha < bound:
        return
    message = (f"{method} step alpha={alpha:g} is outside the convergent range "
               f"0 < alpha < {rule} = {bound:.4g} (m={op.m:g}, L={op.lipschitz():.4g}); "
               f"use a smaller alpha or Peaceman-Rachford, which converges for any alpha")
    if check_step == "raise":
        raise InvalidSettingError(message)
    warn_at_caller(message, StepSizeWarning)


def forward_backward(
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
    """Solve for the equilibrium by forward-backward iteration.

    Args:
        op: the operator W (protocol of :class:`~splitting.operator.LinearOperator`).
        prox: the nonlinearity σ = prox_f.
        bias: Ux + b as a state, batch first.
        alpha: step size; converges for 0 < α < 2m/L².
        tol: converged means every sample's true relative residual ‖z − σ(Wz + b)‖/‖z‖ ≤ tol.
        max_iter: iteration cap.
        z0: optional warm start.
        check_step: when to compare α with 2m/L² (an SVD-sized computation): ``"on_failure"``
            (default: only after a solve that did not converge, then warn), ``"warn"`` or
            ``"raise"`` (before the solve), ``"ignore"``.
        resolvent: unused (FB needs no factorisation); accepted so all solvers share a signature.
        mask: freeze each sample once it has converged (see :func:`splitting.loop.iterate`).

    Returns:
        :class:`~splitting.result.SolverResult`.
    """
    start = time.perf_counter()
    alpha = check_alpha(alpha)
    check_settings(op, bias, tol=tol, max_iter=max_iter, z0=z0)
    check_step_size(op, alpha, check_step, method="forward-backward")

    def step(z: State) -> tuple[State, State, torch.Tensor]:
        v = tmap(torch.add, op.mv(z), bias)
        residual = relative_residual(z, prox.apply(v))
        z_new = prox.apply(tmap(lambda zi, vi: torch.lerp(zi, vi, alpha), z, v), alpha)
        return z_new, z, residual

    z = initial_state(op, bias, z0)
    result = iterate(step, z, op=op, prox=prox, bias=bias, tol=tol, max_iter=max_iter, start=start,
                     resolvent=None, exact=True, mask=mask)
    check_step_size(op, alpha, check_step, method="forward-backward", converged=result.converged)
    return result
