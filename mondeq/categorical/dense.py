r"""Dense hollow monotone couplings :math:`W = D - A^\top A` for categorical variables.

For any linear map A (here an ``r × n`` matrix on the flattened state), let
:math:`D = \mathrm{blkdiag}(A^\top A)` keep the diagonal blocks of :math:`A^\top A`, one
:math:`k_i \times k_i` Gram block :math:`A_i^\top A_i` per variable (``A_i``: A's columns of variable i).
Then :math:`W = D - A^\top A` is symmetric, its diagonal blocks are exactly zero (a variable does
not couple to itself; different variables still do), and

.. math:: I - W = (I - D) + A^\top A \succeq (1 - \|D\|_2)\,I \succeq m I
          \quad\text{once } \|D\|_2 = \max_i \lambda_{\max}(A_i^\top A_i) \le 1 - m.

The scaling is symmetric, per variable: :math:`A \leftarrow A S` with
:math:`S = \mathrm{blkdiag}(s_i I)`, :math:`s_i = \sqrt{(1 - m) / \max(\lambda_{\max}(A_i^\top A_i), 1 - m)}`,
so :math:`W \leftarrow SWS` stays exactly symmetric and hollow (scaling rows alone would not).

The resolvent :math:`(I + \alpha(I - W))^{-1} = (B + \alpha A^\top A)^{-1}`,
:math:`B = (1 + \alpha)I - \alpha D` block diagonal and positive definite, is exact by Woodbury:
:math:`B^{-1} - B^{-1}A^\top(I/\alpha + AB^{-1}A^\top)^{-1}AB^{-1}`, one ``r × r`` Cholesky factor.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from splitting import LinearOperator, Resolvent, State
from splitting.operator import check_alpha, check_margin
from ..errors import InvalidSettingError


def scaled_blocks(a: Tensor, m: float) -> tuple[Tensor, Tensor]:
    r"""Per-variable symmetric scaling of the columns of ``a`` (``r × V × k``).

    Returns:
        ``(a S, D)``: the scaled columns and the Gram blocks :math:`s_i^2 A_i^\top A_i`
        (``V × k × k``), each of spectral norm ≤ 1 − m.
    """
    gram = torch.einsum("rva,rvb->vab", a, a)
    top = torch.linalg.eigvalsh(gram)[:, -1]
    scale = torch.sqrt((1.0 - m) / torch.clamp(top, min=1.0 - m))
    return a * scale[None, :, None], gram * (scale * scale)[:, None, None]


class HollowDenseOperator(LinearOperator):
    r""":math:`W = D - A^\top A` on states of dense tiers ``(B, V_t k_t)`` (module docstring).

    Args:
        a: the scaled map, ``r × n`` with n = Σ V_t k_t (columns in tier order).
        blocks: per tier, the ``V_t × k_t × k_t`` diagonal blocks D (each of norm ≤ 1 − m).
        m: the monotonicity margin.
    """

    def __init__(self, a: Tensor, blocks: Sequence[Tensor], m: float) -> None:
        self.a = a
        self.blocks = tuple(blocks)
        self.m = check_margin(m)
        self.state_shape = tuple((b.shape[0] * b.shape[1],) for b in self.blocks)
        if a.shape[1] != sum(s[0] for s in self.state_shape):
            raise InvalidSettingError(f"A has {a.shape[1]} columns, the tiers {self.state_shape}")
        self._lipschitz: float | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.a.dtype

    @property
    def device(self) -> torch.device:
        return self.a.device

    def split(self, x: Tensor) -> State:
        """The flat ``(B, n)`` matrix as a state."""
        return tuple(torch.split(x, [s[0] for s in self.state_shape], dim=1))

    def block_apply(self, z: State, blocks: Sequence[Tensor] | None = None) -> State:
        """Block-diagonal product, per variable (D by default)."""
        blocks = self.blocks if blocks is None else blocks
        return tuple(torch.einsum("vab,nvb->nva", d, t.view(t.shape[0], d.shape[0], d.shape[1])).reshape(t.shape)
                     for d, t in zip(blocks, z))

    def mv(self, z: State) -> State:
        x = torch.cat(z, dim=1) if len(z) > 1 else z[0]
        low_rank = self.split((x @ self.a.T) @ self.a)
        return tuple(d - g for d, g in zip(self.block_apply(z), low_rank))

    def rmv(self, z: State) -> State:
        return self.mv(z)  # W is symmetric

    def resolvent(self, alpha: float) -> Resolvent:
        return WoodburyResolvent(self, check_alpha(alpha))

    def lipschitz(self) -> float:
        r""":math:`\|I - W\|_2 \le 1 + \|A\|_2^2` (I − W = (I − D) + AᵀA with 0 ⪯ D)."""
        if self._lipschitz is None:
            a = self.a.detach().to(torch.float64)
            self._lipschitz = 1.0 + float(torch.linalg.matrix_norm(a, ord=2)) ** 2 if bool(
                torch.isfinite(a).all()) else float("inf")
        return self._lipschitz

    def as_matrix(self) -> Tensor:
        a = self.a
        w = -(a.T @ a)
        start = 0
        for d in self.blocks:
            for i in range(d.shape[0]):
                k = d.shape[1]
                w[start:start + k, start:start + k] += d[i]
                start += k
        return w


class WoodburyResolvent(Resolvent):
    r"""Exact :math:`(I + \alpha(I - W))^{-1}` by Woodbury (module docstring); symmetric, so
    ``solve_t`` is ``solve``."""

    def __init__(self, op: HollowDenseOperator, alpha: float) -> None:
        super().__init__(alpha)
        self.op = op
        with torch.no_grad():
            a = op.a.detach()
            self.inverse_blocks = []
            for d in op.blocks:
                eye = torch.eye(d.shape[1], dtype=d.dtype, device=d.device)
                self.inverse_blocks.append(torch.linalg.inv((1.0 + alpha) * eye - alpha * d.detach()))
            self.binv_at = torch.cat(op.block_apply(op.split(a), self.inverse_blocks), dim=1)  # (B⁻¹Aᵀ)ᵀ = AB⁻¹
            inner = a @ self.binv_at.T
            inner.diagonal().add_(1.0 / alpha)
            self.cholesky = torch.linalg.cholesky(inner)

    def solve(self, r: State) -> State:
        y = self.op.block_apply(r, self.inverse_blocks)
        x = torch.cat(r, dim=1) if len(r) > 1 else r[0]
        coef = torch.cholesky_solve((x @ self.binv_at.T).T, self.cholesky).T
        correction = self.op.split(coef @ self.binv_at)
        return tuple(yi - ci for yi, ci in zip(y, correction))

    def solve_t(self, r: State) -> State:
        return self.solve(r)


class HollowDense(nn.Module):
    r"""Parameters of a dense hollow monotone coupling: one free matrix A (``rank × n``).

    Args:
        tiers: per tier ``(V_t, k_t)``: V_t variables with k_t values each.
        rank: rows of A (the number of features through which variables couple).
        m: monotonicity margin in (0, 1).
        scale: standard deviation of A's initial entries (before the scaling to ‖D‖ ≤ 1 − m).
        generator, dtype: of the initial draw (default dtype: torch's default).
    """

    def __init__(self, tiers: Sequence[tuple[int, int]], *, rank: int, m: float = 0.05,
                 scale: float = 1.0, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not 0.0 < m < 1.0:
            raise InvalidSettingError(f"the hollow parametrisation needs a margin m in (0, 1), got {m}")
        self.tiers = tuple((int(v), int(k)) for v, k in tiers)
        self.m = float(m)
        n = sum(v * k for v, k in self.tiers)
        self.a = nn.Parameter(scale * torch.randn(int(rank), n, generator=generator, dtype=dtype) / n ** 0.5)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Values per variable, per tier."""
        return tuple(k for _, k in self.tiers)

    @property
    def state_shape(self) -> tuple[tuple[int, ...], ...]:
        return tuple((v * k,) for v, k in self.tiers)

    def block_structure(self):
        r"""The exact structure (:mod:`mondeq.operators.structure`): one block,
        :math:`I - W = (I - D) + A^\top A` in the standard basis; no input map (conditioning is by
        clamping), so :math:`U` has no columns."""
        from ..operators.structure import single_block

        w = self.operator().as_matrix()
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        return single_block(self.m, w.new_zeros(w.shape[0], 0), identity_minus_w=eye - w)

    def operator(self) -> HollowDenseOperator:
        """W built from the current A (differentiable in A)."""
        columns, blocks, start = [], [], 0
        for v, k in self.tiers:
            a_scaled, d = scaled_blocks(self.a[:, start:start + v * k].reshape(-1, v, k), self.m)
            columns.append(a_scaled.reshape(a_scaled.shape[0], v * k))
            blocks.append(d)
            start += v * k
        return HollowDenseOperator(torch.cat(columns, dim=1), blocks, self.m)
