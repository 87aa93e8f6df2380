r"""The quadratic forms of the joint margin bound, split into small exact blocks.

The joint bound (:mod:`.joint_bound`) needs, in float64, the symmetric part and the input map

.. math:: S = 2\,\mathrm{sym}(I - W) = (I - W) + (I - W)^\top,\qquad P = (UD)(UD)^\top,

(:math:`D` the classifier's input normalisation, so the bound holds in pixel scale), and the head
rows as vectors of the same space. Both are block diagonal in a unitary basis, so every block is
handled exactly:

* dense: one block, the ``n × n`` matrices themselves;
* single convolution: the orthonormal 2-D DFT; one ``C × C`` block per frequency (rfft2 half
  spectrum, each row standing for itself and, weight 2, its mirror; :func:`half_spectrum_weights`);
* multi-tier: per frequency of the last tier, the group of all tiers' frequencies that alias onto
  it under the stride-2 maps (size :math:`d = \sum_i c_i 4^{T-1-i}`), built as in
  :func:`mondeq.operators.multitier.norm.exact_norm`; U touches tier 0 only, so P is block
  diagonal inside a group.

A real quadratic form is then a weighted sum over half-spectrum blocks,
:math:`c^\top A c = \sum_\omega w_\omega\,\hat c(\omega)^H \hat A(\omega)\,\hat c(\omega)`, and a real
symmetric matrix has the eigenvalues of its blocks (a block at :math:`-\omega` is the conjugate of
the one at :math:`\omega`, with the same eigenvalues). Zero padding of a convolution's input is an
isometry :math:`E`; using the circular :math:`U` on the padded grid gives
:math:`P \succeq UEE^\top U^\top`, which only enlarges the bound (sound, exact for ``padding=0``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..errors import InvalidSettingError
from ..operators.conv import ConvOperator, MonotoneConv
from ..operators.dense import MonotoneLinear
from ..operators.fft import half_spectrum_weights, kernel_blocks
from ..operators.multitier.norm import alias_groups
from ..operators.multitier.operator import MonotoneMultiTier, MultiTierOperator
from ..parametrisation import MonotoneParametrisation

#: Largest state (or input) size for which an unknown parametrisation is handled densely.
DENSE_LIMIT = 4096


@dataclass(frozen=True)
class QuadraticBlocks:
    r""":math:`S` and :math:`P` as Hermitian blocks in a unitary basis, and the map into it.

    Attributes:
        x: :math:`I - W` per block, ``(blocks, d, d)``, float64 or complex128.
        s: :math:`2\,\mathrm{sym}(I - W) = X + X^H` per block, same shape.
        p: :math:`(UD)(UD)^H` per block, same shape.
        weights: multiplicity of each block in the full spectrum, ``(blocks,)``.
        to_blocks: flattened states ``(K, n)`` (in :class:`~mondeq.models.FlattenState` order)
            → their coordinates ``(K, blocks, d)``.
        unit: for each block coordinate, the index of its multiplier class, ``(d,)``: a unit of
            a dense layer, a channel of a convolution, a (tier, channel) of a multi-tier layer
            (multipliers constant over space keep the block structure).
    """

    x: Tensor
    s: Tensor
    p: Tensor
    weights: Tensor
    to_blocks: Callable[[Tensor], Tensor]
    unit: Tensor


def input_scale_vector(model, linear: MonotoneParametrisation) -> Tensor:
    r"""The diagonal :math:`D` of the classifier's normalisation, per input channel of a
    convolution (shape ``(C_in,)``) or per input of a dense layer (shape ``(n_in,)``), float64."""
    norm = getattr(model, "normalization", None)
    shape = tuple(linear.input_shape)
    if norm is None:
        inv = torch.ones(1, dtype=torch.float64)
    else:
        inv = 1.0 / norm.std.detach().to(torch.float64).cpu()
    if len(shape) == 3:  # channel-major image input
        return inv.expand(shape[0]).clone() if inv.numel() == 1 else inv
    n_in = math.prod(shape)
    return inv.repeat_interleave(n_in // inv.numel())


def quadratic_blocks(model, linear: MonotoneParametrisation) -> QuadraticBlocks:
    """The blocks of ``linear`` (dense, conv, multi-tier, or small enough to build densely)."""
    d = input_scale_vector(model, linear)
    linear64 = linear
    if linear.dtype != torch.float64 or next(linear.parameters()).device.type != "cpu":
        import copy
        linear64 = copy.deepcopy(linear).to(device="cpu", dtype=torch.float64)
    with torch.no_grad():
        if isinstance(linear64, MonotoneLinear):
            return _dense(linear64, d)
        if isinstance(linear64, MonotoneConv):
            return _conv(linear64, d)
        if isinstance(linear64, MonotoneMultiTier):
            return _multitier(linear64, d)
        return probed_blocks(linear64, d)


def _single(x: Tensor, p: Tensor) -> QuadraticBlocks:
    return QuadraticBlocks(x[None], (x + x.T)[None], p[None], torch.ones(1, dtype=torch.float64),
                           lambda c: c[:, None, :], torch.arange(x.shape[0]))


def _dense(linear: MonotoneLinear, d: Tensor) -> QuadraticBlocks:
    i_minus_w = torch.eye(linear.F.shape[0], dtype=torch.float64) - linear.weight()
    u = linear.U.weight * d
    return _single(i_minus_w, u @ u.T)


@torch.no_grad()
def probed_blocks(linear: MonotoneParametrisation, d: Tensor) -> QuadraticBlocks:
    """One dense block from ``operator().as_matrix()`` and U probed column by column through
    ``bias`` (any parametrisation, small sizes: a reference for the structured paths)."""
    op = linear.operator()
    n = sum(math.prod(s) for s in op.state_shape)
    n_in = math.prod(linear.input_shape)
    if max(n, n_in) > DENSE_LIMIT:
        raise InvalidSettingError(
            f"the joint bound has no structured path for {type(linear).__name__} and builds it "
            f"densely only up to {DENSE_LIMIT} state or input values (got {n} and {n_in})")
    i_minus_w = torch.eye(n, dtype=torch.float64) - op.as_matrix().to(torch.float64)
    probe = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *linear.input_shape)

    def flat(x: Tensor) -> Tensor:
        return torch.cat([t.reshape(len(x), -1) for t in linear.bias(x)], dim=1)

    u = (flat(probe) - flat(torch.zeros_like(probe[:1]))).T  # (n, n_in)
    scale = d if d.numel() == n_in else d.repeat_interleave(n_in // d.numel())
    u = u * scale
    return _single(i_minus_w, u @ u.T)


def state_spectrum(c: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Flattened real states ``(K, C·H·W)`` → orthonormal half spectra ``(K, H·(W//2+1), C)``."""
    ch, h, w = shape
    hat = torch.fft.rfft2(c.reshape(len(c), ch, h, w), norm="ortho")
    return hat.reshape(len(c), ch, -1).transpose(1, 2)


def _conv(linear: MonotoneConv, d: Tensor) -> QuadraticBlocks:
    op = ConvOperator(linear.F, linear.G, linear.m, linear.size)
    x = op.identity_minus_w_blocks()
    u = kernel_blocks(linear.U.weight, linear.size) * d.to(x.dtype)  # columns scaled by D
    shape = (linear.channels, *linear.size)
    return QuadraticBlocks(x, x + x.mH, u @ u.mH, half_spectrum_weights(linear.size, x).reshape(-1),
                           lambda c: state_spectrum(c, shape), torch.arange(linear.channels))


def _multitier(linear: MonotoneMultiTier, d: Tensor) -> QuadraticBlocks:
    r"""Alias groups of I − W (:func:`~mondeq.operators.multitier.norm.alias_groups`:
    diagonal :math:`D_i + L_i^H L_i`, coupling :math:`\hat A_{i+1}^H L_i`), with P on tier 0."""
    op: MultiTierOperator = linear.operator()
    groups = alias_groups(op)
    x, index, members = groups.x, groups.index, groups.members
    chans = [blocks.shape[-1] for blocks in groups.spectra[0]]
    nf, tiers = x.shape[0], op.tiers
    u = kernel_blocks(linear.U.weight, linear.sizes[0]) * d.to(torch.complex128)
    pu = members(u @ u.mH, 0)  # (nf, members of tier 0, c0, c0)
    p = torch.zeros_like(x)
    for k in range(index[0].shape[1]):
        lo = k * chans[0]
        p[:, lo:lo + chans[0], lo:lo + chans[0]] = pu[:, k]
    shapes = [(ci, *size) for ci, size in zip(chans, linear.sizes)]
    sizes = [math.prod(s) for s in shapes]

    def to_blocks(head: Tensor) -> Tensor:
        parts = []
        for i, (part, shape) in enumerate(zip(head.split(sizes, dim=1), shapes)):
            picked = members(state_spectrum(part, shape).transpose(0, 1), i)  # (nf, n_i, K, c_i)
            parts.append(picked.permute(2, 0, 1, 3).reshape(len(head), nf, -1))
        return torch.cat(parts, dim=2)

    first = [sum(chans[:i]) for i in range(tiers)]
    unit = torch.cat([torch.arange(ci).repeat(index[i].shape[1]) + first[i] for i, ci in enumerate(chans)])
    return QuadraticBlocks(x, x + x.mH, p, half_spectrum_weights(linear.sizes[-1], x).reshape(-1),
                           to_blocks, unit)
