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

import functools
import math

import torch
from torch import Tensor
from torch.nn import functional as nnf

from ..errors import InvalidSettingError

from .autodiff import is_transformed


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
    # Equal to rfft2(embed_kernel(kernel, size)) (the tests check it), but a k-tap DFT per axis
    # costs a fraction of an H × W FFT per channel pair and yields the block layout directly.
    h, w = size
    cdtype = _complex_dtype(kernel.dtype)
    phase_h = _tap_phases(kernel, h, h)            # (H, k)
    phase_w = _tap_phases(kernel, w, w // 2 + 1)   # (W//2+1, k)
    partial = torch.einsum("wb,ocab->waoc", phase_w, kernel.to(cdtype))
    return torch.einsum("ha,waoc->hwoc", phase_h, partial).reshape(-1, *kernel.shape[:2])


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _tap_phases(kernel: Tensor, n: int, frequencies: int) -> Tensor:
    """``exp(−2πi ω (p − a) / n)`` for ω < ``frequencies`` and taps a: the DFT of the embedded kernel."""
    return _phase_table(kernel.shape[-1], n, frequencies, _complex_dtype(kernel.dtype), kernel.device)


@functools.lru_cache(maxsize=64)
def _phase_table(k: int, n: int, frequencies: int, cdtype: torch.dtype, device: torch.device) -> Tensor:
    # Built once per (size, dtype, device): in float64 on the CPU (exact angles, and some
    # accelerators have no float64), then copied to the device once. Rebuilding it on every
    # forward pass cost a host-to-device copy (a host sync) per kernel spectrum. Callers only
    # read it. Never an inference tensor (a first call under inference_mode would otherwise
    # poison later calls that autograd must record).
    p = k // 2
    with torch.inference_mode(False), torch.no_grad():
        # integer phase numerators mod n keep the angles small and exact before the division
        numer = (torch.arange(frequencies).view(-1, 1) * (p - torch.arange(k)).view(1, -1)) % n
        angle = numer.to(torch.float64) * (-2.0 * math.pi / n)
        return torch.polar(torch.ones_like(angle), angle).to(cdtype).to(device)


def spectral_norm(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    r"""Exact :math:`\|K\|_2` of a circular convolution on ``H × W`` images.

    The DFT block-diagonalises the operator unitarily, so its norm is the largest singular value
    over the frequency blocks; the half spectrum suffices (conjugate blocks share singular values).
    Differentiable in ``kernel``.
    """
    return torch.linalg.matrix_norm(kernel_blocks(kernel, size), ord=2).max()


def rfft2_blocks(x: Tensor, *, norm: str = "backward") -> Tensor:
    """``(B, C, H, W)`` real → ``(H·(W//2+1), B, C)`` complex spectrum, one row block per frequency.

    ``norm`` is :func:`torch.fft.rfft2`'s (the multi-tier operator uses ``"ortho"``). Made of
    differentiable operations (autograd in every mode).

    The result is contiguous: batched matmul takes its fast BLAS path only on contiguous blocks.
    The FFT itself writes sample-major output (torch's CPU and CUDA transforms both put the batch
    dimensions first whatever the input strides), so one transpose copy is left; it is done as
    the transpose of one ``(B·C) × (H·(W//2+1))`` matrix, which torch copies about twice as fast
    as the equivalent 3-D permutation (6 ms instead of 12 ms at batch 128, 54 channels, 30 × 30,
    one CPU thread). Writing the frequency-major layout from the FFT directly (scipy's pocketfft
    with strided output) measured slower on the CPU (19–35 ms against 17 ms for FFT + copy).
    """
    b, c = x.shape[:2]
    spectrum = torch.fft.rfft2(x, norm=norm)
    return spectrum.reshape(b * c, -1).transpose(0, 1).contiguous().view(-1, b, c)


def irfft2_blocks(y: Tensor, size: tuple[int, int], *, norm: str = "backward") -> Tensor:
    """Inverse of :func:`rfft2_blocks` (same ``norm``): ``(H·(W//2+1), B, C)`` → ``(B, C, H, W)``
    real (contiguous). Differentiable in every autograd mode: a spectrum that carries a
    derivative takes torch's transform.

    No transpose copy: the transform reads the frequency-major layout through strides and writes
    sample-major output. On the CPU scipy's pocketfft does it (and makes no defensive copy of the
    input, which torch's c2r transform does: about 30% slower here). Elsewhere torch's transform
    on the strided view (:func:`_irfft2_torch`).
    """
    # scipy needs real storage and drops tangents: torch.func transforms (jvp, grad) wrap
    # tensors, and forward-mode duals carry tangents, so both take torch's path
    plain = y.device.type == "cpu" and not (y.requires_grad or is_transformed(y))
    return _irfft2_scipy(y, size, norm) if plain else _irfft2_torch(y, size, norm)


def _irfft2_scipy(y: Tensor, size: tuple[int, int], norm: str = "backward") -> Tensor:
    import scipy.fft  # on first use: at import it would add 0.2–0.3 s to `import mondeq`

    h, w = size
    nf, b, c = y.shape
    spectrum = y.detach().numpy().reshape(h, nf // h, b, c).transpose(2, 3, 0, 1)
    out = scipy.fft.irfft2(spectrum, s=(h, w), axes=(-2, -1), norm=norm, workers=torch.get_num_threads())
    return torch.from_numpy(out)


def _irfft2_torch(y: Tensor, size: tuple[int, int], norm: str = "backward") -> Tensor:
    # The transform over the frequency axes of the (H, W//2+1, B, C) view: the c2r transform
    # first runs a c2c pass over H into a fresh sample-major buffer (torch always does, since
    # c2r may overwrite its input), which takes the place of the old explicit transpose copy;
    # cuFFT reads the strided input through its advanced-layout strides. The result is
    # (B, C, H, W)-contiguous already, so the final ``contiguous`` is a no-op check.
    h, w = size
    nf, b, c = y.shape
    out = torch.fft.irfft2(y.reshape(h, nf // h, b, c), s=(h, w), dim=(0, 1), norm=norm)
    return out.permute(2, 3, 0, 1).contiguous()


def half_spectrum_weights(size: tuple[int, int], like: Tensor) -> Tensor:
    """Per-frequency multiplicity in the full spectrum, ``(H·(W//2+1), 1, 1)``: 2 for the columns
    ``0 < ω_w < W/2`` (they stand for their mirror too), 1 for ``ω_w = 0`` and ``ω_w = W/2``."""
    h, w = size
    cols = torch.ones(w // 2 + 1, dtype=like.real.dtype, device=like.device)
    cols[1 : w - w // 2] = 2.0
    return cols.repeat(h).view(-1, 1, 1)


def adjoint_blocks(blocks_t: Tensor) -> Tensor:
    """Transposed blocks of the adjoint operator: ``M(ω)ᵀ ↦ conj(M(ω))`` (materialised, contiguous)."""
    return blocks_t.transpose(-2, -1).conj().resolve_conj().contiguous()


class BlockApply(torch.autograd.Function):
    r"""Differentiable :func:`apply_blocks` with a hand-written backward.

    For :math:`y = \mathcal F^{-1}(\hat x M^\top)` (rows of the spectrum are samples):

    * the input gradient is the adjoint operator applied to :math:`\bar y`, i.e. the blocks
      :math:`M^H` (one more block application);
    * the block gradient is :math:`\hat x^H \hat g` with :math:`\hat g` the adjoint of the
      inverse transform applied to :math:`\bar y`: ``rfft2(ȳ) / (H·W)`` times the multiplicity of
      each half-spectrum column (:func:`half_spectrum_weights`).

    One batched matmul per gradient without conjugated views (autograd's generic complex matmul
    backward multiplies conjugated views, which are copied or split into one small matmul per
    frequency). The forward may be handed the spectrum and result of an identical earlier
    application (see :class:`~mondeq.operators.conv.ConvOperator`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, blocks_t: Tensor,  # type: ignore[override]
                precomputed: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if precomputed is None:
            x_hat = rfft2_blocks(x)
            y = irfft2_blocks(torch.matmul(x_hat, blocks_t), x.shape[-2:])
        else:
            x_hat, y = precomputed
        ctx.size = tuple(x.shape[-2:])
        ctx.save_for_backward(x_hat if ctx.needs_input_grad[1] else None,
                              blocks_t if ctx.needs_input_grad[0] else None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):  # type: ignore[override]
        x_hat, blocks_t = ctx.saved_tensors
        grad_x = grad_blocks = None
        if ctx.needs_input_grad[0]:
            grad_x = apply_blocks(grad_y, adjoint_blocks(blocks_t))
        if ctx.needs_input_grad[1]:
            h, w = ctx.size
            g_hat = rfft2_blocks(grad_y).mul_(half_spectrum_weights(ctx.size, x_hat) / (h * w))
            # x̂ᴴ ĝ = conj(x̂ᵀ conj(ĝ)): a plain transpose goes to BLAS as is, a conjugated
            # view (x̂.mH) would be materialised first
            grad_blocks = torch.matmul(x_hat.transpose(-2, -1), g_hat.conj_physical_()).conj_physical_()
        return grad_x, grad_blocks, None


def apply_blocks(x: Tensor, blocks_t: Tensor) -> Tensor:
    r"""Apply one block per frequency: :math:`\hat y(\omega) = M(\omega)\,\hat x(\omega)`.

    Args:
        x: ``(B, C, H, W)`` real images.
        blocks_t: the *transposed* blocks :math:`M(\omega)^\top`, ``(H·(W//2+1), C, C)`` (the
            spectrum is laid out with samples as rows, so ``x̂ @ Mᵀ`` is one batched matmul).

    Returns:
        ``(B, C, H, W)`` real images, :math:`\mathcal F^{-1} M \mathcal F x`; differentiable in
        ``x`` and ``blocks_t`` (through :class:`BlockApply`).
    """
    if torch.is_grad_enabled() and (x.requires_grad or blocks_t.requires_grad):
        return BlockApply.apply(x, blocks_t)
    return irfft2_blocks(torch.matmul(rfft2_blocks(x), blocks_t), x.shape[-2:])


def identity_blocks(nf: int, c: int, like: Tensor) -> Tensor:
    """``nf`` copies of the ``c × c`` identity (a broadcast view) in ``like``'s dtype and device."""
    return torch.eye(c, dtype=like.dtype, device=like.device).expand(nf, c, c)
