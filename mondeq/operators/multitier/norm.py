r"""The norm of I − W for the multi-tier operator: exact over alias groups, or a block bound.

Both are upper bounds on :math:`\|I - W\|_2` (the exact one up to float64 rounding, covered by a
relative margin of 1e-9), as FB's step rule and the certificate slack require. Both work on
float64 spectra of the kernels whatever their dtype (float32 spectra carried rounding of ~1e-7
relative, beyond that margin).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..fft import kernel_blocks

#: Largest alias-group size :math:`\sum_i c_i 4^{T-1-i}` for which ``lipschitz()`` is exact.
EXACT_GROUP_LIMIT = 512


@dataclass(frozen=True)
class AliasGroups:
    r"""I − W of a multi-tier operator on its alias groups, one dense block per half-spectrum
    frequency of the last tier (see :func:`alias_groups`).

    Attributes:
        x: the blocks, shape (frequencies, d, d), in the spectra's complex dtype (complex128 from
            :func:`alias_groups`).
        index, conj: per tier i, the frequencies of tier i folding onto each last-tier frequency
            (shape (frequencies, 4^{T-1-i})) and whether each folds conjugated.
        offsets: where tier i's rows start in a block (``offsets[T]`` = d).
        spectra: the spectra ``(A, G, C)`` the blocks were built from.
    """

    x: Tensor
    index: list[Tensor]
    conj: list[Tensor]
    offsets: list[int]
    spectra: tuple[list[Tensor], list[Tensor], list[Tensor]]

    def members(self, blocks: Tensor, i: int) -> Tensor:
        """``blocks`` (indexed by tier i's frequencies first) picked for every group member,
        conjugated where the fold conjugates: shape (frequencies, members, ...)."""
        picked = blocks[self.index[i]]
        flags = self.conj[i].view(*self.conj[i].shape, *(1,) * (picked.ndim - 2))
        return torch.where(flags, picked.conj(), picked)

    def tier_blocks(self, blocks: Tensor, i: int) -> Tensor:
        """Per-frequency blocks of tier i ``(nf_i, r, c)`` placed block-diagonally over the tier's
        members: ``(frequencies, members·r, members·c)``."""
        picked = self.members(blocks, i)
        nf, k, r, c = picked.shape
        out = torch.zeros(nf, k * r, k * c, dtype=picked.dtype, device=picked.device)
        for j in range(k):
            out[:, j * r:(j + 1) * r, j * c:(j + 1) * c] = picked[:, j]
        return out

    def coupling(self, i: int) -> Tensor:
        r""":math:`L_i`, the stride-2 map from tier i to tier i + 1 on a group: child k of tier i →
        parent k // 4, block :math:`\tfrac12\hat C_i`; ``(frequencies, dims_{i+1}, dims_i)``."""
        half_c = 0.5 * self.members(self.spectra[2][i], i)
        nf, k, cn, ci = half_c.shape
        out = torch.zeros(nf, cn * (k // 4), ci * k, dtype=half_c.dtype, device=half_c.device)
        for j in range(k):
            p = j // 4
            out[:, p * cn:(p + 1) * cn, j * ci:(j + 1) * ci] = half_c[:, j]
        return out


@torch.no_grad()
def alias_groups(op) -> AliasGroups:
    r"""I − W on each alias group, in complex128, without a graph (:func:`build_alias_groups` on
    float64 spectra of the kernels)."""
    return build_alias_groups(_spectra64(op), op.alias_maps(), op.m)


def build_alias_groups(spectra: tuple[list[Tensor], list[Tensor], list[Tensor]], maps: list,
                       m: float) -> AliasGroups:
    r"""I − W on each alias group from the tiers' spectra :math:`(\hat A_i, \hat G_i, \hat C_i)`
    (differentiable in them: a graph when they carry one).

    For each half-spectrum frequency of the last tier, the members of tier i are the
    :math:`4^{T-1-i}` frequencies folding onto it (through :meth:`AliasMap.fold`, conjugation
    flags composing by XOR). On a group, with :math:`D_i = mI + \hat A_i^H\hat A_i + \hat G_i -
    \hat G_i^H` per member and :math:`L_i` the stride-2 map (child k → parent k // 4, block
    :math:`\tfrac12\hat C_i`), I − W has diagonal blocks :math:`D_i + L_i^H L_i` and
    off-diagonal blocks :math:`\hat A_{i+1}^H L_i` and its adjoint.
    """
    a, g, c = spectra
    tiers = len(a)
    nf = a[-1].shape[0]
    index = [torch.arange(nf, device=a[-1].device).view(-1, 1)]
    conj = [torch.zeros(nf, 1, dtype=torch.bool, device=a[-1].device)]
    for i in range(tiers - 2, -1, -1):  # members of tier i under each last-tier frequency
        parent = index[0]
        index.insert(0, maps[i].fold_index[parent].reshape(nf, -1))
        conj.insert(0, (maps[i].fold_conj[parent] ^ conj[0].unsqueeze(-1)).reshape(nf, -1))
    dims = [ci * index[i].shape[1] for i, ci in enumerate(x.shape[-1] for x in a)]
    offsets = [sum(dims[:i]) for i in range(tiers + 1)]
    x = torch.zeros(nf, offsets[-1], offsets[-1], dtype=a[0].dtype, device=a[-1].device)
    groups = AliasGroups(x, index, conj, offsets, (a, g, c))
    members = groups.members
    for i in range(tiers):
        ci = a[i].shape[-1]
        eye = torch.eye(ci, dtype=a[i].dtype, device=a[i].device)
        diag = members(m * eye + a[i].mH @ a[i] + g[i] - g[i].mH, i)
        for k in range(index[i].shape[1]):
            lo = offsets[i] + k * ci
            x[:, lo:lo + ci, lo:lo + ci] = diag[:, k]
        if i + 1 == tiers:
            break
        coupling = groups.coupling(i)
        a_next = groups.tier_blocks(a[i + 1], i + 1)
        rows, cols = slice(offsets[i], offsets[i + 1]), slice(offsets[i + 1], offsets[i + 2])
        x[:, rows, rows] += coupling.mH @ coupling
        off = a_next.mH @ coupling
        x[:, cols, rows] += off
        x[:, rows, cols] += off.mH
    return groups


@torch.no_grad()
def exact_norm(op) -> float:
    r""":math:`\|I - W\|_2` exactly: the largest singular value over the alias groups
    (:func:`alias_groups`)."""
    x = alias_groups(op).x
    # largest eigenvalue of XᴴX (a Hermitian solve, several times faster than an SVD here)
    return float(torch.linalg.eigvalsh(x.mH @ x)[:, -1].max().sqrt()) * (1.0 + 1e-9)


@torch.no_grad()
def block_norm_bound(op) -> float:
    r"""Upper bound on :math:`\|I - W\|_2`: :math:`\|N\|_2` with :math:`N_{ij} = \|(I - W)_{ij}\|_2`.

    For any block matrix X, :math:`\|X\|_2 \le \|N\|_2` (Cauchy–Schwarz per block row). The
    tier blocks are exact per-frequency norms: the diagonal block :math:`mI + A_i^\top A_i +
    S_i^\top S_i + G_i - G_i^\top` per group of four aliased frequencies (``4c_i × 4c_i``), the
    off-diagonal :math:`A_{i+1}^\top S_i` per coarse frequency. Exact for one tier.
    """
    a, g, c = _spectra64(op)
    tiers = op.tiers
    norms = torch.zeros(tiers, tiers, dtype=torch.float64)
    maps = op.alias_maps()
    for i in range(tiers):
        eye = torch.eye(a[i].shape[-1], dtype=a[i].dtype, device=a[i].device)
        diag = op.m * eye + a[i].mH @ a[i] + g[i] - g[i].mH
        if i == tiers - 1:
            norms[i, i] = float(torch.linalg.matrix_norm(diag, ord=2).max())
            continue
        nc, ci, co = maps[i].coarse_frequencies, a[i].shape[-1], c[i].shape[1]
        coupling = 0.5 * maps[i].fold(c[i]).permute(0, 2, 1, 3).reshape(nc, co, 4 * ci)  # L_i
        group = torch.zeros(nc, 4 * ci, 4 * ci, dtype=diag.dtype, device=diag.device)
        folded = maps[i].fold(diag)
        for j in range(4):
            group[:, j * ci:(j + 1) * ci, j * ci:(j + 1) * ci] = folded[:, j]
        group = group + coupling.mH @ coupling
        norms[i, i] = float(torch.linalg.matrix_norm(group, ord=2).max())
        off = float(torch.linalg.matrix_norm(a[i + 1].mH @ coupling, ord=2).max())
        norms[i + 1, i] = norms[i, i + 1] = off
    # N is symmetric with non-negative entries: its norm is its largest eigenvalue
    bound = float(torch.linalg.eigvalsh(norms).max())
    return bound * (1.0 + 1e-9)


def _spectra64(op) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """``op.spectra()`` in complex128, from float64 copies of the kernels (exact copies of float32)."""
    if op.dtype == torch.float64:
        return op.spectra()
    with torch.no_grad():
        return tuple([kernel_blocks(k.detach().double(), s) for k, s in zip(ks, op.sizes)]
                     for ks in (op.a_kernels, op.g_kernels, op.s_kernels))
