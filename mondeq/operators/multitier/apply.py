r"""Applying the multi-tier W in the Fourier domain, with exact derivatives.

:func:`apply_multitier` computes :math:`Wz` (or :math:`W^\top z`) from the per-tier spectra
(:func:`multitier_blocks`) with one rfft2 and one irfft2 per tier and batched block products;
autograd differentiates it in every mode (reverse, forward, higher order).

The implicit layer applies W once with a graph, at the detached equilibrium, right after the
solver has applied it without one to the same state (its stopping test). :class:`KernelGradApply`
serves that case: its forward reuses the earlier application, and its backward gives the
kernel gradients of :math:`L = \langle a, W b\rangle` (:math:`a = \bar g`, :math:`b = z` for W;
swapped for Wᵀ) from the bilinear form

.. math:: \langle a, Wb\rangle = (1 - m)\langle a, b\rangle - \langle Fa, Fb\rangle
          + \langle Ga, b\rangle - \langle a, Gb\rangle,

one batch-reduced block product per term and tier: with half-spectrum multiplicities w,

.. math:: \nabla_{\hat A_i} = -w\big(\widehat{Fa}_i\hat b_i^H + \widehat{Fb}_i\hat a_i^H\big),\quad
          \nabla_{\hat G_i} = w\big(\hat b_i\hat a_i^H - \hat a_i\hat b_i^H\big),\quad
          \nabla_{\hat C_i} = -w\big(\widehat{D^\top Fa}_{i+1}\hat b_i^H
          + \widehat{D^\top Fb}_{i+1}\hat a_i^H\big)

(PyTorch's convention for complex gradients; :math:`\widehat{D^\top p} = \tfrac12 p(\omega')`
on every alias), then through the kernels' spectra by autograd.
"""
from __future__ import annotations

import torch
from torch import Tensor

from splitting import State

from ..autodiff import is_transformed
from ..fft import half_spectrum_weights, irfft2_blocks, kernel_blocks, rfft2_blocks
from .aliasing import AliasMap


class _RowMatmul(torch.autograd.Function):
    r""":math:`Y = XM` for batched complex blocks, with products-only derivatives.

    Reverse mode: :math:`\bar X = \bar Y M^H`, :math:`\bar M = X^H \bar Y` (PyTorch's conjugate
    convention), the latter formed as :math:`\overline{X^\top \overline{\bar Y}}` so that BLAS gets
    plain transposes (autograd's generic rule multiplies conjugated views, which are copied per
    block here and cost several times the forward). Forward mode: :math:`\dot Y = \dot X M + X\dot M`.
    The backward is built from differentiable operations, so higher derivatives are exact too.
    """

    @staticmethod
    def forward(x: Tensor, m: Tensor) -> Tensor:  # type: ignore[override]
        return torch.matmul(x, m)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        x, m = inputs
        ctx.save_for_backward(x, m)
        ctx.save_for_forward(x, m)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, m = ctx.saved_tensors
        grad_x = grad_m = None
        if ctx.needs_input_grad[0]:
            grad_x = row_matmul(grad, m.mT.conj().resolve_conj())
        if ctx.needs_input_grad[1]:
            grad_m = row_matmul(x.mT, grad.conj().resolve_conj()).conj().resolve_conj()
        return grad_x, grad_m

    @staticmethod
    def jvp(ctx, dx: Tensor | None, dm: Tensor | None) -> Tensor:  # type: ignore[override]
        x, m = ctx.saved_tensors
        out = None
        if dx is not None:
            out = torch.matmul(dx, m)
        if dm is not None:
            out = torch.matmul(x, dm) if out is None else out + torch.matmul(x, dm)
        return out


def row_matmul(x: Tensor, m: Tensor) -> Tensor:
    """``x @ m`` for batched complex blocks; :class:`_RowMatmul` when a derivative is needed."""
    if (torch.is_grad_enabled() and (x.requires_grad or m.requires_grad)) or is_transformed(x) or is_transformed(m):
        return _RowMatmul.apply(x, m)
    return torch.matmul(x, m)


def multitier_blocks(a_hat: list[Tensor], g_hat: list[Tensor], c_hat: list[Tensor], m: float, *,
                     transpose: bool) -> list[tuple[tuple, tuple]]:
    r"""Row-layout blocks of W (or Wᵀ) for :func:`apply_multitier`, per tier.

    ``((Â_iᵀ, Ĉ_iᵀ, ((1 − m)I ± (Ĝ_iᴴ − Ĝ_i))ᵀ), ((−Â_iᴴ)ᵀ, (−½Ĉ_iᴴ)ᵀ))``, with ``None`` for the
    stride-2 blocks of the last tier (the sign of G's skew part is + for W, − for Wᵀ).
    Differentiable in the spectra.
    """
    blocks = []
    tiers = len(a_hat)
    for i in range(tiers):
        a, g = a_hat[i], g_hat[i]
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        skew = g - g.mH if transpose else g.mH - g
        c = c_hat[i] if i + 1 < tiers else None
        blocks.append(((_rows(a), None if c is None else _rows(c), _rows((1.0 - m) * eye + skew)),
                       (_rows(-a.mH), None if c is None else _rows(-0.5 * c.mH))))
    return blocks


def _rows(block: Tensor) -> Tensor:
    """A block ``M`` in row layout: ``Mᵀ``, contiguous (samples are rows, so ``v @ Mᵀ`` applies M)."""
    return block.mT.contiguous()


def apply_multitier(z: State, blocks: list[tuple[tuple, tuple]], maps: list[AliasMap],
                    sizes: list[tuple[int, int]]) -> State:
    r""":math:`Wz` in the Fourier domain (blocks from :func:`multitier_blocks`).

    .. math:: \widehat{Fz}_i = \hat A_i\hat z_i + \tfrac12\textstyle\sum_j \hat C_{i-1}(\omega_j)
              \hat z_{i-1}(\omega_j),\qquad
              \widehat{Wz}_i = \big((1-m)I + \hat G_i^H - \hat G_i\big)\hat z_i - \hat A_i^H
              \widehat{Fz}_i - \tfrac12 \hat C_i^H\,\widehat{Fz}_{i+1}(\omega')

    Differentiable in ``z`` and the blocks, in every autograd mode (FFTs, gathers and
    :func:`row_matmul`).
    """
    tiers = len(z)
    diag, conv, fz = [], [], []
    for i in range(tiers):
        z_hat = rfft2_blocks(z[i], norm="ortho")
        a_block, c_block, d_block = blocks[i][0]
        f = row_matmul(z_hat, a_block)
        if i > 0:
            f = f + 0.5 * maps[i - 1].fold_sum(conv[i - 1])
        conv.append(row_matmul(z_hat, c_block) if c_block is not None else None)
        diag.append(row_matmul(z_hat, d_block))
        fz.append(f)
    out = []
    for i in range(tiers):
        a_adj, c_adj = blocks[i][1]
        y = diag[i] + row_matmul(fz[i], a_adj)
        if c_adj is not None:
            y = y + row_matmul(maps[i].unfold(fz[i + 1]), c_adj)
        out.append(irfft2_blocks(y, sizes[i], norm="ortho"))
    return tuple(out)


def _outer(x: Tensor, y: Tensor) -> Tensor:
    r""":math:`\sum_b x_b y_b^H` per frequency: ``(nf, B, p), (nf, B, q) → (nf, p, q)``."""
    return torch.matmul(x.mT, y.conj())


def _f_spectra(v_hat: list[Tensor], a_hat: list[Tensor], c_hat: list[Tensor],
               maps: list[AliasMap]) -> list[Tensor]:
    r""":math:`\widehat{Fv}_i = \hat A_i\hat v_i
    + \tfrac12\sum_j \hat C_{i-1}(\omega_j)\hat v_{i-1}(\omega_j)`, per tier."""
    out = []
    for i, v in enumerate(v_hat):
        f = torch.matmul(v, a_hat[i].mT)
        if i > 0:
            f = f + 0.5 * maps[i - 1].fold_sum(torch.matmul(v_hat[i - 1], c_hat[i - 1].mT))
        out.append(f)
    return out


class KernelGradApply(torch.autograd.Function):
    """:math:`Wz` (or :math:`W^\\top z`) for a state that needs no gradient, differentiable in the
    kernels; forward from ``op``'s memo or :func:`apply_multitier`, backward from the bilinear
    form (module docstring). Once differentiable: a second derivative raises."""

    @staticmethod
    def forward(ctx, op, transpose: bool, tiers: int, *tensors: Tensor):  # type: ignore[override]
        z = tensors[:tiers]
        ctx.op, ctx.transpose, ctx.tiers = op, transpose, tiers
        ctx.save_for_backward(*z)
        return tuple(t.clone() for t in op.apply_without_graph(z, transpose=transpose))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        op, tiers = ctx.op, ctx.tiers
        z = ctx.saved_tensors
        kernels = [*op.a_kernels, *op.g_kernels, *op.s_kernels]
        needed = ctx.needs_input_grad[3 + tiers:]
        if not any(needed):
            return (None,) * (3 + tiers + len(kernels))
        a_hat, g_hat, c_hat = op.spectra()
        maps = op.alias_maps()
        g_spec = [rfft2_blocks(g.contiguous(), norm="ortho") for g in grads]
        z_spec = [rfft2_blocks(t, norm="ortho") for t in z]
        # L = ⟨a, W b⟩: a = ḡ, b = z for W; ⟨ḡ, Wᵀz⟩ = ⟨z, W ḡ⟩ for Wᵀ
        a, b = (z_spec, g_spec) if ctx.transpose else (g_spec, z_spec)
        fa, fb = _f_spectra(a, a_hat, c_hat, maps), _f_spectra(b, a_hat, c_hat, maps)
        grad_a, grad_g, grad_c = [], [], []
        for i in range(tiers):
            w = half_spectrum_weights(op.sizes[i], a[i])
            grad_a.append(-w * (_outer(fa[i], b[i]) + _outer(fb[i], a[i])))
            ba = _outer(b[i], a[i])
            grad_g.append(w * (ba - ba.mH))
            if i + 1 < tiers:
                up_a, up_b = maps[i].unfold(fa[i + 1]), maps[i].unfold(fb[i + 1])
                grad_c.append(-0.5 * w * (_outer(up_a, b[i]) + _outer(up_b, a[i])))
        with torch.enable_grad():
            leaves = [k.detach().requires_grad_() for k in kernels]
            sizes = [*op.sizes, *op.sizes, *op.sizes[:-1]]
            spectra = [kernel_blocks(k, s) for k, s in zip(leaves, sizes)]
            chosen = [i for i, n in enumerate(needed) if n]
            blocks = [*grad_a, *grad_g, *grad_c]
            kernel_grads = torch.autograd.grad([spectra[i] for i in chosen], [leaves[i] for i in chosen],
                                               [blocks[i].to(spectra[i].dtype) for i in chosen])
        out: list[Tensor | None] = [None] * len(kernels)
        for i, grad in zip(chosen, kernel_grads):
            out[i] = grad
        return (None, None, None, *(None,) * tiers, *out)
