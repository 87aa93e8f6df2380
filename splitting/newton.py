r"""Semismooth Newton (active-set) equilibrium solver, safeguarded by Peaceman-Rachford steps.

**Newton on the natural residual.** The equilibrium is the zero of

.. math:: F(z) = z - \sigma(Wz + b).

At a point :math:`\hat z` with pre-activation :math:`\hat v = W\hat z + b`, take the elementwise
derivative :math:`D = \sigma'(\hat v) \in [0, 1]` (``prox.derivative``; for ReLU the 0/1 indicator
of the active set, an element of Clarke's generalised Jacobian of σ at :math:`\hat v`) and the
linearisation :math:`\sigma(v) \approx \sigma(\hat v) + D(v - \hat v)`. The Newton candidate is
the equilibrium of the linearised layer,

.. math::
    z^+ = \sigma(\hat v) + D(Wz^+ + b - \hat v)
    \iff (I - DW)\,z^+ = \sigma(\hat v) - DW\hat z
    \iff z^+ = \hat z - (I - DW)^{-1}F(\hat z),

a Newton step on F with the generalised Jacobian :math:`I - DW`. It is solved for the correction
:math:`y = z^+ - \sigma(\hat v)`, small near the solution:

.. math:: y = D(Wy + \tilde b),\qquad \tilde b = W(\sigma(\hat v) - \hat z) = -WF(\hat z).

:math:`I - DW` is invertible for every diagonal :math:`D \in [0, 1]`: rows with :math:`D_i = 0`
are identity rows, and on the others :math:`I - D_AW_{AA} = D_A\big((D_A^{-1} - I) + (I -
W)_{AA}\big)`, a nonnegative diagonal plus a matrix whose symmetric part is :math:`\succeq mI`.

**Exact for piecewise-linear σ.** ReLU, soft threshold, leaky ReLU and hard tanh are affine on
each piece, :math:`\sigma(v) = Dv + c`. If :math:`v^+ = Wz^+ + b` lies in the same pieces as
:math:`\hat v`, then :math:`\sigma(v^+) = \sigma(\hat v) + D(v^+ - \hat v) = z^+`: the candidate
*is* the equilibrium, to the round-off of one linear solve (ReLU: :math:`z^+_A = (I -
W_{AA})^{-1}b_A` on the active set A, 0 elsewhere). Once the active set is identified, one step
ends the solve. For smooth σ (tanh, sigmoid, softplus) the same iteration is plain Newton,
locally quadratic; for the backward problem's :class:`~splitting.prox.DiagonalQuadratic`
(:math:`\sigma(v) = Jv`) the first step is the exact solution of the linear problem.

**Linear solves.** A dense W (:class:`~splitting.operator.DenseOperator` or its transpose, or
``linear_solver="direct"`` with ``op.as_matrix()``): :math:`I - DW` is built per sample and
factorised in one batched LU. Otherwise (convolutional, multi-tier): GMRES
(:func:`splitting.krylov.gmres`) on the linear problem's Peaceman-Rachford map. With the
resolvent :math:`R = (I + \alpha(I - W))^{-1}` and :math:`s = D / (D + \alpha(1 - D))`
(:math:`\mathrm{prox}_{\alpha\cdot}` of the quadratic whose prox is D), PR on
:math:`y = D(Wy + \tilde b)` is the affine map

.. math:: u \mapsto Mu + t,\qquad Mu = 2R(Su) - Su,\quad S = \mathrm{diag}(2s - 1),\quad
          t = 2R(\alpha\tilde b),\qquad y = s \odot u,

so GMRES solves :math:`(I - M)u = t`: the Newton system preconditioned by the resolvent, one
resolvent application per Krylov step and no product with W. M is PR's map for a strongly
monotone inclusion, a contraction (Giselsson, "Tight global linear convergence rate bounds for
Douglas-Rachford splitting", J. Fixed Point Theory Appl. 19, 2017), so :math:`I - M` is
invertible and GMRES converges at least as fast as PR on the linear problem. The relative
tolerance of that solve is :math:`\eta = \min(0.1, \max(\eta_{\min}, 0.1\,\mathrm{tol}/\min(r, 1)))`
for a start with relative residual r: loose while far, tight enough to finish in one step once
the pieces are right (an inexact Newton method; the safeguard below judges the outcome).

**Safeguard.** Every iteration takes a Peaceman-Rachford step
(:mod:`splitting.peaceman_rachford`) on :math:`(z, u)`; samples due for Newton also form
:math:`z^+` from their current z, and each keeps it only if its absolute natural residual fell
enough,

.. math:: \|F(z^+)\| \le \theta \min\big(\|F(\hat z)\|, \rho\big),\qquad 0 < \theta < 1,

with ρ the residual of that sample's last accepted Newton point (∞ before the first). An accepted
point restarts PR at :math:`u = (1 - \alpha)z^+ + \alpha(Wz^+ + b)`, PR's fixed point when
:math:`z^+ = z^\star`; a rejected one costs nothing but its solve (the PR step is taken), and the
next attempt waits a number of PR steps that doubles with each rejection (up to ``max_gap``).

**Why it converges from any start.** Either a sample accepts finitely many Newton points: after
the last it runs plain PR from some u, which converges for every α > 0 (I − W is strongly
monotone). Or it accepts infinitely many: ρ shrinks by θ at each, so :math:`\|F\| \to 0` along
them, and :math:`\|z - z^\star\| \le (1 + L)\|F(z)\| / m` (:mod:`mondeq.robustness`' error bound)
puts them within any tolerance in finitely many iterations. Raw Newton on this problem (the
Newton-min method for the LCP with the P-matrix I − W) can cycle between active sets (Ben
Gharbia & Gilbert, "Nonconvergence of the plain Newton-min algorithm for linear complementarity
problems with a P-matrix", Math. Program. 134, 2012); the safeguard turns a cycle into PR steps.
``converged`` keeps the shared loop's meaning (:mod:`splitting.loop`): every sample's true
relative residual is confirmed ≤ tol.

Each iteration is one step for every sample (PR or an accepted Newton point); the trace holds
PR's residual estimate or a Newton point's exact residual. Which samples attempt Newton is read
on the host once per iteration, and the Krylov solve reads its stop flag once per inner step.
"""
from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from .errors import InvalidSettingError
from .forward_backward import ALPHA_CHECKS
from .krylov import gmres
from .loop import check_settings, initial_state, iterate, relative_residual
from .operator import DenseOperator, LinearOperator, Resolvent, TransposedOperator, check_alpha
from .peaceman_rachford import rachford_step
from .prox import DiagonalQuadratic, Prox
from .result import SolverResult
from .state import State, batch_norm, flatten, tmap, unflatten

LINEAR_SOLVERS = ("auto", "direct", "krylov")


def newton(
    op: LinearOperator,
    prox: Prox,
    bias: State,
    *,
    alpha: float = 1.0,
    tol: float = 1e-3,
    max_iter: int = 100,
    z0: State | None = None,
    check_step: str = "on_failure",
    resolvent: Resolvent | None = None,
    mask: bool = False,
    linear_solver: str = "auto",
    warmup: int = 8,
    reduction: float = 0.5,
    max_gap: int = 16,
    safeguard: bool = True,
    krylov_restart: int = 30,
    krylov_max_iter: int = 120,
    krylov_min_rtol: float | None = None,
) -> SolverResult:
    """Solve for the equilibrium by semismooth Newton steps safeguarded by Peaceman-Rachford.

    Args:
        op: the operator W.
        prox: the nonlinearity σ = prox_f (its ``derivative`` gives the Newton diagonal D).
        bias: Ux + b as a state, batch first.
        alpha: Peaceman-Rachford's step (any α > 0), also the Krylov preconditioner's.
        tol: converged means every sample's true relative residual ‖z − σ(Wz + b)‖/‖z‖ ≤ tol.
        max_iter: iteration cap (one PR step or one accepted Newton point per iteration).
        z0: optional warm start.
        check_step: accepted for a common signature; Newton-PR converges for every α > 0, so
            there is no step-size range to check (validated, otherwise unused).
        resolvent: a factorisation of ``op`` at this α to reuse; built here when ``None``.
        mask: freeze each sample once it has converged (see :func:`splitting.loop.iterate`).
        linear_solver: ``"auto"`` (batched LU for a dense W, GMRES otherwise), ``"direct"``
            (LU of ``op.as_matrix()``, small operators) or ``"krylov"``.
        warmup: PR steps before a sample's first Newton attempt (≥ 0; none for the backward
            problem's :class:`~splitting.prox.DiagonalQuadratic`, where Newton is exact at once).
        reduction: θ in (0, 1): a Newton point is kept only if its residual is ≤ θ times the
            current one and the last accepted one.
        max_gap: most PR steps between two Newton attempts of a sample (≥ 1).
        safeguard: ``False`` keeps every finite Newton point (raw semismooth Newton, which can
            cycle: for experiments only).
        krylov_restart, krylov_max_iter: GMRES restart length and cap per Newton system.
        krylov_min_rtol: smallest relative tolerance of a Krylov solve (default 1000 machine
            epsilons of the dtype).

    Returns:
        :class:`~splitting.result.SolverResult` carrying the PR resolvent for the backward pass.
    """
    start = time.perf_counter()
    alpha = check_alpha(alpha)
    check_settings(op, bias, tol=tol, max_iter=max_iter, z0=z0)
    _check_options(check_step, linear_solver, warmup, reduction, max_gap)
    if resolvent is None:
        resolvent = op.resolvent(alpha)
    matrix = _dense_matrix(op, linear_solver)
    eps = torch.finfo(bias[0].dtype).eps
    min_rtol = 1e3 * eps if krylov_min_rtol is None else float(krylov_min_rtol)
    solve_linear = (_DirectSolve(matrix) if matrix is not None
                    else _KrylovSolve(resolvent, krylov_restart, krylov_max_iter))
    scaled_bias = tuple(alpha * b for b in bias)
    theta = float(reduction) if safeguard else math.inf
    tol = float(tol)

    def candidate(z: State, b: State) -> tuple[State, State, Tensor, Tensor, Tensor]:
        """Newton point from z: (z⁺, its PR restart u, its relative and absolute residual, the
        absolute residual of z)."""
        v = tmap(torch.add, op.mv(z), b)
        c = prox.apply(v)
        d = _derivative(prox, v)
        before = batch_norm(tmap(torch.sub, z, c))
        rtol = (0.1 * tol / relative_residual(z, c).clamp(max=1.0)).clamp(min_rtol, 0.1)
        y = solve_linear(d, op.mv(tmap(torch.sub, c, z)), rtol)
        z_new = tmap(torch.add, c, y)
        v_new = tmap(torch.add, op.mv(z_new), b)
        c_new = prox.apply(v_new)
        u_new = tmap(lambda zi, vi: torch.lerp(zi, vi, alpha), z_new, v_new)
        after = batch_norm(tmap(torch.sub, z_new, c_new))
        return z_new, u_new, relative_residual(z_new, c_new), after, before

    def step(carry):
        z, u, record, wait, gap = carry
        reflected, estimate = rachford_step(resolvent, prox, z, u, scaled_bias)
        z_next, u_next, residual = prox.apply(reflected, alpha), reflected, estimate
        due = wait <= 0
        accepted = torch.zeros_like(due)
        if bool(due.any()):
            index = due.nonzero().squeeze(1)
            z_new, u_new, res_new, after, before = candidate(
                tuple(t[index] for t in z), tuple(t[index] for t in bias))
            limit = theta * torch.minimum(before, record[index])
            keep = torch.isfinite(after) & (after <= limit) if safeguard else torch.isfinite(after)
            accepted = accepted.index_put((index,), keep)
            take = index[keep]
            z_next = tuple(t.index_put((take,), n[keep]) for t, n in zip(z_next, z_new))
            u_next = tuple(t.index_put((take,), n[keep]) for t, n in zip(u_next, u_new))
            residual = residual.index_put((take,), res_new[keep])
            record = record.index_put((take,), after[keep])
        wait = torch.where(accepted, 0, torch.where(due, gap, wait - 1))
        gap = torch.where(accepted, 1, torch.where(due, (2 * gap).clamp(max=max_gap), gap))
        return (z_next, u_next, record, wait, gap), z_next, residual

    z = initial_state(op, bias, z0)
    batch, device = bias[0].shape[0], bias[0].device
    record = torch.full((batch,), math.inf, dtype=bias[0].dtype, device=device)
    # an affine σ (the backward problem's quadratic) makes the first Newton point exact
    first = 0 if isinstance(prox, DiagonalQuadratic) else int(warmup)
    wait = torch.full((batch,), first, dtype=torch.int64, device=device)
    gap = torch.ones(batch, dtype=torch.int64, device=device)
    carry = (z, tuple(t.clone() for t in z), record, wait, gap)
    with torch.no_grad():  # W's parameters may require grad; the solve never needs a graph
        return iterate(step, carry, op=op, prox=prox, bias=bias, tol=tol, max_iter=max_iter,
                       start=start, resolvent=resolvent, exact=False, mask=mask)


def _check_options(check_step: str, linear_solver: str, warmup: int, reduction: float,
                   max_gap: int) -> None:
    if check_step not in ALPHA_CHECKS:
        raise InvalidSettingError(f"check_step must be one of {ALPHA_CHECKS}, got {check_step!r}")
    if linear_solver not in LINEAR_SOLVERS:
        raise InvalidSettingError(f"linear_solver must be one of {LINEAR_SOLVERS}, got {linear_solver!r}")
    if isinstance(warmup, bool) or int(warmup) != warmup or warmup < 0:
        raise InvalidSettingError(f"warmup must be a nonnegative integer, got {warmup}")
    if not 0 < reduction < 1:
        raise InvalidSettingError(f"reduction must be in (0, 1) for the safeguard to guarantee "
                                  f"convergence, got {reduction}")
    if isinstance(max_gap, bool) or int(max_gap) != max_gap or max_gap < 1:
        raise InvalidSettingError(f"max_gap must be a positive integer, got {max_gap}")


def _dense_matrix(op: LinearOperator, linear_solver: str) -> Tensor | None:
    """W as a detached matrix on flattened states when the Newton systems are solved directly."""
    if linear_solver == "krylov":
        return None
    if isinstance(op, DenseOperator):
        return op.weight.detach()
    if isinstance(op, TransposedOperator) and isinstance(op.op, DenseOperator):
        return op.op.weight.detach().T
    return op.as_matrix().detach() if linear_solver == "direct" else None


def _derivative(prox: Prox, v: State) -> State:
    """σ'(v) per tier (the backward problem's quadratic carries its diagonal per tier)."""
    if isinstance(prox, DiagonalQuadratic):
        return tuple(s.expand_as(t) for s, t in zip(prox.scale(1.0), v))
    return tuple(prox.derivative(t) for t in v)


class _DirectSolve:
    r""":math:`y = (I - DW)^{-1}D\tilde b` per sample by one batched LU.

    :math:`y_i = 0` wherever :math:`D_i = 0`, so only the rows and columns of
    :math:`\{i: D_i \ne 0\}` (ReLU's active set) enter: per sample
    :math:`(I - D_AW_{AA})y_A = D_A\tilde b_A`, padded with identity blocks to the batch's
    largest active set k, one LU of ``(batch, k, k)`` (ReLU typically keeps under half the
    units active: LU is cubic in k)."""

    def __init__(self, matrix: Tensor) -> None:
        self.matrix = matrix

    def __call__(self, d: State, rhs: State, rtol: Tensor) -> State:
        diag = flatten(d)
        b = diag * flatten(rhs)
        active = diag != 0
        counts = active.sum(dim=1)
        k = int(counts.max())
        if k == 0:
            return unflatten(torch.zeros_like(b), rhs)
        # the active indices of each sample first, in order (a stable sort of the 0/1 flags)
        order = torch.sort((~active).to(torch.uint8), dim=1, stable=True).indices[:, :k]
        valid = torch.arange(k, device=b.device) < counts.unsqueeze(1)
        both = valid.unsqueeze(2) & valid.unsqueeze(1)
        eye = torch.eye(k, dtype=b.dtype, device=b.device)
        block = self.matrix[order.unsqueeze(2), order.unsqueeze(1)]
        system = torch.where(both, eye - diag.gather(1, order).unsqueeze(2) * block, eye)
        # solve_ex: no singularity check (no host sync); I − D_A W_AA is never singular
        y = torch.linalg.solve_ex(system, torch.where(valid, b.gather(1, order), 0.0))[0]
        full = torch.zeros_like(b).scatter_add_(1, order, torch.where(valid, y, 0.0))
        return unflatten(full, rhs)


class _KrylovSolve:
    r"""GMRES on the linearised PR map :math:`(I - M)u = 2R(\alpha\tilde b)`, :math:`y = s \odot u`
    (module docstring)."""

    def __init__(self, resolvent: Resolvent, restart: int, max_iter: int) -> None:
        self.resolvent = resolvent
        self.restart = restart
        self.max_iter = max_iter

    def __call__(self, d: State, rhs: State, rtol: Tensor) -> State:
        alpha = self.resolvent.alpha
        s = tmap(lambda di: di / (di + alpha * (1 - di)), d)
        sign = tmap(lambda si: 2 * si - 1, s)

        def matvec(flat: Tensor) -> Tensor:
            q = tmap(torch.mul, sign, unflatten(flat, rhs))
            return flat + flatten(q) - 2 * flatten(self.resolvent.solve(q))

        t = flatten(self.resolvent.solve(tuple(alpha * r for r in rhs))).mul_(2)
        u, _ = gmres(matvec, t, rtol=rtol, restart=self.restart, max_iter=self.max_iter)
        return tmap(torch.mul, s, unflatten(u, rhs))
