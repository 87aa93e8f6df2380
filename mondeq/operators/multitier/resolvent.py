r"""The exact multi-tier resolvent :math:`(I + \alpha(I - W))^{-1}` (stride-2 aliasing in
:mod:`mondeq.operators.multitier.aliasing`).

**The resolvent.** With tiers :math:`i = 0 … T-1`, :math:`M = I + \alpha(I - W) = (1 + \alpha m)I
+ \alpha F^\top F + \alpha(G - G^\top)` is block tridiagonal over the tiers (F is block lower
bidiagonal with :math:`F_{ii} = A_i`, :math:`F_{i+1,i} = S_i`; G is block diagonal):

.. math:: M_{ii} = K_i + \alpha L_i^H L_i,\quad K_i = (1+\alpha m)I + \alpha(\hat A_i^H\hat A_i
          + \hat G_i - \hat G_i^H),\quad M_{i+1,i} = \alpha \hat A_{i+1}^H L_i = M_{i,i+1}^H.

:math:`K_i` is one ``c_i × c_i`` block per frequency; :math:`L_i^H L_i` couples the four aliases.
Block elimination from the finest tier keeps this form. With :math:`K'_0 = K_0` and

.. math:: P_i = L_i K_i'^{-1} L_i^H,\quad Z_i = (\alpha^{-1} I + P_i)^{-1},\quad
          K'_{i+1} = K_{i+1} - \alpha \hat A_{i+1}^H P_i Z_i \hat A_{i+1}

(Woodbury: :math:`L_i (K'_i + \alpha L_i^H L_i)^{-1} = \alpha^{-1} Z_i L_i K_i'^{-1}` and
:math:`(K'_i + \alpha L_i^H L_i)^{-1} L_i^H = \alpha^{-1} K_i'^{-1} L_i^H Z_i`), the solve of
:math:`Mx = r` is a forward sweep

.. math:: b_i = K_i'^{-1} y_i,\quad w_i = L_i K_i'^{-1} y_i,\quad
          y_{i+1} = r_{i+1} - \hat A_{i+1}^H Z_i w_i\qquad (y_0 = r_0)

then :math:`x_{T-1} = K_{T-1}'^{-1} y_{T-1}` and a backward sweep
:math:`x_i = b_i - K_i'^{-1} L_i^H (Z_i w_i + Z_i \hat A_{i+1} x_{i+1})`. Every factor is a
``c × c`` (or ``c' × c``) block per frequency, inverted in batched calls: the factorisation costs
one batched inverse of the :math:`K'_i` and :math:`Z_i` per tier, and one application costs about
five block products on the finest tier. The transposed system :math:`M^\top` has the conjugate
transposed blocks (G's skew part changes sign, :math:`F^\top F` does not), and its Schur factors
are the conjugate transposes of these: :meth:`MultiTierResolvent.solve_t` reuses them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from splitting import Resolvent, State

from ..fft import irfft2_blocks, rfft2_blocks
from .aliasing import AliasMap


class MultiTierResolvent(Resolvent):
    r"""Exact :math:`(I + \alpha(I - W))^{-1}` of a multi-tier convolutional W (module docstring).

    Args:
        a_hat, g_hat: per tier, the spectra of A_i and G_i on that tier's grid, ``(nf_i, c_i, c_i)``.
        c_hat: per non-last tier, the spectrum of the stride-2 map's convolution C_i (on tier
            i's grid), ``(nf_i, c_{i+1}, c_i)``.
        maps: per non-last tier, its :class:`AliasMap`.
        sizes: grid size of every tier.
        m, alpha: margin and step.

    All inputs are detached. Factors are stored in row layout (samples are rows of the spectrum,
    so a block X is applied as ``v @ Xᵀ``); :meth:`solve_t` uses their conjugates.
    """

    def __init__(self, a_hat: list[Tensor], g_hat: list[Tensor], c_hat: list[Tensor],
                 maps: list[AliasMap], sizes: list[tuple[int, int]], m: float, alpha: float) -> None:
        super().__init__(alpha)
        self.maps = maps
        self.sizes = sizes
        tiers = len(a_hat)
        correction = None
        self._fwd: list[dict[str, Tensor]] = []
        for i in range(tiers):
            a, g = a_hat[i], g_hat[i]
            eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            k = (1.0 + alpha * m) * eye + alpha * (a.mH @ a + g - g.mH)
            if correction is not None:
                k = k - correction
            k_inv = _inverse(k)
            if i == tiers - 1:
                self._fwd.append({"b": k_inv.mT.contiguous()})
                break
            half_c = 0.5 * c_hat[i]
            e = half_c @ k_inv                     # L K'⁻¹, per fine frequency
            f = k_inv @ half_c.mH                  # K'⁻¹ Lᴴ
            p = maps[i].fold_sum(e @ half_c.mH)    # P = L K'⁻¹ Lᴴ, per coarse frequency
            eye_c = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
            z = _inverse(eye_c / alpha + p)
            a_next = a_hat[i + 1]
            gz = a_next.mH @ z                     # Âᴴ Z
            hz = z @ a_next                        # Z Â
            correction = alpha * (a_next.mH @ p @ hz)
            self._fwd.append({
                "b": k_inv.mT.contiguous(),            # y ↦ K'⁻¹y
                "e": maps[i].slots(e.mT),              # per alias: y ↦ ½Ĉ K'⁻¹y (summed: L K'⁻¹y)
                "f": maps[i].slots(f.mT),              # per alias: q ↦ K'⁻¹ ½Ĉᴴ q
                "az": gz.mT.contiguous(),              # w ↦ ÂᴴZw
                "z": z.mT.contiguous(),                # w ↦ Zw
                "hz": hz.mT.contiguous(),              # x ↦ ZÂx
            })
        self._adj: list[dict[str, Tensor]] | None = None

    def _adjoint_factors(self) -> list[dict[str, Tensor]]:
        # Mᵀ's factors are the conjugate transposes: B → Bᴴ, (E, F) → (Fᴴ, Eᴴ), (ÂᴴZ, ZÂ) →
        # ((ZÂ)ᴴ, (ÂᴴZ)ᴴ), Z → Zᴴ. In row layout Xᴴ is applied as v @ conj(Xᵀ).
        if self._adj is None:
            adj = []
            for fwd in self._fwd:
                if "e" not in fwd:
                    adj.append({"b": _conj(fwd["b"].mT)})
                    continue
                adj.append({
                    "b": _conj(fwd["b"].mT),
                    "e": _conj(fwd["f"].mT),           # alias layout commutes with ᵀ and conj
                    "f": _conj(fwd["e"].mT),
                    "az": _conj(fwd["hz"].mT),
                    "z": _conj(fwd["z"].mT),
                    "hz": _conj(fwd["az"].mT),
                })
            self._adj = adj
        return self._adj

    def solve(self, r: State) -> State:
        return self._sweep(r, self._fwd)

    def solve_t(self, r: State) -> State:
        return self._sweep(r, self._adjoint_factors())

    def _sweep(self, r: State, factors: list[dict[str, Tensor]]) -> State:
        tiers = len(factors)
        y = rfft2_blocks(r[0].detach(), norm="ortho")
        kept: list[tuple[Tensor, Tensor]] = []
        for i in range(tiers - 1):
            fac = factors[i]
            y_slots, e = self.maps[i].slots(y), fac["e"]
            w = torch.bmm(y_slots[0], e[0])
            for j in range(1, 4):
                w.baddbmm_(y_slots[j], e[j])
            kept.append((torch.matmul(y, fac["b"]), torch.bmm(w, fac["z"])))
            # y_{i+1} = r̂_{i+1} − ÂᴴZw, accumulated in the product (no separate pass)
            y = rfft2_blocks(r[i + 1].detach(), norm="ortho").baddbmm_(w, fac["az"], alpha=-1)
        x = torch.matmul(y, factors[-1]["b"])
        out = [irfft2_blocks(x, self.sizes[-1], norm="ortho")]
        for i in range(tiers - 2, -1, -1):
            b, zw = kept[i]
            q = zw.baddbmm_(x, factors[i]["hz"])  # kept tensors are used once: updated in place
            f = factors[i]["f"]
            per_alias = q.new_empty(4, *q.shape[:2], f.shape[-1])
            for j in range(4):
                torch.bmm(q, f[j], out=per_alias[j])
            x = b.sub_(self.maps[i].from_slots(per_alias))
            out.append(irfft2_blocks(x, self.sizes[i], norm="ortho"))
        return tuple(reversed(out))


def _inverse(blocks: Tensor) -> Tensor:
    r"""Batched inverse without :func:`torch.linalg.inv`'s error check, which reads the LAPACK
    status back to the host (a device sync per call, 2T − 1 calls per factorisation).

    No block can be singular: :math:`K'_i` is a Schur complement of :math:`I + \alpha(mI +
    \tilde F^\top\tilde F + G - G^\top)` on tiers ``0 … i`` (:math:`\tilde F` without the map out of
    tier i), whose Hermitian part is :math:`\succeq (1 + \alpha m)I`; it keeps that property, so
    :math:`K_i'^{-1}` and :math:`P_i` have positive (semi)definite Hermitian parts and
    :math:`\alpha^{-1}I + P_i` a positive definite one. Non-finite kernels give non-finite
    factors, which the solvers report as not converged.
    """
    return torch.linalg.inv_ex(blocks)[0]


def _conj(x: Tensor) -> Tensor:
    return x.conj().resolve_conj().contiguous()
