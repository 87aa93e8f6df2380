r"""Batched restarted GMRES: one independent linear system per sample.

Solves :math:`A_i x_i = r_i` for every row ``i`` of a ``(batch, n)`` right-hand side, where the
matrix-free ``matvec`` maps row ``i`` through :math:`A_i` only (the Newton systems of
:mod:`splitting.newton`: each sample has its own active set). GMRES(k) (Saad & Schultz, "GMRES: a
generalized minimal residual algorithm for solving nonsymmetric linear systems", SIAM J. Sci.
Stat. Comput. 7(3), 1986) builds per sample the Arnoldi relation :math:`AV_j = V_{j+1}\bar H_j`
and takes

.. math:: x = x_0 + V_j y,\qquad y = \arg\min_y \|\beta e_1 - \bar H_j y\|,\quad \beta = \|r - Ax_0\|,

whose residual norm :math:`|g_{j+1}|` comes from the Givens rotations that triangularise
:math:`\bar H_j` without another product. Orthogonalisation is classical Gram-Schmidt run twice
(CGS2: two batched products per step, as accurate as modified Gram-Schmidt). If every
eigenvalue of :math:`A_i` lies in the disc :math:`|\lambda - 1| \le \rho < 1` (the linearised
Peaceman-Rachford map of :mod:`splitting.newton`), the residual falls at least like
:math:`\rho^j` (Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., Cor. 6.33 with a
normal matrix; in general up to the conditioning of the eigenvectors).

Each sample stops at the first step where its residual estimate meets its own tolerance, and its
solution is built from exactly those steps, so a sample's answer does not depend on its batch
mates (they only share the cap ``max_iter`` and the restart length).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .errors import InvalidSettingError


def gmres(matvec: Callable[[Tensor], Tensor], rhs: Tensor, *, rtol: Tensor | float,
          restart: int = 30, max_iter: int = 120) -> tuple[Tensor, Tensor]:
    r"""Solve :math:`A_i x_i = r_i` per row to :math:`\|r_i - A_i x_i\| \le \mathrm{rtol}_i\|r_i\|`.

    Args:
        matvec: ``(batch, n) -> (batch, n)``, row i through :math:`A_i` (rows independent).
        rhs: the right-hand sides, ``(batch, n)``.
        rtol: relative tolerance, a float or a per-sample tensor ``(batch,)``.
        restart: Krylov dimension before a restart (memory: ``restart + 1`` vectors per sample).
        max_iter: cap on the number of products with A (restarts included).

    Returns:
        ``(x, residual)``: the solutions (zero start) and each sample's relative residual as GMRES
        estimates it (NaN rows, from a non-finite ``matvec``, never meet the tolerance).
    """
    if int(restart) != restart or restart < 1:
        raise InvalidSettingError(f"GMRES restart length must be a positive integer, got {restart}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise InvalidSettingError(f"GMRES max_iter must be a positive integer, got {max_iter}")
    batch, n = rhs.shape
    tiny = torch.finfo(rhs.dtype).tiny
    rhs_norm = torch.linalg.vector_norm(rhs, dim=1)
    target = rtol * rhs_norm
    x = torch.zeros_like(rhs)
    residual, beta = rhs, rhs_norm
    finished = beta <= target  # a sample stops for good once it has met its tolerance
    used = 0
    while True:
        k = min(int(restart), int(max_iter) - used)
        if k <= 0 or bool(finished.all()):
            break
        step, gamma, basis, count = _cycle(matvec, residual, beta, target, finished, k, tiny)
        used += step
        x = x + _update(step, gamma, basis, count)
        finished = finished | (count < step) | (gamma <= target)  # met its tolerance in this cycle
        beta = gamma
        if used < max_iter and not bool(finished.all()):
            residual = rhs - matvec(x)  # a restart needs the true residual
            beta = torch.where(finished, beta, torch.linalg.vector_norm(residual, dim=1))
            finished = finished | (beta <= target)
    return x, beta / rhs_norm.clamp_min(tiny)


def _cycle(matvec, residual: Tensor, beta: Tensor, target: Tensor, finished: Tensor, k: int,
           tiny: float):
    """Up to ``k`` Arnoldi steps from ``residual``. Returns the steps taken, each sample's final
    residual estimate, the rotated system and basis (packed) and each sample's step count.

    The Givens rotations are accumulated in one orthogonal matrix Q per sample (two rows change
    per step), so a step costs a fixed number of batched operations whatever its index."""
    batch, n = residual.shape
    device = residual.device
    basis = residual.new_zeros(batch, k + 1, n)
    basis[:, 0] = residual / beta.clamp_min(tiny).unsqueeze(1)
    upper = residual.new_zeros(batch, k, k)
    rotations = torch.eye(k + 1, dtype=residual.dtype, device=device).repeat(batch, 1, 1)
    active = ~finished
    count = torch.zeros(batch, dtype=torch.int64, device=device)
    gamma = beta.clone()
    step = 0
    for j in range(k):
        w = matvec(basis[:, j])
        v = basis[:, : j + 1]
        h = _project(v, w)                               # classical Gram-Schmidt ...
        w = w - _combine(v, h)
        h2 = _project(v, w)                              # ... twice (CGS2)
        w = w - _combine(v, h2)
        norm = torch.linalg.vector_norm(w, dim=1)
        # a (lucky) breakdown leaves a zero vector, never a non-finite one
        basis[:, j + 1] = torch.where((norm > tiny).unsqueeze(1), w / norm.clamp_min(tiny).unsqueeze(1), 0.0)
        q = rotations[:, : j + 2, : j + 2]
        column = (q[:, :, : j + 1] * (h + h2).unsqueeze(1)).sum(dim=2)  # earlier rotations
        a, b = column[:, j], norm                        # q's last row is e_{j+1} so far
        radius = torch.hypot(a, b)
        safe = radius > tiny
        c = torch.where(safe, a / radius.clamp_min(tiny), 1.0).unsqueeze(1)
        s = torch.where(safe, b / radius.clamp_min(tiny), 0.0).unsqueeze(1)
        row_j, row_next = q[:, j].clone(), q[:, j + 1].clone()
        q[:, j], q[:, j + 1] = c * row_j + s * row_next, c * row_next - s * row_j
        column[:, j] = torch.where(safe, radius, a)
        upper[:, : j + 1, j] = column[:, : j + 1]
        step = j + 1
        gamma = torch.where(active, beta * rotations[:, j + 1, 0].abs(), gamma)
        count = torch.where(active, step, count)
        active = active & ~(gamma <= target)
        if not bool(active.any()):
            break
    g = beta.unsqueeze(1) * rotations[:, :k, 0]
    return step, gamma, (upper, g, basis), count


def _project(v: Tensor, w: Tensor) -> Tensor:
    """Per sample the inner products of w with the rows of v: ``(batch, j)``."""
    if v.shape[2] >= 2048:  # long vectors: one GEMV per sample is efficient
        return torch.bmm(v, w.unsqueeze(2)).squeeze(2)
    return (v * w.unsqueeze(1)).sum(dim=2)  # short ones: CPU bmm would loop over the batch


def _combine(v: Tensor, h: Tensor) -> Tensor:
    """Per sample the combination of the rows of v with weights h: ``(batch, n)``."""
    if v.shape[2] >= 2048:
        return torch.bmm(h.unsqueeze(1), v).squeeze(1)
    return (h.unsqueeze(2) * v).sum(dim=1)


def _update(step: int, gamma: Tensor, packed, count: Tensor) -> Tensor:
    r""":math:`V y` with :math:`y` solving each sample's first ``count`` rotated equations (the
    rest of its triangle is replaced by the identity and a zero right-hand side, so :math:`y`
    is zero there)."""
    upper, g, basis = packed
    upper, g, basis = upper[:, :step, :step], g[:, :step], basis[:, :step]
    index = torch.arange(step, device=count.device)
    keep = index.unsqueeze(0) < count.unsqueeze(1)                       # (batch, step)
    both = keep.unsqueeze(2) & keep.unsqueeze(1)
    eye = torch.eye(step, dtype=upper.dtype, device=upper.device)
    upper = torch.where(both, upper, eye)
    y = torch.linalg.solve_triangular(upper, torch.where(keep, g, 0.0).unsqueeze(2), upper=True)
    return _combine(basis, y.squeeze(2))
