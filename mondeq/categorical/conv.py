r"""Multi-tier convolutional hollow monotone couplings :math:`W = D - A^\top A`, variables in groups.

Tier t is a ``(C_t, H_t, W_t)`` feature map whose channels form :math:`G_t = C_t / k_t` variables of
:math:`k_t` values at every position (:mod:`mondeq.categorical.prox`). A is block lower triangular:
:math:`(Az)_i = \sum_{j \le i} K_{ij} * z_j`, each :math:`K_{ij}` a circular convolution with stride
:math:`s = H_j / H_i` (a kernel as large as tier j's grid is the paper's "full" map to the label).
Tap t of a stride-s kernel with circular padding p reads input position :math:`sq + t - p`, so the
taps that touch input position x are those with :math:`t \equiv x + p \pmod s`: the diagonal blocks

.. math:: D_j(x) = \sum_i \sum_{t \equiv x + p_{ij} \ (\mathrm{mod}\ s_{ij})} K_{ij}[:, g, t]^\top K_{ij}[:, g, t]

(restricted to each group g's :math:`k_j \times k_j` block) are periodic in x with period
:math:`P_j = \mathrm{lcm}_i\, s_{ij}`, and exact: :math:`W = D - A^\top A` is hollow including the
strided couplings. For a single stride-1 convolution D is one 1×1 operator and W stays
shift-invariant. The scaling is symmetric and per variable (:mod:`mondeq.categorical.dense`):
:math:`A \leftarrow AS` with S periodic like D, so :math:`I - W \succeq mI`.

The resolvent :math:`(I + \alpha(I - W))^{-1}` is exact by FFT when W is shift-invariant
(:mod:`mondeq.categorical.fourier`); otherwise this symmetric positive definite system is solved
by conjugate gradients preconditioned with its exact block diagonal :math:`(1 + \alpha)I - \alpha D`,
to a relative residual of 1e-12 (float64) or 1e-6 (float32): the methods' ``converged`` is still
confirmed on the true mean-field residual (:mod:`splitting.loop`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from splitting import LinearOperator, Resolvent, State
from splitting.operator import check_alpha, check_margin
from ..errors import InvalidSettingError
from .fourier import FourierResolvent, shift_invariant


class Coupling:
    """One block :math:`K_{ij}` of A: from tier ``j`` to tier ``i``, stride and circular padding."""

    def __init__(self, i: int, j: int, size: int, stride: int, padding: int) -> None:
        self.i, self.j, self.size, self.stride, self.padding = i, j, size, stride, padding

    def apply(self, z: Tensor, kernel: Tensor) -> Tensor:
        p = self.padding
        padded = nnf.pad(z, (p, p, p, p), mode="circular") if p else z
        return nnf.conv2d(padded, kernel, stride=self.stride)

    def apply_t(self, f: Tensor, kernel: Tensor, grid: tuple[int, int]) -> Tensor:
        """The exact adjoint: transposed convolution, then the circular padding folded back."""
        y = nnf.conv_transpose2d(f, kernel, stride=self.stride)
        for dim, n in ((2, grid[0]), (3, grid[1])):
            index = (torch.arange(y.shape[dim], device=y.device) - self.padding) % n
            shape = list(y.shape)
            shape[dim] = n
            y = y.new_zeros(shape).index_add(dim, index, y)
        return y

    def selection(self, period: int, dtype, device) -> Tensor:
        """``(period, size)``: 1 where tap t touches input phase x, t ≡ x + p (mod stride)."""
        x = torch.arange(period, device=device).unsqueeze(1)
        t = torch.arange(self.size, device=device).unsqueeze(0)
        return ((t - x - self.padding) % self.stride == 0).to(dtype)


class HollowConvOperator(LinearOperator):
    r""":math:`W = D - A^\top A` on multi-tier states (module docstring)."""

    def __init__(self, owner: "HollowMultiTier", kernels: Sequence[Tensor], scales: Sequence[Tensor],
                 blocks: Sequence[Tensor]) -> None:
        self.owner, self.kernels, self.scales, self.blocks = owner, list(kernels), list(scales), list(blocks)
        self.m = check_margin(owner.m)
        self.state_shape = owner.state_shape
        self._lipschitz: float | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.kernels[0].dtype

    @property
    def device(self) -> torch.device:
        return self.kernels[0].device

    def block_apply(self, z: State, blocks: Sequence[Tensor] | None = None) -> State:
        """Per-variable products with periodic ``(G, k, k, P, P)`` blocks (D by default)."""
        out = []
        for t, d in zip(z, self.blocks if blocks is None else blocks):
            n, (g, k, _, p, _) = t.shape[0], d.shape
            h, w = t.shape[2] // p, t.shape[3] // p
            x = t.reshape(n, g, k, h, p, w, p)
            out.append(torch.einsum("gabxy,ngbhxwy->ngahxwy", d, x).reshape(t.shape))
        return tuple(out)

    def mv(self, z: State) -> State:
        o = self.owner
        scaled = [t * s for t, s in zip(z, self.scales)]
        features: list[Tensor | None] = [None] * len(z)
        for c, kernel in zip(o.couplings, self.kernels):
            f = c.apply(scaled[c.j], kernel)
            features[c.i] = f if features[c.i] is None else features[c.i] + f
        back: list[Tensor | None] = [None] * len(z)
        for c, kernel in zip(o.couplings, self.kernels):
            y = c.apply_t(features[c.i], kernel, z[c.j].shape[2:])
            back[c.j] = y if back[c.j] is None else back[c.j] + y
        return tuple(d - b * s for d, b, s in zip(self.block_apply(z), back, self.scales))

    def rmv(self, z: State) -> State:
        return self.mv(z)  # W is symmetric

    def resolvent(self, alpha: float) -> Resolvent:
        """Exact per frequency when W is shift-invariant (:mod:`mondeq.categorical.fourier`), else
        preconditioned conjugate gradients."""
        alpha = check_alpha(alpha)
        return FourierResolvent(self, alpha) if shift_invariant(self.owner) else CGResolvent(self, alpha)

    def lipschitz(self) -> float:
        r""":math:`1 + \|A\|_2^2 \ge \|I - W\|_2`, with :math:`\|A\|_2 \le \|(\|K_{ij}\|)\|_F` and each
        :math:`\|K_{ij}\| \le \max s \cdot \sum_t \|K_{ij}[:, :, t]\|_2` (a tap is a shifted, sampled
        matrix)."""
        if self._lipschitz is None:
            top = max(float(s.detach().max()) for s in self.scales)
            total = 0.0
            for kernel in self.kernels:
                taps = kernel.detach().to(torch.float64).permute(2, 3, 0, 1)
                total += (top * float(torch.linalg.matrix_norm(taps, ord=2).sum())) ** 2
            self._lipschitz = 1.0 + total
        return self._lipschitz


class CGResolvent(Resolvent):
    r""":math:`((1 + \alpha)I - \alpha W)^{-1}` by block-Jacobi preconditioned conjugate gradients."""

    def __init__(self, op: HollowConvOperator, alpha: float) -> None:
        super().__init__(alpha)
        self.op = op
        self.rtol = 1e-12 if op.dtype == torch.float64 else 1e-6
        with torch.no_grad():
            self.inverse = []
            for d in op.blocks:
                eye = torch.eye(d.shape[1], dtype=d.dtype, device=d.device)
                m = (1.0 + alpha) * eye - alpha * d.detach().permute(0, 3, 4, 1, 2)
                self.inverse.append(torch.linalg.inv(m).permute(0, 3, 4, 1, 2).contiguous())
        self.iterations = 0

    def _matrix(self, x: State) -> State:
        wx = self.op.mv(x)
        return tuple((1.0 + self.alpha) * a - self.alpha * b for a, b in zip(x, wx))

    @torch.no_grad()
    def solve(self, r: State) -> State:
        x = self.op.block_apply(r, self.inverse)
        res = tuple(a - b for a, b in zip(r, self._matrix(x)))
        y = self.op.block_apply(res, self.inverse)
        p = y
        ry = _dot(res, y)
        target = (self.rtol * _norm(r)) ** 2
        for _ in range(500):
            if bool((_dot(res, res) <= target).all()):
                break
            self.iterations += 1
            mp = self._matrix(p)
            step = ry / _dot(p, mp).clamp_min(torch.finfo(ry.dtype).tiny)
            x = tuple(a + _b(step, a) * b for a, b in zip(x, p))
            res = tuple(a - _b(step, a) * b for a, b in zip(res, mp))
            y = self.op.block_apply(res, self.inverse)
            ry_new = _dot(res, y)
            p = tuple(a + _b(ry_new / ry.clamp_min(torch.finfo(ry.dtype).tiny), a) * b for a, b in zip(y, p))
            ry = ry_new
        return x

    def solve_t(self, r: State) -> State:
        return self.solve(r)


def _dot(a: State, b: State) -> Tensor:
    return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b))


def _norm(a: State) -> Tensor:
    return _dot(a, a).sqrt()


def _b(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *(1,) * (like.ndim - 1))


class HollowMultiTier(nn.Module):
    r"""Parameters of a multi-tier hollow monotone coupling (module docstring).

    Args:
        tiers: per tier ``(C, H, W, k)``: C channels in groups of k values on an H × W grid.
        kernels: ``(i, j, size)`` for each block of A from tier j to tier i ≤ ... (j ≤ i); stride
            H_j / H_i; ``size`` equal to tier j's grid gives the full map (to a 1 × 1 tier).
        m: monotonicity margin in (0, 1).
        scale, generator, dtype: of the initial draw.
    """

    def __init__(self, tiers: Sequence[tuple[int, int, int, int]], kernels: Sequence[tuple[int, int, int]],
                 *, m: float = 0.05, scale: float = 1.0, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not 0.0 < m < 1.0:
            raise InvalidSettingError(f"the hollow parametrisation needs a margin m in (0, 1), got {m}")
        self.tiers = tuple(tuple(int(x) for x in t) for t in tiers)
        self.m = float(m)
        self.couplings, self.weights = [], nn.ParameterList()
        for i, j, size in kernels:
            (ci, hi, wi, _), (cj, hj, wj, _) = self.tiers[i], self.tiers[j]
            if j > i or hj % hi or wj % wi or hj // hi != wj // wi or size > min(hj, wj):
                raise InvalidSettingError(f"kernel ({i}, {j}, {size}): need j ≤ i, tier {j}'s grid a "
                                          f"multiple of tier {i}'s, and size ≤ tier {j}'s grid")
            stride, pad = hj // hi, (size - 1) // 2
            if 2 * pad < size - stride or (hj + 2 * pad - size) // stride + 1 != hi:
                raise InvalidSettingError(f"kernel ({i}, {j}, {size}) with stride {stride} does not map "
                                          f"a {hj}×{wj} grid onto {hi}×{wi}; use an odd size")
            self.couplings.append(Coupling(i, j, size, stride, pad))
            fan = cj * size * size
            self.weights.append(nn.Parameter(scale * torch.randn(ci, cj, size, size, generator=generator, dtype=dtype) / fan ** 0.5))
        self.periods = []
        for j, (c, h, w, k) in enumerate(self.tiers):
            if c % k:
                raise InvalidSettingError(f"tier {j}: {c} channels are not groups of {k}")
            strides = [cp.stride for cp in self.couplings if cp.j == j] or [1]
            period = math.lcm(*strides)
            if h % period or w % period:
                raise InvalidSettingError(f"tier {j}'s grid {h}×{w} is not a multiple of its period {period}")
            self.periods.append(period)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(t[3] for t in self.tiers)

    @property
    def state_shape(self) -> tuple[tuple[int, ...], ...]:
        return tuple((c, h, w) for c, h, w, _ in self.tiers)

    def diagonal_blocks(self) -> list[Tensor]:
        """Unscaled D per tier, ``(G, k, k, P, P)`` (module docstring)."""
        blocks = []
        for j, (c, h, w, k) in enumerate(self.tiers):
            period = self.periods[j]
            d = self.weights[0].new_zeros(c // k, k, k, period, period)
            for cp, kernel in zip(self.couplings, self.weights):
                if cp.j != j:
                    continue
                grouped = kernel.reshape(kernel.shape[0], c // k, k, cp.size, cp.size)
                gram = torch.einsum("ogatu,ogbtu->gabtu", grouped, grouped)
                sel = cp.selection(period, d.dtype, d.device)
                d = d + torch.einsum("gabtu,xt,yu->gabxy", gram, sel, sel)
            blocks.append(d)
        return blocks

    def block_structure(self):
        r"""The exact structure (:mod:`mondeq.operators.structure`): one block,
        :math:`I - W` in the standard basis. A full kernel onto a 1 × 1 tier (the label) aliases
        every frequency of the tier it reads into that tier's one frequency, and the strided
        couplings chain every tier to it, so the alias groups of
        :mod:`mondeq.operators.multitier.structure` merge into one: no finer unitary block form
        exists. No input map (conditioning is by clamping), so :math:`U` has no columns. The
        dense matrix is formed only when a quantity asks for it (small models)."""
        from ..operators.structure import single_block

        op = self.operator()
        n = sum(c * h * w for c, h, w, _ in self.tiers)

        def identity_minus_w():
            w = op.as_matrix()
            return torch.eye(n, dtype=w.dtype, device=w.device) - w

        return single_block(self.m, op.kernels[0].new_zeros(n, 0), identity_minus_w=identity_minus_w)

    def operator(self) -> HollowConvOperator:
        """W from the current kernels (differentiable in them)."""
        scales, blocks = [], []
        for (c, h, w, k), d, period in zip(self.tiers, self.diagonal_blocks(), self.periods):
            top = torch.linalg.eigvalsh(d.permute(0, 3, 4, 1, 2))[..., -1]  # (G, P, P)
            s = torch.sqrt((1.0 - self.m) / torch.clamp(top, min=1.0 - self.m))
            blocks.append(d * (s * s)[:, None, None])
            scales.append(s.repeat_interleave(k, dim=0).repeat(1, h // period, w // period))
        return HollowConvOperator(self, list(self.weights), scales, blocks)
