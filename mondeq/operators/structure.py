r"""The exact block-diagonal form of a monotone parametrisation: one interface for every family.

Every operator family here has a unitary change of basis :math:`Q` of the state (and one,
:math:`R`, of the input) in which :math:`I - W` and the input map :math:`UD` are block diagonal,

.. math:: Q(I - W)Q^H = \mathrm{diag}(X_1, \dots, X_B),\qquad Q\,UD\,R^H = \mathrm{diag}(V_1, \dots, V_B),

with :math:`D` the (optional) diagonal input scaling of a classifier's normalisation:

* dense (:mod:`.dense`): one block, the matrices themselves;
* single convolution (:mod:`.conv`): the orthonormal 2-D DFT, one ``C × C`` block per frequency of
  the rfft2 half spectrum;
* multi-tier (:mod:`.multitier.structure`): per half-spectrum frequency of the last tier, the
  group of all tiers' frequencies that alias onto it under the stride-2 maps;
* anything else: one dense block built by probing (:func:`probed_structure`; small sizes only).

A real quadratic form is a weighted sum over the blocks,
:math:`z^\top A z = \sum_b w_b\,\hat z_b^H \hat A_b \hat z_b` (``weights``: 2 for a half-spectrum
frequency standing for its mirror too, else 1), and a real matrix has the singular values (a
symmetric one the eigenvalues) of its blocks: a block left out of a half spectrum is the complex
conjugate of one kept. So every exact quantity of the bounds, penalties and losses reads the
blocks: :math:`\|U\|_2`, :math:`\|I - W\|_2`, :math:`\|W - W'\|_2`, the joint bound's
:math:`S = 2\,\mathrm{sym}(I - W)` and :math:`P = (UD)(UD)^\top`, and its training loss. No code
outside :mod:`mondeq.operators` asks which family it holds.

**Implementing it for a new family.** Override
:meth:`~mondeq.parametrisation.MonotoneParametrisation.block_structure` and return a
:class:`BlockStructure` built from the current parameters with plain differentiable operations
(a graph to every parameter the blocks depend on, whatever autograd mode is on). Give the blocks
of I − W either as ``factor`` and ``skew`` (:math:`I - W = mI + F^HF + K`, :math:`K^H = -K`: the
monotone form; the joint-bound loss then never forms :math:`F^HF`) or directly as
``identity_minus_w`` (or both, consistent). ``tests/test_structure.py`` checks a family against
the probed fallback; add yours there.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from ..errors import InvalidSettingError, StructureTooLargeError

if TYPE_CHECKING:
    from ..parametrisation import MonotoneParametrisation

__all__ = ["DENSE_LIMIT", "BlockStructure", "expand_input_scale", "float64_structure",
           "has_own_structure", "probed_structure", "single_block", "structure_available",
           "structure_in_dtype"]

#: Largest state (or input) size for which a parametrisation without its own structure is probed.
DENSE_LIMIT = 4096


@dataclass(frozen=True, eq=False)
class BlockStructure:
    r"""A parametrisation's :math:`I - W` and :math:`UD` as blocks in a unitary basis.

    Tensors are in the parameters' dtype (complex for Fourier bases) and device, with a graph to
    the parameters when autograd records.

    Attributes:
        margin: m, with :math:`\mathrm{sym}(I - W) \succeq mI`.
        input_map: blocks :math:`V_b` of :math:`UD`, ``(blocks, d, r)``.
        weights: multiplicity of each block in the full spectrum, ``(blocks,)``, real.
        to_blocks: flattened real states ``(K, n)`` (tiers concatenated, each flattened
            channel-major: :class:`~mondeq.models.FlattenState`'s order), e.g. readout rows, →
            their coordinates ``(K, blocks, d)``, with :math:`\sum_b w_b \hat c_b^H\hat c_b =
            c^\top c`; differentiable in its argument.
        unit: ``(d,)`` integer index of each block coordinate's multiplier class: coordinates of
            one class carry one multiplier of an elementwise nonlinearity and keep the block
            structure (a unit of a dense layer, a channel of a convolution, a (tier, channel)).
        factor: blocks :math:`F_b` ``(blocks, e, d)`` with :math:`I - W = mI + F^HF + K`, or
            ``None`` (then ``identity_minus_w`` is given).
        skew: blocks :math:`K_b` (skew-Hermitian) ``(blocks, d, d)``, or ``None`` for
            :math:`K = 0`; only with ``factor``, and read only to form the blocks of I − W when
            ``identity_minus_w`` is not given.
        identity_minus_w: blocks :math:`X_b` of :math:`I - W` ``(blocks, d, d)``, or a function
            of no argument returning them (built on first use), when the family builds them
            directly (else :meth:`identity_minus_w_blocks` forms them from ``factor``).
    """

    margin: float
    input_map: Tensor
    weights: Tensor
    to_blocks: Callable[[Tensor], Tensor]
    unit: Tensor
    factor: Tensor | None = None
    skew: Tensor | None = None
    identity_minus_w: Tensor | Callable[[], Tensor] | None = None
    _memo: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.factor is None and self.identity_minus_w is None:
            raise InvalidSettingError("a BlockStructure needs the blocks of I − W: give `factor` "
                                      "(and `skew`) or `identity_minus_w`")

    @property
    def blocks(self) -> int:
        """Number of blocks B."""
        return self.input_map.shape[0]

    @property
    def size(self) -> int:
        """Block size d."""
        return self.input_map.shape[1]

    def identity_minus_w_blocks(self) -> Tensor:
        r""":math:`X_b = mI + F_b^HF_b + K_b` (or the given blocks), ``(blocks, d, d)``, memoised."""
        given = self.identity_minus_w
        if isinstance(given, Tensor):
            return given
        if "x" not in self._memo and given is not None:
            self._memo["x"] = given()
        if "x" not in self._memo:
            f = self.factor
            x = self.margin * _eye(f.shape[-1], f) + f.mH @ f
            self._memo["x"] = x if self.skew is None else x + self.skew
        return self._memo["x"]

    def symmetric_blocks(self) -> Tensor:
        r""":math:`S_b = X_b + X_b^H = 2\,\mathrm{sym}(I - W)` per block, ``(blocks, d, d)``."""
        x = self.identity_minus_w_blocks()
        return x + x.mH

    def input_gram_blocks(self) -> Tensor:
        r""":math:`P_b = V_bV_b^H`, the blocks of :math:`(UD)(UD)^\top`, ``(blocks, d, d)``."""
        return self.input_map @ self.input_map.mH

    def symmetric_form(self, a: Tensor) -> Tensor:
        r""":math:`a_b^H S_b a_b` per block for coordinates ``a`` ``(K, blocks, d)``: ``(K, blocks)``,
        real. From the factor when there is one (:math:`2m\|a\|^2 + 2\|Fa\|^2`: the skew part
        drops out exactly, and no :math:`F^HF` is formed)."""
        rows = a.transpose(0, 1)  # (blocks, K, d): one batched product over the blocks
        if self.factor is not None:
            fa = rows @ self.factor.to(a.dtype).mT
            return (2 * self.margin * _sq(rows) + 2 * _sq(fa)).T
        xa = rows @ self.identity_minus_w_blocks().to(a.dtype).mT
        return 2 * (rows.conj() * xa).real.sum(-1).T

    def input_form(self, a: Tensor) -> Tensor:
        r""":math:`\|V_b^H a_b\|^2 = a_b^H P_b a_b` per block for ``a`` ``(K, blocks, d)``: ``(K, blocks)``."""
        return _sq(a.transpose(0, 1).conj() @ self.input_map.to(a.dtype)).T

    def input_norm(self) -> Tensor:
        r""":math:`\|UD\|_2`: the largest singular value over the blocks (0-d, differentiable)."""
        return torch.linalg.matrix_norm(self.input_map, ord=2).amax()

    def operator_norm(self) -> Tensor:
        r""":math:`\|I - W\|_2`: the largest singular value over the blocks (0-d, differentiable)."""
        return torch.linalg.matrix_norm(self.identity_minus_w_blocks(), ord=2).amax()

    def operator_change_norm(self, other: "BlockStructure") -> Tensor:
        r""":math:`\|W - W'\|_2 = \|X' - X\|_2` against ``other`` (same family and shapes)."""
        _check_same(self, other)
        return torch.linalg.matrix_norm(other.identity_minus_w_blocks() - self.identity_minus_w_blocks(),
                                        ord=2).amax()

    def input_change_norm(self, other: "BlockStructure") -> Tensor:
        r""":math:`\|UD - U'D\|_2` against ``other`` (same family and shapes)."""
        _check_same(self, other)
        return torch.linalg.matrix_norm(self.input_map - other.input_map, ord=2).amax()


def single_block(margin: float, input_map: Tensor, *, factor: Tensor | None = None,
                 skew: Tensor | None = None,
                 identity_minus_w: Tensor | Callable[[], Tensor] | None = None) -> BlockStructure:
    """One block in the standard basis (dense layers, the probed fallback): ``input_map`` ``(n, r)``,
    ``factor`` ``(e, n)``, ``skew`` / ``identity_minus_w`` ``(n, n)`` (or its function); one
    multiplier per unit."""
    def lift(t):
        if callable(t) and not isinstance(t, Tensor):
            return lambda: t()[None]
        return None if t is None else t[None]

    n = input_map.shape[0]
    return BlockStructure(margin, input_map[None], torch.ones(1, dtype=input_map.real.dtype,
                                                                 device=input_map.device),
                          lambda c: c[:, None, :], torch.arange(n, device=input_map.device),
                          factor=lift(factor), skew=lift(skew), identity_minus_w=lift(identity_minus_w))


def expand_input_scale(input_scale: Tensor | None, n: int, like: Tensor) -> Tensor:
    r"""The diagonal of :math:`D` per input coordinate of a map with ``n`` (channel-major) input
    coordinates or channels, from ``input_scale`` given per channel (``(C,)``, C dividing n; one
    value for all), in ``like``'s dtype and device; ones for ``None``."""
    if input_scale is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    scale = input_scale.reshape(-1).to(like.device, like.dtype)
    if n % scale.numel():
        raise InvalidSettingError(f"an input scale of {scale.numel()} channels does not divide the "
                                  f"layer's {n} input values or channels")
    return scale.repeat_interleave(n // scale.numel())


def probed_structure(linear: "MonotoneParametrisation", *,
                     input_scale: Tensor | None = None) -> BlockStructure:
    r"""One dense block for any parametrisation: :math:`W` from ``operator().as_matrix()`` and U
    probed column by column through ``bias`` (:math:`Ue_j = \mathrm{bias}(e_j) - \mathrm{bias}(0)`),
    differentiable where ``mv`` and ``bias`` are. The default of ``block_structure()``, and the
    reference the structured families are tested against.

    Raises:
        StructureTooLargeError: more than :data:`DENSE_LIMIT` state or input values.
    """
    op = linear.operator()
    n = sum(math.prod(s) for s in op.state_shape)
    n_in = math.prod(linear.input_shape)
    if max(n, n_in) > DENSE_LIMIT:
        raise StructureTooLargeError(type(linear).__name__, n, n_in, DENSE_LIMIT)
    w = op.as_matrix()
    probe = torch.eye(n_in, dtype=w.dtype, device=w.device).reshape(n_in, *linear.input_shape)

    def flat(x: Tensor) -> Tensor:
        return torch.cat([t.reshape(len(x), -1) for t in linear.bias(x)], dim=1)

    u = (flat(probe) - flat(torch.zeros_like(probe[:1]))).T  # (n, n_in)
    u = u * expand_input_scale(input_scale, n_in, u)
    return single_block(linear.m, u, identity_minus_w=_eye(n, w) - w)


def has_own_structure(linear: "MonotoneParametrisation") -> bool:
    """Whether ``linear``'s family implements ``block_structure`` (rather than the probed fallback)."""
    return not getattr(type(linear).block_structure, "probes", False)


def structure_available(linear: "MonotoneParametrisation", *, raise_error: bool = False) -> bool:
    """Whether ``linear.block_structure()`` will succeed: the family has its own, or the layer is
    small enough to probe (:data:`DENSE_LIMIT`).

    Raises:
        StructureTooLargeError: when it will not and ``raise_error`` is set.
    """
    if has_own_structure(linear):
        return True
    n = sum(math.prod(s) for s in linear.operator().state_shape)
    n_in = math.prod(linear.input_shape)
    if max(n, n_in) <= DENSE_LIMIT:
        return True
    if raise_error:
        raise StructureTooLargeError(type(linear).__name__, n, n_in, DENSE_LIMIT)
    return False


def structure_in_dtype(linear: "MonotoneParametrisation", dtype: torch.dtype, *,
                       input_scale: Tensor | None = None) -> BlockStructure:
    """``linear.block_structure()`` computed from its floating parameters and buffers cast to
    ``dtype``, keeping the graph to the originals (the float64 side of a float32 model's loss)."""
    if linear.dtype == dtype:
        return linear.block_structure(input_scale=input_scale)
    cast = {name: (t.to(dtype) if t.is_floating_point() else t)
            for name, t in (*linear.named_parameters(), *linear.named_buffers())}
    return torch.func.functional_call(_Structure(linear), {"linear." + k: v for k, v in cast.items()},
                                      args=(), kwargs={"input_scale": input_scale})


def float64_structure(linear: "MonotoneParametrisation", *,
                      input_scale: Tensor | None = None) -> BlockStructure:
    """The structure without a graph, in float64 on the CPU (from a copy of lower-precision or
    device parameters: float32 values are exact in float64), for certificates and exact norms."""
    with torch.no_grad():
        p = next(linear.parameters())
        if p.dtype != torch.float64 or p.device.type != "cpu":
            linear = copy.deepcopy(linear).to(device="cpu", dtype=torch.float64)
        scale = None if input_scale is None else input_scale.detach().to("cpu", torch.float64)
        return linear.block_structure(input_scale=scale)


class _Structure(nn.Module):
    """``linear.block_structure`` as a module's forward, for :func:`torch.func.functional_call`."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, *, input_scale: Tensor | None = None) -> BlockStructure:
        return self.linear.block_structure(input_scale=input_scale)


def _eye(n: int, like: Tensor) -> Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


def _sq(t: Tensor) -> Tensor:
    return (t.abs() ** 2).sum(-1)


def _check_same(a: BlockStructure, b: BlockStructure) -> None:
    if a.input_map.shape != b.input_map.shape or a.weights.shape != b.weights.shape:
        raise InvalidSettingError(f"the two layers have different block structures "
                                  f"({tuple(a.input_map.shape)} vs {tuple(b.input_map.shape)})")
