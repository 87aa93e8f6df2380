r"""The block structure of a multi-tier layer: one dense block per alias group, with a graph.

For each half-spectrum frequency of the last tier, the group of every tier's frequencies that
alias onto it under the stride-2 maps (:func:`~.norm.build_alias_groups`) spans an invariant
subspace of W, of size :math:`d = \sum_i c_i 4^{T-1-i}`. In the orthonormal rfft2 basis of each
tier, restricted to a group (tier 0's members first, each member's channels contiguous):

* F is block lower bidiagonal: :math:`\hat A_i` on each member of tier i, and the stride-2 map
  :math:`L_i` (child k of tier i → parent k // 4, block :math:`\tfrac12\hat C_i`) below it;
* the skew part is :math:`\hat G_i - \hat G_i^H` on each member;
* U reaches tier 0 only: :math:`\hat U(\omega)D` on each member of tier 0 (the circular U on the
  padded grid; an upper bound for ``padding > 0``, as ``input_norm``).

:math:`I - W = mI + F^HF + K` per group is built block by block (the tiers' products only, not
a dense :math:`F^HF`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..conv import state_spectrum
from ..fft import half_spectrum_weights, kernel_blocks
from ..structure import BlockStructure, expand_input_scale
from .norm import AliasGroups, build_alias_groups


def multitier_structure(linear, *, input_scale: Tensor | None = None) -> BlockStructure:
    """:class:`~mondeq.operators.structure.BlockStructure` of a
    :class:`~mondeq.operators.multitier.MonotoneMultiTier` (module docstring)."""
    op = linear.operator()
    spectra = tuple([kernel_blocks(k, s) for k, s in zip(ks, linear.sizes)]
                    for ks in (op.a_kernels, op.g_kernels, op.s_kernels))
    groups = build_alias_groups(spectra, op.alias_maps(), op.m)
    a, g, _ = spectra
    tiers, offsets = op.tiers, groups.offsets
    nf, d = groups.x.shape[0], offsets[-1]
    factor = torch.zeros(nf, d, d, dtype=groups.x.dtype, device=groups.x.device)
    skew = torch.zeros_like(factor)
    for i in range(tiers):
        rows = slice(offsets[i], offsets[i + 1])
        factor[:, rows, rows] = groups.tier_blocks(a[i], i)
        skew[:, rows, rows] = groups.tier_blocks(g[i] - g[i].mH, i)
        if i + 1 < tiers:
            factor[:, offsets[i + 1]:offsets[i + 2], rows] = groups.coupling(i)
    u = kernel_blocks(linear.U.weight, linear.sizes[0])
    u = u * expand_input_scale(input_scale, u.shape[-1], u.real).to(u.dtype)
    v = groups.tier_blocks(u, 0)  # (nf, dims_0, members_0 · C_in)
    v = torch.cat([v, v.new_zeros(nf, d - v.shape[1], v.shape[2])], dim=1)
    chans = [blocks.shape[-1] for blocks in a]
    first = [sum(chans[:i]) for i in range(tiers)]
    unit = torch.cat([torch.arange(ci, device=v.device).repeat(groups.index[i].shape[1]) + first[i]
                      for i, ci in enumerate(chans)])
    shapes = [(ci, *size) for ci, size in zip(chans, linear.sizes)]
    return BlockStructure(op.m, v, half_spectrum_weights(linear.sizes[-1], v).reshape(-1),
                          lambda c: _to_groups(c, groups, shapes), unit,
                          factor=factor, skew=skew, identity_minus_w=groups.x)


def _to_groups(states: Tensor, groups: AliasGroups, shapes: list[tuple[int, int, int]]) -> Tensor:
    """Flattened multi-tier states ``(K, n)`` → their alias-group coordinates ``(K, groups, d)``."""
    sizes = [math.prod(s) for s in shapes]
    nf = groups.x.shape[0]
    parts = []
    for i, (part, shape) in enumerate(zip(states.split(sizes, dim=1), shapes)):
        picked = groups.members(state_spectrum(part, shape).transpose(0, 1), i)  # (nf, n_i, K, c_i)
        parts.append(picked.permute(2, 0, 1, 3).reshape(len(states), nf, -1))
    return torch.cat(parts, dim=2)
