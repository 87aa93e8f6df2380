r"""Multi-tier convolutional monotone parametrisation (Winston & Kolter 2020, §4 and appendix).

The state is a tuple of feature maps :math:`z = (z_0, …, z_{T-1})`, tier i with :math:`c_i`
channels on an :math:`H/2^i × W/2^i` grid. W keeps the monotone form

.. math:: W = (1 - m)I - F^\top F + G^\top - G,\qquad I - W = mI + F^\top F + (G - G^\top),

so the margin m is exact for any parameter values:

* G is block diagonal, one circular ``k × k`` convolution :math:`G_i` per tier;
* F is block lower bidiagonal, :math:`(Fz)_i = A_i z_i + S_{i-1} z_{i-1}`, with circular
  convolutions :math:`A_i` and stride-2 convolutions :math:`S_i = D\,C_i` from tier i to tier
  i + 1 (a circular convolution :math:`C_i` on tier i's grid, then every second row and column:
  the paper's ``conv2d(circular_pad(z), A_n, stride=2)``).

U (with a bias) injects the zero-padded input into tier 0 only; tiers ≥ 1 have their own
per-channel bias. ``mv``/``rmv`` apply W in the Fourier domain (:mod:`mondeq.operators.multitier.apply`,
exact derivatives); the resolvent is exact and lives in :mod:`mondeq.operators.multitier.resolvent`. A stride-2 map
needs an even grid, so every tier but the last has even height and width.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from splitting import LinearOperator, State
from ...errors import InvalidSettingError
from splitting.operator import check_alpha, check_margin

from ..autodiff import any_transformed
from ..last_application import LastApplication
from ...parametrisation import MonotoneParametrisation
from ..structure import BlockStructure
from ..fft import check_kernel_size, kernel_blocks, spectral_norm
from .apply import KernelGradApply, apply_multitier, multitier_blocks
from .norm import EXACT_GROUP_LIMIT, block_norm_bound, exact_norm
from .aliasing import AliasMap
from .resolvent import MultiTierResolvent


class MultiTierOperator(LinearOperator):
    r"""W = (1 − m)I − FᵀF + Gᵀ − G on multi-tier states (module docstring).

    Args:
        a_kernels, g_kernels: per tier, ``(c_i, c_i, k, k)`` kernels of :math:`A_i`, :math:`G_i`.
        s_kernels: per tier but the last, the ``(c_{i+1}, c_i, k, k)`` kernel of :math:`C_i`.
        m: monotonicity margin, > 0.
        sizes: ``(H_i, W_i)`` of every tier; ``sizes[i + 1] == (H_i/2, W_i/2)``, H_i, W_i even.
    """

    def __init__(self, a_kernels: Sequence[Tensor], g_kernels: Sequence[Tensor],
                 s_kernels: Sequence[Tensor], m: float, sizes: Sequence[tuple[int, int]]) -> None:
        m = check_margin(m)
        tiers = len(a_kernels)
        if tiers < 1 or len(g_kernels) != tiers or len(s_kernels) != tiers - 1 or len(sizes) != tiers:
            raise InvalidSettingError(
                f"need T kernels A, T kernels G, T − 1 stride-2 kernels and T sizes; got "
                f"{len(a_kernels)}, {len(g_kernels)}, {len(s_kernels)}, {len(sizes)}")
        sizes = [tuple(int(s) for s in size) for size in sizes]
        for i in range(tiers - 1):
            h, w = sizes[i]
            if h % 2 or w % 2 or sizes[i + 1] != (h // 2, w // 2):
                raise InvalidSettingError(
                    f"tier {i} has grid {sizes[i]} and tier {i + 1} {sizes[i + 1]}: a stride-2 map "
                    f"needs an even grid and the next tier at half its size (pad the input)")
        for i in range(tiers):
            c = a_kernels[i].shape[0]
            if a_kernels[i].shape[:2] != (c, c) or g_kernels[i].shape[:2] != (c, c):
                raise InvalidSettingError(f"tier {i}: A and G kernels must be (c, c, k, k), got "
                                          f"{tuple(a_kernels[i].shape)} and {tuple(g_kernels[i].shape)}")
            if i < tiers - 1 and s_kernels[i].shape[:2] != (a_kernels[i + 1].shape[0], c):
                raise InvalidSettingError(f"stride-2 kernel {i} must be (c_{i + 1}, c_{i}, k, k), got "
                                          f"{tuple(s_kernels[i].shape)}")
        self.a_kernels = list(a_kernels)
        self.g_kernels = list(g_kernels)
        self.s_kernels = list(s_kernels)
        self.m = float(m)
        self.sizes = sizes
        self.state_shape = tuple((a.shape[0], *size) for a, size in zip(self.a_kernels, sizes))
        self._spectra: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None
        self._maps: list[AliasMap] | None = None
        self._graph_spectra: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None
        self._blocks: dict[tuple[str, bool], list] = {}
        self._memo = LastApplication()
        self._lipschitz: float | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.a_kernels[0].dtype

    @property
    def device(self) -> torch.device:
        return self.a_kernels[0].device

    @property
    def tiers(self) -> int:
        """Number of tiers T."""
        return len(self.a_kernels)

    def mv(self, z: State) -> State:
        return self._apply(z, transpose=False)

    def rmv(self, z: State) -> State:
        return self._apply(z, transpose=True)

    def _apply(self, z: State, *, transpose: bool) -> State:
        kernels = [*self.a_kernels, *self.g_kernels, *self.s_kernels]
        grad_kernels = torch.is_grad_enabled() and any(k.requires_grad for k in kernels)
        dual = any_transformed(*z, *kernels)
        if not (grad_kernels or dual or (torch.is_grad_enabled() and any(t.requires_grad for t in z))):
            return self.apply_without_graph(z, transpose=transpose)
        if grad_kernels and not dual and not any(t.requires_grad for t in z):
            # the implicit layer's case: kernel gradients only, forward reused from the memo
            return KernelGradApply.apply(self, transpose, self.tiers, *z, *kernels)
        key = ("rmv" if transpose else "mv", True)
        if key not in self._blocks:
            # built with a graph even inside the solver's no_grad: under torch.func.grad the same
            # blocks serve the differentiable application after the solve
            with torch.enable_grad():
                if self._graph_spectra is None:  # spectra with a graph, built once per operator
                    self._graph_spectra = tuple([kernel_blocks(k, s) for k, s in zip(ks, self.sizes)]
                                                for ks in (self.a_kernels, self.g_kernels, self.s_kernels))
                self._blocks[key] = multitier_blocks(*self._graph_spectra, self.m, transpose=transpose)
        return apply_multitier(z, self._blocks[key], self.alias_maps(), self.sizes)

    def apply_without_graph(self, z: State, *, transpose: bool) -> State:
        """W z (or Wᵀ z) without a graph. The last result is kept and returned again for the same,
        unmodified input (the solver's residual and the layer's application share a state)."""
        key = "rmv" if transpose else "mv"
        memo = self._memo.get(key, z)
        if memo is not None:
            return memo
        with torch.no_grad():
            if (key, False) not in self._blocks:
                self._blocks[(key, False)] = multitier_blocks(*self.spectra(), self.m, transpose=transpose)
            out = apply_multitier(tuple(t.detach() for t in z), self._blocks[(key, False)],
                                  self.alias_maps(), self.sizes)
        self._memo.put(key, z, out, out)
        return out

    def spectra(self) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        r"""Detached blocks :math:`\hat A_i`, :math:`\hat G_i` (per tier) and :math:`\hat C_i` (per
        stride-2 map) on each tier's half spectrum, built once per operator."""
        if self._spectra is None:
            with torch.no_grad():
                a = [kernel_blocks(k.detach(), s) for k, s in zip(self.a_kernels, self.sizes)]
                g = [kernel_blocks(k.detach(), s) for k, s in zip(self.g_kernels, self.sizes)]
                c = [kernel_blocks(k.detach(), s) for k, s in zip(self.s_kernels, self.sizes)]
            self._spectra = (a, g, c)
        return self._spectra

    def alias_maps(self) -> list[AliasMap]:
        """The :class:`~mondeq.operators.multitier.resolvent.AliasMap` of every tier that feeds a stride-2 map."""
        if self._maps is None:
            self._maps = [AliasMap(s, self.device) for s in self.sizes[:-1]]
        return self._maps

    def resolvent(self, alpha: float) -> MultiTierResolvent:
        a, g, c = self.spectra()
        return MultiTierResolvent(a, g, c, self.alias_maps(), self.sizes, self.m, check_alpha(alpha))

    def lipschitz(self) -> float:
        r""":math:`\|I - W\|_2`, exactly while the frequency groups are small, else an upper bound.

        I − W couples, for every frequency of the last tier, the :math:`4^{T-1-i}` frequencies of
        each tier i that alias onto it: a dense group of size :math:`d = \sum_i c_i 4^{T-1-i}`.
        For :math:`d \le` :data:`~mondeq.operators.multitier.norm.EXACT_GROUP_LIMIT` (416 for the paper's
        MNIST model, 444 for its small CIFAR model; about 1.5 s on one CPU thread) the norm is
        the largest singular value over these groups (:func:`~mondeq.operators.multitier.norm.exact_norm`),
        otherwise the norm of the T × T matrix of exact tier-block norms
        (:func:`~mondeq.operators.multitier.norm.block_norm_bound`, about 15–18% above the norm for those
        models at initialisation, 0.2 s). Either way an upper bound, as FB's step rule and the
        certificate slack need; computed in float64 and cached on the operator.
        """
        if self._lipschitz is None:
            d = sum(c * 4 ** (self.tiers - 1 - i) for i, c in enumerate(a.shape[0] for a in self.a_kernels))
            self._lipschitz = exact_norm(self) if d <= EXACT_GROUP_LIMIT else block_norm_bound(self)
        return self._lipschitz


class MonotoneMultiTier(MonotoneParametrisation):
    r"""Parameters of a multi-tier convolutional monDEQ: U (tier 0), per-tier biases, A_i, G_i, C_i.

    Args:
        in_channels: input channels.
        channels: channels of each tier, e.g. ``(16, 32, 32)``; tier i has grid
            ``(H + 2·padding)/2^i``.
        input_size: ``(height, width)`` of the input, or one int for square inputs.
        kernel_size: odd kernel size of U, A_i, G_i and the stride-2 maps.
        padding: zero padding added to the input; the padded size must be divisible by
            ``2^(T−1)`` (28 and 32 work unpadded with three tiers).
        m: monotonicity margin, > 0.

    :meth:`input_norm` is the exact norm of the circular U on the padded grid (exact for
    ``padding=0``, a sound upper bound otherwise: zero padding is an isometry).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], input_size: int | tuple[int, int], *,
                 kernel_size: int = 3, padding: int = 0, m: float = 1.0,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__(m)
        check_kernel_size(kernel_size)
        if int(padding) != padding or padding < 0:
            raise InvalidSettingError(f"padding must be a non-negative integer, got {padding}")
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise InvalidSettingError(
                f"channels must be a non-empty sequence of positive ints, got {channels}")
        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.input_shape = (in_channels, *hw)
        self.padding = int(padding)
        base = (hw[0] + 2 * self.padding, hw[1] + 2 * self.padding)
        scale = 2 ** (len(channels) - 1)
        if base[0] % scale or base[1] % scale:
            raise InvalidSettingError(
                f"padded input {base} is not divisible by 2^(tiers−1) = {scale}: every tier but the "
                f"last must have an even grid; choose padding so that the padded size is")
        self.sizes = [(base[0] // 2 ** i, base[1] // 2 ** i) for i in range(len(channels))]
        if min(self.sizes[-1]) < kernel_size // 2:
            raise InvalidSettingError(
                f"last tier grid {self.sizes[-1]} is too small for kernel size {kernel_size}")
        kw = {"dtype": dtype, "device": device}
        k = int(kernel_size)
        self.U = nn.Conv2d(in_channels, channels[0], k, padding=k // 2, padding_mode="circular", **kw)
        self.A = nn.ParameterList([nn.Parameter(torch.empty(c, c, k, k, **kw)) for c in channels])
        self.G = nn.ParameterList([nn.Parameter(torch.empty(c, c, k, k, **kw)) for c in channels])
        self.S = nn.ParameterList([nn.Parameter(torch.empty(c1, c0, k, k, **kw))
                                   for c0, c1 in zip(channels[:-1], channels[1:])])
        self.tier_bias = nn.ParameterList([nn.Parameter(torch.zeros(c, **kw)) for c in channels[1:]])
        for kernel in [*self.A, *self.G, *self.S]:
            bound = 1.0 / math.sqrt(kernel.shape[1] * k * k)
            nn.init.uniform_(kernel, -bound, bound)

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of every tier."""
        return tuple(a.shape[0] for a in self.A)

    def bias(self, x: Tensor) -> State:
        if self.padding:
            x = nnf.pad(x, (self.padding,) * 4)
        first = self.U(x)
        rest = tuple(b.view(1, -1, 1, 1).expand(x.shape[0], -1, *size).contiguous()
                     for b, size in zip(self.tier_bias, self.sizes[1:]))
        return (first, *rest)

    def operator(self) -> MultiTierOperator:
        return MultiTierOperator(list(self.A), list(self.G), list(self.S), self.m, self.sizes)

    def input_norm(self) -> Tensor:
        return spectral_norm(self.U.weight, self.sizes[0])

    def block_structure(self, *, input_scale: Tensor | None = None) -> BlockStructure:
        """One block per alias group (:mod:`mondeq.operators.multitier.structure`)."""
        from .structure import multitier_structure  # it imports the operator's neighbours

        return multitier_structure(self, input_scale=input_scale)

    def extra_repr(self) -> str:
        tiers = ", ".join(f"({c}, {h}, {w})" for c, (h, w) in zip(self.channels, self.sizes))
        return f"tiers=[{tiers}], padding={self.padding}, m={self.m:g}"
