r"""Stride-2 coupling between tiers in the Fourier domain: which fine frequencies alias onto a coarse one.

**Aliasing.** Let :math:`D` keep the even rows and columns of an ``H × W`` image (H, W even).
In the orthonormal 2-D DFT (``norm="ortho"``), a coarse frequency :math:`\omega'` of the
``H/2 × W/2`` grid receives the four fine frequencies that alias onto it,

.. math:: \widehat{Dx}(\omega') = \tfrac12 \sum_{s,t\in\{0,1\}} \hat x(\omega' + (sH/2, tW/2)),
          \qquad \widehat{D^\top y}(\omega' + (sH/2, tW/2)) = \tfrac12\,\hat y(\omega'),

so a stride-2 convolution :math:`S = DC` is, per coarse frequency, the ``c' × 4c`` block
:math:`L(\omega') = \tfrac12[\hat C(\omega_1) \cdots \hat C(\omega_4)]`. With the rfft2 half
spectrum (columns ``0 … W/2``), a fine frequency whose column lies past ``W/2`` is read as the
complex conjugate of its mirror :math:`-\omega` (real signals and kernels have Hermitian
spectra). :class:`AliasMap` stores, for every coarse half-spectrum frequency and every one of its
four aliases, the half-spectrum index and whether to conjugate (:meth:`AliasMap.fold`), and for
every fine half-spectrum frequency the coarse frequency it belongs to (:meth:`AliasMap.unfold`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...errors import InvalidSettingError
from ..autodiff import is_transformed


class AliasMap:
    r"""Index maps between the half spectra of an ``H × W`` tier and its ``H/2 × W/2`` successor.

    Attributes:
        fold_index, fold_conj: ``(Hc·(Wc//2+1), 4)``: for coarse frequency :math:`\omega'` and
            alias ``j = 2s + t``, the fine half-spectrum index holding
            :math:`\hat x(\omega' + (sH/2, tW/2))`, conjugated where ``fold_conj`` is set.
        unfold_index, unfold_conj: ``(H·(W//2+1),)``: the coarse half-spectrum frequency each fine
            frequency aliases onto (through its mirror, conjugated, where ``unfold_conj``).
    """

    def __init__(self, size: tuple[int, int], device: torch.device | None = None) -> None:
        h, w = size
        if h % 2 or w % 2:
            raise InvalidSettingError(f"a stride-2 map needs an even grid, got {size}")
        hc, wc = h // 2, w // 2
        wh, wch = w // 2 + 1, wc // 2 + 1
        kc = torch.arange(hc).view(-1, 1).expand(hc, wch)
        lc = torch.arange(wch).view(1, -1).expand(hc, wch)
        index, conj = [], []
        for s in (0, 1):
            for t in (0, 1):
                kf, lf = kc + s * hc, lc + t * wc
                mirror = lf > w // 2
                index.append(torch.where(mirror, ((-kf) % h) * wh + (w - lf), kf * wh + lf).reshape(-1))
                conj.append(mirror.reshape(-1))
        self.fold_index = torch.stack(index, 1).to(device)
        self.fold_conj = torch.stack(conj, 1).to(device)
        k = torch.arange(h).view(-1, 1).expand(h, wh)
        lf = torch.arange(wh).view(1, -1).expand(h, wh)
        mirror = (lf % wc) > wc // 2
        direct = (k % hc) * wch + lf % wc
        flipped = ((-k) % hc) * wch + (-lf) % wc
        self.unfold_index = torch.where(mirror, flipped, direct).reshape(-1).to(device)
        self.unfold_conj = mirror.reshape(-1).to(device)
        self.coarse_frequencies = nc = hc * wch
        # slot-major layout (4, nc): alias j of every coarse frequency is one contiguous block
        self.slot_index = self.fold_index.T.reshape(-1)
        self.slot_conj = self.fold_conj.T.reshape(-1)
        k_src = torch.where(mirror, (-k) % h, k)
        l_src = torch.where(mirror, (-lf) % w, lf)
        slot = 2 * (k_src // hc) + l_src // wc
        self.from_slots_index = (slot * nc + torch.where(mirror, flipped, direct)).reshape(-1).to(device)
        self.from_slots_conj = self.unfold_conj
        self._signs: dict[tuple[str, torch.dtype], Tensor] = {}

    def fold(self, x: Tensor) -> Tensor:
        """Fine half-spectrum tensor ``(nf, ...)`` → its four aliases ``(nf_coarse, 4, ...)``."""
        out = _conj_where(x.index_select(0, self.fold_index.reshape(-1)), self.fold_conj.reshape(-1))
        return out.reshape(self.coarse_frequencies, 4, *x.shape[1:])

    def fold_sum(self, x: Tensor) -> Tensor:
        r""":math:`\sum_j x(\omega_j)` over the four aliases of every coarse frequency."""
        return self.fold(x).sum(1)

    def unfold(self, y: Tensor) -> Tensor:
        r"""Coarse ``(nf_coarse, ...)`` → fine ``(nf, ...)``: every alias gets :math:`y(\omega')`."""
        return self._gather(y, "unfold")

    def slots(self, x: Tensor) -> Tensor:
        """Like :meth:`fold`, alias-major: ``(4, nf_coarse, ...)``, each alias contiguous."""
        return self._gather(x, "slot").reshape(4, self.coarse_frequencies, *x.shape[1:])

    def from_slots(self, v: Tensor) -> Tensor:
        """Per-alias values ``(4, nf_coarse, ...)`` → the fine half spectrum ``(nf, ...)``."""
        return self._gather(v.reshape(-1, *v.shape[2:]), "from_slots")

    def _gather(self, x: Tensor, which: str) -> Tensor:
        index = getattr(self, which + "_index")
        out = x.index_select(0, index)
        if out.requires_grad or is_transformed(out):
            return _conj_where(out, getattr(self, which + "_conj"))
        key = (which, out.real.dtype)
        if key not in self._signs:
            self._signs[key] = (1.0 - 2.0 * getattr(self, which + "_conj").to(out.real.dtype)).view(-1)
        imag = torch.view_as_real(out)[..., 1]
        imag.mul_(self._signs[key].view(-1, *(1,) * (imag.ndim - 1)))
        return out


def _conj_where(x: Tensor, mask: Tensor) -> Tensor:
    """Conjugate the rows of a freshly gathered complex tensor where ``mask`` is set."""
    if x.requires_grad or is_transformed(x):  # out of place: every autograd mode sees plain ops
        sign = torch.stack([torch.ones_like(mask, dtype=x.real.dtype), 1.0 - 2.0 * mask.to(x.real.dtype)], -1)
        return torch.view_as_complex(torch.view_as_real(x) * sign.view(-1, *(1,) * (x.ndim - 1), 2))
    imag = torch.view_as_real(x)[..., 1]
    sign = 1.0 - 2.0 * mask.to(imag.dtype)
    imag.mul_(sign.view(-1, *(1,) * (imag.ndim - 1)))
    return x
