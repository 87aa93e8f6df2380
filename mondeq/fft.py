r"""Circular convolutions in the Fourier domain: kernel spectra, block solves, rfft2 helpers.

A 2-D convolution with circular padding is diagonalised by the 2-D DFT: for every frequency
:math:`\omega = (\omega_h, \omega_w)` the output spectrum is a :math:`C_\text{out} \times C_\text{in}`
block times the input spectrum,

.. math:: \widehat{Kx}(\omega) = \hat K(\omega)\,\hat x(\omega).

The state is real, so its spectrum is Hermitian, :math:`\hat x(-\omega) = \overline{\hat x(\omega)}`,
and :func:`torch.fft.rfft2` keeps only the half spectrum :math:`\omega_w \le W/2`: ``H·(W//2+1)``
blocks instead of ``H·W``. The kernel is real too, so :math:`\hat K(-\omega) = \overline{\hat
K(\omega)}`: the blocks left out are the complex conjugates of blocks kept, with the same singular
values. Every spectral quantity of the operator (its norm, the blocks of its resolvent) can
therefore be read off the half spectrum exactly, and :func:`torch.fft.irfft2` with ``s=(H, W)``
inverts the transform exactly for even and odd sizes.

Layout: block tensors have shape ``(H·(W//2+1), C_out, C_in)``, one block per frequency in
row-major ``(ω_h, ω_w)`` order, so that one batched ``matmul`` applies all of them.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as nnf

from splitting.errors import InvalidSettingError


def check_kernel_size(kernel_size: int) -> int:
    """Circular 'same' padding needs an odd kernel; returns the padding ``kernel_size // 2``."""
    if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
        raise InvalidSettingError(f"kernel_size must be a positive odd integer (a centred circular "
                                  f"convolution), got {kernel_size}")
    return int(kernel_size) // 2


def circular_conv2d(x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""Cross-correlation with circular padding, output size = input size.

    .. math:: (Kx)_o[i, j] = \sum_{c,a,b} K_{o,c,a,b}\; x_c[(i + a - p) \bmod H,\ (j + b - p) \bmod W]

    with ``p = k // 2`` (``kernel`` of shape ``(C_out, C_in, k, k)``, k odd).
    """
    p = kernel.shape[-1] // 2
    if p:
        x = nnf.pad(x, (p, p, p, p), mode="circular")
    return nnf.conv2d(x, kernel, bias)


def adjoint_kernel(kernel: Tensor) -> Tensor:
    r"""The kernel of the adjoint of :func:`circular_conv2d`: channels swapped, taps flipped.

    Substituting :math:`a' = k - 1 - a` in :math:`\langle Kx, y\rangle` gives
    :math:`(K^\top y)_c[i,j] = \sum_{o,a'} K_{o,c,k-1-a',k-1-b'}\; y_o[(i + a' - p) \bmod H, \dots]`,
    again a centred circular cross-correlation.
    """
    return kernel.transpose(0, 1).flip(-2, -1)


def compose_kernels(outer: Tensor, inner: Tensor) -> Tensor:
    r"""The kernel of :math:`K_\text{outer} K_\text{inner}` (apply ``inner`` first), size ``k₁ + k₂ − 1``.

    Composing two centred circular cross-correlations gives a centred one whose taps add the
    offsets: :math:`(AB)_{o,i,d} = \sum_{c,\ a + b = d} A_{o,c,b} B_{c,i,a}`, computed as one small
    full convolution of the kernels. Differentiable in both.
    """
    k = inner.shape[-1]
    # conv2d cross-correlates; flipping `outer` turns it into the convolution over a + b = d.
    full = nnf.conv2d(inner.transpose(0, 1), outer.flip(-2, -1), padding=k - 1)
    return full.transpose(0, 1)


def pad_kernel(kernel: Tensor, size: int) -> Tensor:
    """Zero-pad a centred odd kernel to ``size × size`` taps (same operator)."""
    p = (size - kernel.shape[-1]) // 2
    return nnf.pad(kernel, (p, p, p, p)) if p else kernel


def embed_kernel(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    r"""The ``H × W`` circular filter :math:`h` with :math:`Kx = h \circledast x` (true convolution).

    :func:`circular_conv2d` computes :math:`\sum_a K_a\,x[n + a - p]`, i.e. a circular convolution
    with :math:`h[(p - a) \bmod N] = K_a`. Taps that wrap (kernel wider than the image) add up.
    Returns shape ``(C_out, C_in, H, W)``; differentiable in ``kernel``.
    """
    k = kernel.shape[-1]
    p = k // 2
    place = [_placement(p, k, n, kernel) for n in size]
    return torch.einsum("ha,ocab,wb->ochw", place[0], kernel, place[1])


def _placement(p: int, k: int, n: int, like: Tensor) -> Tensor:
    """0/1 matrix (n × k) mapping tap a to position (p − a) mod n."""
    rows = (p - torch.arange(k, device=like.device)) % n
    place = torch.zeros(n, k, dtype=like.dtype, device=like.device)
    place[rows, torch.arange(k, device=like.device)] = 1.0
    return place


def kernel_blocks(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    r"""Per-frequency blocks :math:`\hat K(\omega)` of a circular convolution, half spectrum.

    Args:
        kernel: ``(C_out, C_in, k, k)`` real kernel of :func:`circular_conv2d`.
        size: the image size ``(H, W)``.

    Returns:
        Complex tensor ``(H·(W//2+1), C_out, C_in)`` with
        ``rfft2(circular_conv2d(x, kernel))[b, :, ω] == blocks[ω] @ rfft2(x)[b, :, ω]``.
    """
    spectrum = torch.fft.rfft2(embed_kernel(kernel, size))  # (C_out, C_in, H, W//2+1)
    return spectrum.flatten(2).permute(2, 0, 1)


def spectral_norm(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    r"""Exact :math:`\|K\|_2` of a circular convolution on ``H × W`` images.

    The DFT block-diagonalises the operator unitarily, so its norm is the largest singular value
    over the frequency blocks; the half spectrum suffices (conjugate blocks share singular values).
    Differentiable in ``kernel``.
    """
    return torch.linalg.matrix_norm(kernel_blocks(kernel, size), ord=2).max()


def rfft2_blocks(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` real → ``(H·(W//2+1), B, C)`` complex spectrum, one row block per frequency.

    The result is contiguous: batched matmul takes its fast BLAS path only on contiguous blocks.
    """
    b, c = x.shape[:2]
    return torch.fft.rfft2(x).reshape(b, c, -1).permute(2, 0, 1).contiguous()


def irfft2_blocks(y: Tensor, size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`rfft2_blocks`: ``(H·(W//2+1), B, C)`` → ``(B, C, H, W)`` real."""
    h, w = size
    nf, b, c = y.shape
    # Transposing first (one copy) is faster than letting the c2r transform read strided input.
    return torch.fft.irfft2(y.permute(1, 2, 0).contiguous().reshape(b, c, h, nf // h), s=(h, w))


def apply_blocks(x: Tensor, blocks_t: Tensor) -> Tensor:
    r"""Apply one block per frequency: :math:`\hat y(\omega) = M(\omega)\,\hat x(\omega)`.

    Args:
        x: ``(B, C, H, W)`` real images.
        blocks_t: the *transposed* blocks :math:`M(\omega)^\top`, ``(H·(W//2+1), C, C)`` (the
            spectrum is laid out with samples as rows, so ``x̂ @ Mᵀ`` is one batched matmul).

    Returns:
        ``(B, C, H, W)`` real images, :math:`\mathcal F^{-1} M \mathcal F x`.
    """
    return irfft2_blocks(torch.matmul(rfft2_blocks(x), blocks_t), x.shape[-2:])


def identity_blocks(nf: int, c: int, like: Tensor) -> Tensor:
    """``nf`` copies of the ``c × c`` identity (a broadcast view) in ``like``'s dtype and device."""
    return torch.eye(c, dtype=like.dtype, device=like.device).expand(nf, c, c)
