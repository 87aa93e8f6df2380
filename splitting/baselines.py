r"""Baselines without a guarantee: Broyden's method and plain Anderson on :math:`z \mapsto \sigma(Wz + b)`.

General deep-equilibrium models solve :math:`g(z) = z - \sigma(Wz + b) = 0` by quasi-Newton or
Anderson steps on the plain fixed-point map (Bai, Kolter & Koltun, "Deep equilibrium models",
NeurIPS 2019). For a monDEQ that map need not be a contraction (‖W‖₂ may exceed 1; only
:math:`I - W` is strongly monotone), so **neither method carries a convergence guarantee
here**: they are comparison baselines for the splitting methods, not alternatives to them. They
run on the same protocol and the same stopping rule (:func:`splitting.loop.iterate`): every
iteration evaluates :math:`g` at its new point, so the residual handed to the loop is the exact
true residual, ``converged`` means what it means for every method, and a run that stalls or
blows up is reported as not converged (NaN stops it as diverged).

Broyden ("good" Broyden, inverse form; Broyden 1965): with :math:`H_0 = I` (the Jacobian
:math:`I - \mathrm{diag}(\sigma')W` of :math:`g` is :math:`I` where :math:`W = 0`),

.. math::
    z^{+} = z - H g(z),\quad s = z^{+} - z,\quad y = g(z^{+}) - g(z),\quad
    H^{+} = H + \frac{(s - Hy)\, s^\top H}{s^\top H y},

kept per sample as :math:`H = I + \sum_i a_i b_i^\top` with at most ``memory`` terms (restart
from :math:`H = I` when full; an update with :math:`s^\top H y = 0` is skipped). Full steps, no
line search, as in the DEQ baselines.

Plain Anderson is :func:`splitting.anderson.anderson` on forward-backward at α = 1 (FB's map at
α = 1 is exactly :math:`z \mapsto \sigma(Wz + b)`) without the safeguard.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from .anderson import _flatten, _unflatten, anderson
from .errors import InvalidSettingError
from .loop import check_settings, initial_state, iterate, relative_residual
from .operator import LinearOperator, Resolvent, check_alpha
from .prox import Prox
from .result import SolverResult
from .state import State, tmap


def broyden(
    op: LinearOperator,
    prox: Prox,
    bias: State,
    *,
    alpha: float = 1.0,
    tol: float = 1e-3,
    max_iter: int = 100,
    z0: State | None = None,
    resolvent: Resolvent | None = None,
    memory: int = 30,
    mask: bool = False,
) -> SolverResult:
    """Broyden's method on g(z) = z − σ(Wz + b): a baseline with no convergence guarantee.

    Args:
        op, prox, bias: the problem, as for every method of :data:`splitting.SOLVERS`.
        alpha: accepted for the shared signature and validated; the plain map has no step.
        tol: converged means every sample's true relative residual ‖z − σ(Wz + b)‖/‖z‖ ≤ tol.
        max_iter: iteration cap (one application of W per iteration, plus one at the start).
        z0: optional warm start.
        resolvent: unused (accepted for the shared signature).
        memory: rank-one terms kept in the inverse-Jacobian estimate before it restarts, ≥ 1.
        mask: freeze each sample once it has converged (see :func:`splitting.loop.iterate`).

    Returns:
        :class:`~splitting.result.SolverResult`; ``converged=False`` whenever the method failed.
    """
    start = time.perf_counter()
    check_alpha(alpha)
    check_settings(op, bias, tol=tol, max_iter=max_iter, z0=z0)
    if isinstance(memory, bool) or int(memory) != memory or memory < 1:
        raise InvalidSettingError(f"memory must be a positive integer, got {memory}")
    memory = int(memory)
    like = initial_state(op, bias, z0)

    def g(x: Tensor) -> tuple[Tensor, State, Tensor]:
        z = _unflatten(x, like)
        target = prox.apply(tmap(torch.add, op.mv(z), bias))
        return x - _flatten(target), z, relative_residual(z, target)

    def times_h(a: Tensor, b: Tensor, r: Tensor) -> Tensor:
        """H r = r + Σ a_i (b_i · r)."""
        return r + (a * (b * r.unsqueeze(1)).sum(dim=2, keepdim=True)).sum(dim=1)

    def step(carry):
        x, gx, a, b = carry
        k = book["k"]
        if k % memory == 0:  # restart: H = I
            a, b = torch.zeros_like(a), torch.zeros_like(b)
        s = -times_h(a, b, gx)
        x_new = x + s
        g_new, z_new, residual = g(x_new)
        y = g_new - gx
        hy = times_h(a, b, y)
        hts = times_h(b, a, s)  # Hᵀ s = s + Σ b_i (a_i · s)
        den = (s * hy).sum(dim=1, keepdim=True)
        usable = den.abs() > torch.finfo(den.dtype).tiny
        slot = k % memory
        a = a.clone()
        b = b.clone()
        a[:, slot] = torch.where(usable, (s - hy) / torch.where(usable, den, 1.0), 0.0)
        b[:, slot] = torch.where(usable, hts, 0.0)
        book["k"] = k + 1
        return (x_new, g_new, a, b), z_new, residual

    book = {"k": 0}
    x0 = _flatten(like)
    g0, _, _ = g(x0)
    history = x0.new_zeros(x0.shape[0], memory, x0.shape[1])
    return iterate(step, (x0, g0, history, history.clone()), op=op, prox=prox, bias=bias, tol=tol,
                   max_iter=max_iter, start=start, resolvent=None, exact=True, mask=mask)


def anderson_plain(
    op: LinearOperator,
    prox: Prox,
    bias: State,
    *,
    alpha: float = 1.0,
    tol: float = 1e-3,
    max_iter: int = 100,
    z0: State | None = None,
    resolvent: Resolvent | None = None,
    memory: int = 5,
    mask: bool = False,
) -> SolverResult:
    """Anderson acceleration of z ↦ σ(Wz + b), unsafeguarded: a baseline with no guarantee.

    Args:
        alpha: accepted for the shared signature and validated; the plain map has no step
            (it is forward-backward's map at α = 1).
        memory: past pairs kept, ≥ 1 (1 = the plain iteration z ← σ(Wz + b)).
        Other arguments as in :func:`broyden`.
    """
    check_alpha(alpha)
    return anderson(op, prox, bias, base="fb", alpha=1.0, tol=tol, max_iter=max_iter, z0=z0,
                    memory=memory, safeguard=False, check_step="ignore", mask=mask)
