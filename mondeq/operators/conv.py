r"""Convolutional monotone parametrisation: U, F, G are circular 2-D convolutions.

.. math:: W = (1 - m) I - F^\top F + G^\top - G,\qquad I - W = mI + F^\top F + (G - G^\top)

on states of shape ``(C, H, W)``. Circular padding makes every piece a circular convolution, so
W is one too and the 2-D DFT block-diagonalises it: one ``C × C`` block per frequency,

.. math:: \hat W(\omega) = (1 - m) I - \hat F(\omega)^H \hat F(\omega) + \hat G(\omega)^H - \hat G(\omega).

The resolvent :math:`(I + \alpha(I - W))^{-1}` inverts all ``H·(W//2+1)`` blocks of the half
spectrum in one batched call and applies them with one batched matmul between an rfft2 and an
irfft2 (Winston & Kolter, "Monotone operator equilibrium networks", NeurIPS 2020, §5). ``mv`` and
``rmv`` apply W the same way, differentiably in the kernels: about 12× fewer multiply-adds (plus
two FFTs) than W's three direct 3 × 3 convolutions (:func:`weight_kernel` and
:func:`~mondeq.operators.fft.circular_conv2d` give the direct form; the tests check both agree).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from splitting import LinearOperator, Resolvent, State
from ..errors import InvalidSettingError
from splitting.operator import check_alpha, check_margin

from .autodiff import any_transformed
from .last_application import LastApplication
from ..parametrisation import MonotoneParametrisation, check_sizes
from .structure import BlockStructure, expand_input_scale
from .fft import BlockApply, adjoint_blocks, adjoint_kernel, apply_blocks, check_kernel_size, compose_kernels, half_spectrum_weights, identity_blocks, irfft2_blocks, kernel_blocks, pad_kernel, rfft2_blocks, spectral_norm


class ConvResolvent(Resolvent):
    r"""The inverted blocks of :math:`(1 + \alpha) I - \alpha \hat W(\omega)`, one per frequency.

    All blocks are factorised and inverted in one batched call (the explicit inverse turns every
    application into one batched matmul, which is faster here than triangular solves with the LU
    factors from the second application on). The transposed system has the conjugate-transposed
    blocks, so :meth:`solve_t` reuses the same inverse (conjugated once, no second factorisation).

    Attributes:
        info: the batched inversion's per-block status (0: success), kept on the device and never
            read during a solve (reading it would sync); no block can be singular (see below).
    """

    def __init__(self, system_blocks: Tensor, alpha: float) -> None:
        super().__init__(alpha)
        # Rows of the spectrum are samples, so x̂ ↦ x̂ Rᵀ applies R; inv(Aᵀ) = (A⁻¹)ᵀ directly.
        # inv_ex without its error check: linalg.inv would read the LAPACK status back to the
        # host (a device sync per factorisation). No block can be singular: each is
        # I + α(I − Ŵ(ω)), whose Hermitian part is (1 + α m) I + α F̂ᴴF̂ ⪰ (1 + α m) I (the skew
        # part Ĝ − Ĝᴴ drops out), so every eigenvalue has real part ≥ 1 + α m > 0. A non-finite
        # kernel would give non-finite blocks, which the solvers report as not converged.
        self._inv_t, self.info = torch.linalg.inv_ex(system_blocks.transpose(-2, -1).contiguous())
        self._conj: Tensor | None = None

    def solve(self, r: State) -> State:
        (x,) = r
        return (apply_blocks(_detached(x), self._inv_t),)

    def solve_t(self, r: State) -> State:
        # The transposed system's blocks are Rᴴ; in row layout x̂ ↦ x̂ (Rᴴ)ᵀ = x̂ conj(R).
        if self._conj is None:
            self._conj = adjoint_blocks(self._inv_t)
        (x,) = r
        return (apply_blocks(_detached(x), self._conj),)


def _detached(x: Tensor) -> Tensor:
    """``x`` without its graph (the solvers' states have none: no extra call per iteration)."""
    return x.detach() if x.requires_grad else x


class ConvOperator(LinearOperator):
    r"""W = (1 − m)I − FᵀF + Gᵀ − G for circular convolutions F, G on ``(C, H, W)`` states.

    Args:
        f_kernel, g_kernel: ``(C, C, k, k)`` kernels (k odd) of :func:`~mondeq.operators.fft.circular_conv2d`.
        m: monotonicity margin, > 0.
        size: the state's spatial size ``(H, W)``.

    ``mv`` and ``rmv`` apply W in the Fourier domain, :math:`\mathcal F^{-1}\hat W\mathcal F`, with
    the blocks :math:`\hat W(\omega)` built from the kernels (differentiable in both). This is the
    same operator as the direct convolutions (:func:`weight_kernel`; the tests check it) at a
    fraction of the cost: one 3 × 3 convolution costs ``9·C²·H·W`` real multiply-adds per sample,
    the block product ``4·C²·H·(W//2+1)``, about 4× fewer, and W needs three convolutions (or
    one 5 × 5). The spectral quantities (resolvent, :meth:`lipschitz`) use detached blocks; every
    block tensor is built once per operator.
    """

    def __init__(self, f_kernel: Tensor, g_kernel: Tensor, m: float, size: tuple[int, int]) -> None:
        m = check_margin(m)
        for name, kernel in (("f_kernel", f_kernel), ("g_kernel", g_kernel)):
            if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != kernel.shape[3]:
                raise InvalidSettingError(f"{name} must have shape (C, C, k, k), got {tuple(kernel.shape)}")
            check_kernel_size(kernel.shape[-1])
        if f_kernel.shape != g_kernel.shape:
            raise InvalidSettingError(f"f_kernel and g_kernel shapes differ: {tuple(f_kernel.shape)} "
                                      f"vs {tuple(g_kernel.shape)}")
        h, w = (int(s) for s in size)
        if min(h, w) < 1:
            raise InvalidSettingError(f"state size must be positive, got {(h, w)}")
        self.m = float(m)
        self.size = (h, w)
        self.state_shape = ((f_kernel.shape[0], h, w),)
        self.f_kernel = f_kernel
        self.g_kernel = g_kernel
        self._cache: dict[tuple[str, bool], Tensor] = {}
        self._memo = LastApplication()
        self._lipschitz: float | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.f_kernel.dtype

    @property
    def device(self) -> torch.device:
        return self.f_kernel.device

    def mv(self, z: State) -> State:
        (x,) = z
        return (self._apply("mv", x),)

    def rmv(self, z: State) -> State:
        (x,) = z
        return (self._apply("rmv", x),)

    def _apply(self, which: str, x: Tensor) -> Tensor:
        if any_transformed(x, self.f_kernel, self.g_kernel):
            return self._apply_plain(which, x)
        blocks = self._blocks(which)
        # W is often applied twice to the same tensor: with a graph for the implicit layer and
        # without one for the reported residual of the same state. The second application
        # reuses the first while neither tensor has changed.
        memo = self._memo.get(which, (x,))
        if memo is not None:
            x_hat, y = memo[0], memo[1].clone()
        else:
            x_hat = rfft2_blocks(x.detach())
            y = irfft2_blocks(torch.matmul(x_hat, blocks.detach()), self.size)
            self._memo.put(which, (x,), (y,), (x_hat, y))
        if torch.is_grad_enabled() and (x.requires_grad or blocks.requires_grad):
            # a detached alias: the memo's tensor itself must not become a graph output
            return BlockApply.apply(x, blocks, (x_hat, y.detach()))
        return y

    def _apply_plain(self, which: str, x: Tensor) -> Tensor:
        """W x (or Wᵀ x) from plain operations on freshly built blocks: for forward-mode tangents
        and ``torch.func`` transforms, which the cache, the memo and :class:`BlockApply` do not
        carry (:mod:`mondeq.operators.autodiff`)."""
        w = self._build_w_blocks()
        blocks = w.mT if which == "mv" else w.conj()
        return irfft2_blocks(torch.matmul(rfft2_blocks(x), blocks), self.size)

    def _build_w_blocks(self) -> Tensor:
        r""":math:`\hat W = (1 - m)I - \hat F^H\hat F + \hat G^H - \hat G` from the kernels, uncached."""
        f = kernel_blocks(self.f_kernel, self.size)
        g = kernel_blocks(self.g_kernel, self.size)
        return (1.0 - self.m) * identity_blocks(f.shape[0], f.shape[1], f) - f.mH @ f + g.mH - g

    def w_blocks(self) -> Tensor:
        r"""Blocks :math:`\hat W(\omega) = (1 - m)I - \hat F^H\hat F + \hat G^H - \hat G`, shape
        ``(H·(W//2+1), C, C)``.

        Differentiable in the kernels when gradients are enabled (cached either way).
        """
        return self._blocks("w")

    def _blocks(self, which: str) -> Tensor:
        # Blocks used without a graph (inside a no_grad solve) are detached copies of the ones
        # with a graph (the differentiable application after the solve): W's blocks are built
        # once, with a graph whenever the kernels require gradients, even inside no_grad.
        trainable = ((self.f_kernel.requires_grad or self.g_kernel.requires_grad)
                     and not torch.is_inference_mode_enabled())
        track = torch.is_grad_enabled() and trainable
        key = (which, track)
        if key not in self._cache:
            if not track and (which, True) in self._cache:
                self._cache[key] = self._cache[(which, True)].detach()
            elif which == "w":
                with torch.set_grad_enabled(trainable):
                    w = self._build_w_blocks()
                self._cache[("w", trainable)] = w
                if not track:
                    self._cache[key] = w.detach()
            elif which == "mv":  # row layout: x̂ ↦ x̂ Ŵᵀ
                self._cache[key] = self._blocks("w").transpose(-2, -1).contiguous()
            elif which == "rmv":  # Wᵀ has blocks Ŵᴴ; row layout x̂ ↦ x̂ conj(Ŵ)
                self._cache[key] = self._blocks("w").conj().resolve_conj()
            else:  # "i_minus_w", detached: the resolvent and the Lipschitz constant
                with torch.no_grad():
                    w = self._blocks("w")
                    self._cache[key] = identity_blocks(w.shape[0], w.shape[1], w) - w
        return self._cache[key]

    def identity_minus_w_blocks(self) -> Tensor:
        r"""Blocks of :math:`I - W`: :math:`mI + \hat F^H \hat F + \hat G - \hat G^H` (detached)."""
        with torch.no_grad():
            return self._blocks("i_minus_w")

    def resolvent(self, alpha: float) -> ConvResolvent:
        alpha = check_alpha(alpha)
        i_minus_w = self.identity_minus_w_blocks()
        eye = identity_blocks(i_minus_w.shape[0], i_minus_w.shape[1], i_minus_w)
        return ConvResolvent(eye + alpha * i_minus_w, alpha)

    def lipschitz(self) -> float:
        r"""Exact :math:`\|I - W\|_2`: the largest singular value over all frequency blocks.

        Computed in float64 whatever the kernels' dtype: float32 blocks left it up to ~1e-7
        below the norm, and FB's step rule and the certificate slack need an upper bound.
        """
        if self._lipschitz is None:
            with torch.no_grad():
                if self.dtype == torch.float64:
                    blocks = self.identity_minus_w_blocks()
                    self._lipschitz = float(torch.linalg.matrix_norm(blocks, ord=2).max())
                else:  # the same operator in float64 (float32 kernels are exact in float64)
                    f, g = self.f_kernel.detach().double(), self.g_kernel.detach().double()
                    self._lipschitz = ConvOperator(f, g, self.m, self.size).lipschitz()
        return self._lipschitz


def state_spectrum(c: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Flattened real states ``(K, C·H·W)`` → orthonormal half spectra ``(K, H·(W//2+1), C)``
    (differentiable): a state's coordinates in the blocks of :meth:`MonotoneConv.block_structure`."""
    ch, h, w = shape
    hat = torch.fft.rfft2(c.reshape(len(c), ch, h, w), norm="ortho")
    return hat.reshape(len(c), ch, -1).transpose(1, 2)


def weight_kernel(f_kernel: Tensor, g_kernel: Tensor, m: float) -> Tensor:
    r"""The ``(2k − 1) × (2k − 1)`` kernel of :math:`W = (1 - m)I - F^\top F + G^\top - G`.

    W is a circular convolution itself: ``circular_conv2d(z, weight_kernel(F, G, m))`` is
    ``ConvOperator(F, G, m, size).mv((z,))`` by direct convolution (for images of at least
    ``2k − 2`` pixels a side). A reference for tests and for readers; differentiable in both kernels.
    """
    c, k = f_kernel.shape[0], f_kernel.shape[-1]
    size = 2 * k - 1
    identity = torch.zeros(c, c, size, size, dtype=f_kernel.dtype, device=f_kernel.device)
    identity[:, :, k - 1, k - 1] = torch.eye(c, dtype=f_kernel.dtype, device=f_kernel.device)
    ftf = compose_kernels(adjoint_kernel(f_kernel), f_kernel)
    skew = pad_kernel(adjoint_kernel(g_kernel) - g_kernel, size)
    return (1.0 - m) * identity - ftf + skew


class MonotoneConv(MonotoneParametrisation):
    r"""Circular-convolution U (with bias), F and G for a monDEQ with ``channels`` channels.

    The input ``(in_channels, *input_size)`` is zero-padded by ``padding`` on every side, then
    :math:`Ux + b` is a circular convolution onto the state ``(channels, H, W)``, ``H = input
    height + 2·padding``. Zero padding is an isometry, so :meth:`input_norm` (the exact norm of the
    circular U on the padded grid) is exact for ``padding=0`` and a sound upper bound otherwise.

    Args:
        in_channels: input channels.
        channels: state channels C.
        input_size: ``(height, width)`` of the input, or one int for square inputs.
        kernel_size: odd kernel size of U, F and G.
        padding: zero padding added to the input (the paper pads MNIST by 1 to 30 × 30).
        m: monotonicity margin, > 0.
    """

    def __init__(self, in_channels: int, channels: int, input_size: int | tuple[int, int], *,
                 kernel_size: int = 3, padding: int = 0, m: float = 1.0,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__(m)
        p = check_kernel_size(kernel_size)
        if int(padding) != padding or padding < 0:
            raise InvalidSettingError(f"padding must be a non-negative integer, got {padding}")
        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        check_sizes("MonotoneConv", in_channels=in_channels, channels=channels, height=hw[0], width=hw[-1])
        kw = {"dtype": dtype, "device": device}
        self.input_shape = (in_channels, *hw)
        self.padding = int(padding)
        self.size = (hw[0] + 2 * self.padding, hw[1] + 2 * self.padding)
        if min(self.size) < p:  # circular padding of U
            raise InvalidSettingError(f"state size {self.size} is too small for kernel size {kernel_size}")
        self.U = nn.Conv2d(in_channels, channels, kernel_size, padding=p, padding_mode="circular", **kw)
        self.F = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size, **kw))
        self.G = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size, **kw))
        bound = 1.0 / math.sqrt(channels * kernel_size ** 2)
        nn.init.uniform_(self.F, -bound, bound)
        nn.init.uniform_(self.G, -bound, bound)

    @property
    def channels(self) -> int:
        """State channels C."""
        return self.F.shape[0]

    def bias(self, x: Tensor) -> State:
        if self.padding:
            x = nn.functional.pad(x, (self.padding,) * 4)
        return (self.U(x),)

    def operator(self) -> ConvOperator:
        return ConvOperator(self.F, self.G, self.m, self.size)

    def input_norm(self) -> Tensor:
        return spectral_norm(self.U.weight, self.size)

    def block_structure(self, *, input_scale: Tensor | None = None) -> BlockStructure:
        r"""One ``C × C`` block per frequency of the orthonormal rfft2 half spectrum: factor
        :math:`\hat F(\omega)`, skew :math:`\hat G - \hat G^H`, :math:`\hat U(\omega)D` (the
        circular U on the padded grid: exact for ``padding=0``, an upper bound otherwise), one
        multiplier per channel."""
        f, g = kernel_blocks(self.F, self.size), kernel_blocks(self.G, self.size)
        u = kernel_blocks(self.U.weight, self.size)
        u = u * expand_input_scale(input_scale, u.shape[-1], u.real).to(u.dtype)
        shape = (self.channels, *self.size)
        return BlockStructure(self.m, u, half_spectrum_weights(self.size, f).reshape(-1),
                              lambda c: state_spectrum(c, shape), torch.arange(self.channels, device=f.device),
                              factor=f, skew=g - g.mH)

    def extra_repr(self) -> str:
        return f"state=({self.channels}, {self.size[0]}, {self.size[1]}), padding={self.padding}, m={self.m:g}"


def power_iteration_norm(apply: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor],
                         x0: Tensor, *, iterations: int = 200) -> float:
    r"""Estimate :math:`\|A\|_2` by power iteration on :math:`A^\top A` (a cross-check, from below).

    Args:
        apply, adjoint: callables for A and Aᵀ on batches.
        x0: a starting batch of size 1, with the input shape of A.
        iterations: number of power steps.
    """
    x = x0 / x0.norm()
    for _ in range(iterations):
        y = adjoint(apply(x))
        x = y / y.norm()
    return float(apply(x).norm())
