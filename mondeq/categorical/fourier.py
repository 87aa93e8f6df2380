r"""The exact FFT resolvent of a shift-invariant hollow convolutional coupling.

When every block of A is a stride-1 circular convolution on one grid (a single convolution, or
several tiers at one resolution), every diagonal block D is one 1 × 1 operator (period 1) and the
per-variable scaling S is one number per channel, so :math:`W = D - S A^\top A S` commutes with
shifts. Under the 2-D DFT it is one :math:`C \times C` block per frequency ω,

.. math:: \hat W(\omega) = D - S\hat A(\omega)^H \hat A(\omega) S,\qquad
          \hat A(\omega) = \sum_t K_t\, e^{\,i\omega\cdot(t - p)}

(tap t of a cross-correlation padded by p reads position q + t − p), and
:math:`(I + \alpha(I - W))^{-1}` is one small Hermitian solve per frequency of the rfft2 half
spectrum: factorised once per solve, applied with one batched product.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from splitting import Resolvent, State


def shift_invariant(owner) -> bool:
    """Whether every coupling of a :class:`~mondeq.categorical.conv.HollowMultiTier` is a stride-1
    convolution and all tiers share one grid."""
    grids = {tuple(t[1:3]) for t in owner.tiers}
    return len(grids) == 1 and all(c.stride == 1 for c in owner.couplings)


def _symbol(kernel: Tensor, padding: int, grid: tuple[int, int]) -> Tensor:
    """:math:`\\hat K(\\omega)` on the rfft2 half spectrum, ``(H, W//2 + 1, C_out, C_in)``."""
    h, w = grid
    size = kernel.shape[-1]
    taps = torch.arange(size, dtype=torch.float64, device=kernel.device) - padding
    fh = torch.arange(h, dtype=torch.float64, device=kernel.device) * (2 * math.pi / h)
    fw = torch.arange(w // 2 + 1, dtype=torch.float64, device=kernel.device) * (2 * math.pi / w)
    ph = torch.exp(1j * fh[:, None] * taps[None, :])  # (H, size)
    pw = torch.exp(1j * fw[:, None] * taps[None, :])  # (W', size)
    k = kernel.detach().to(torch.complex128)
    return torch.einsum("at,bu,oitu->aboi", ph, pw, k)


class FourierResolvent(Resolvent):
    r""":math:`((1 + \alpha)I - \alpha W)^{-1}` per frequency (module docstring); W is symmetric,
    so ``solve_t`` is ``solve``."""

    def __init__(self, op, alpha: float) -> None:
        super().__init__(alpha)
        owner = op.owner
        self.channels = [t[0] for t in owner.tiers]
        self.grid = tuple(owner.tiers[0][1:3])
        self.dtype = op.dtype
        offsets = [0]
        for c in self.channels:
            offsets.append(offsets[-1] + c)
        n = offsets[-1]
        h, w = self.grid
        with torch.no_grad():
            a_hat = torch.zeros(h, w // 2 + 1, n, n, dtype=torch.complex128, device=op.device)
            for c, kernel in zip(owner.couplings, op.kernels):
                a_hat[..., offsets[c.i]:offsets[c.i + 1], offsets[c.j]:offsets[c.j + 1]] += _symbol(
                    kernel, c.padding, self.grid)
            scale = torch.cat([s[:, 0, 0] for s in op.scales]).detach().to(torch.complex128)
            a_hat = a_hat * scale
            d = torch.zeros(n, n, dtype=torch.complex128, device=op.device)
            for tier, block in enumerate(op.blocks):
                g, k = block.shape[0], block.shape[1]
                for group in range(g):
                    start = offsets[tier] + group * k
                    d[start:start + k, start:start + k] = block[group, :, :, 0, 0].detach()
            w_hat = d - a_hat.mH @ a_hat
            eye = torch.eye(n, dtype=torch.complex128, device=op.device)
            matrix = (1.0 + alpha) * eye - alpha * w_hat
            self.inverse = torch.linalg.inv(matrix).to(torch.complex128 if self.dtype == torch.float64
                                                       else torch.complex64)

    def solve(self, r: State) -> State:
        x = torch.cat(r, dim=1) if len(r) > 1 else r[0]
        spectrum = torch.fft.rfft2(x)  # (B, C, H, W')
        solved = torch.einsum("abij,njab->niab", self.inverse, spectrum.to(self.inverse.dtype))
        out = torch.fft.irfft2(solved, s=self.grid).to(self.dtype)
        return tuple(torch.split(out, self.channels, dim=1))

    def solve_t(self, r: State) -> State:
        return self.solve(r)
