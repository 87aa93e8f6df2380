r"""The arithmetic a training step must do, counted from the shapes, per operator family.

A Peaceman-Rachford training step of a monDEQ does, and cannot avoid:

* per forward iteration, one resolvent application :math:`(I + \alpha(I - W))^{-1}r` and the
  iteration's elementwise work (one fused pass forming :math:`2z - u` from :math:`z, u`; one
  fused pass forming :math:`u, z = \mathrm{prox}(u)` and the residual's norms from
  :math:`z_{1/2}, u_{1/2}`: seven state-sized transfers);
* per backward iteration, the same with the transposed resolvent;
* once, the factorisation (W's blocks and their inverses);
* the rest: :math:`Ux + b`, the differentiable application of W at the solution, the readout and
  head, their gradients, the parameter gradients of W and U, and the optimizer's update.

Each piece is a list of :class:`Kernel` (a GEMM, a batched complex GEMM, an FFT, a batched
inverse, or a memory stream), from which :mod:`mondeq.perf.floor` prices the step with this
machine's measured rates. Only the large kernels are counted (the readout, the kernels' own
spectra and other pieces far below 1 % of a step are left out), so the floor is a lower bound.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from .conv import MonotoneConv
from .dense import MonotoneLinear
from .multitier import MonotoneMultiTier

PR_STREAMS = 7
"""State-sized memory transfers of one PR iteration's elementwise work (fused; module docstring)."""

ADAM_STREAMS = 7
"""Parameter-sized transfers of one Adam update (read p, g, m, v; write p, m, v)."""


@dataclass(frozen=True)
class Kernel:
    r"""One kind of unavoidable kernel call and its shape.

    Kinds and shapes:

    * ``"gemm"``: ``(batch, m, k, n)``, ``batch`` products of an m × k and a k × n matrix,
      :math:`2\,\mathrm{batch}\,mkn` real FLOPs (four times that when ``complex``);
    * ``"rfft2"``, ``"irfft2"``: ``(images, h, w)`` real 2-D transforms,
      :math:`2.5\,N\log_2 N` FLOPs an image of :math:`N = hw` pixels (the usual real-FFT count);
    * ``"inverse"``: ``(batch, n)``, ``batch`` inverses of n × n matrices, :math:`2n^3` each
      (four times that when ``complex``);
    * ``"stream"``: ``(elements, transfers)``, elementwise work bound by memory: ``transfers``
      reads or writes of ``elements`` values, no FLOPs counted.

    ``count``: how many times the step runs it.
    """

    kind: str
    shape: tuple[int, ...]
    complex: bool = False
    count: int = 1

    @property
    def flops(self) -> float:
        """Real floating-point operations of one call."""
        factor = 4.0 if self.complex else 1.0
        if self.kind == "gemm":
            b, m, k, n = self.shape
            return factor * 2.0 * b * m * k * n
        if self.kind in ("rfft2", "irfft2"):
            images, h, w = self.shape
            return 2.5 * images * h * w * math.log2(h * w)
        if self.kind == "inverse":
            b, n = self.shape
            return factor * 2.0 * b * n ** 3
        return 0.0

    def bytes(self, itemsize: int) -> float:
        """Bytes a ``"stream"`` kernel moves (0 for the others: their rates include their traffic)."""
        if self.kind != "stream":
            return 0.0
        elements, transfers = self.shape
        return float(elements * transfers * itemsize)


@dataclass(frozen=True)
class StepWork:
    """The kernels of one training step, by phase (see the module docstring)."""

    forward_iteration: tuple[Kernel, ...]
    backward_iteration: tuple[Kernel, ...]
    factorisation: tuple[Kernel, ...]
    rest: tuple[Kernel, ...]

    def flops(self, forward_iterations: float, backward_iterations: float) -> float:
        """Real FLOPs of the whole step for the given iteration counts."""
        def total(kernels: tuple[Kernel, ...]) -> float:
            return sum(k.flops * k.count for k in kernels)
        return (forward_iterations * total(self.forward_iteration)
                + backward_iterations * total(self.backward_iteration)
                + total(self.factorisation) + total(self.rest))


def _adam(parametrisation, head_parameters: int) -> Kernel:
    params = sum(p.numel() for p in parametrisation.parameters()) + head_parameters
    return Kernel("stream", (params, ADAM_STREAMS))


@functools.singledispatch
def step_work(linear, batch: int, *, classes: int = 10, features: int | None = None) -> StepWork:
    """The :class:`StepWork` of a PR training step of a layer with parametrisation ``linear``.

    Args:
        linear: the layer's parametrisation (``model.layer.linear``).
        batch: samples in the batch.
        classes: the head's outputs.
        features: the head's inputs (default: the state's size).

    Raises:
        NotImplementedError: a family without a work count (register one beside this file's).
    """
    raise NotImplementedError(f"no floor model for {type(linear).__name__}: register a step_work "
                              f"for it in mondeq/operators/work.py")


@step_work.register
def _dense(linear: MonotoneLinear, batch: int, *, classes: int = 10,
           features: int | None = None) -> StepWork:
    n, d = linear.F.shape[0], linear.input_shape[0]
    f = n if features is None else features
    iteration = (Kernel("gemm", (1, batch, n, n)), Kernel("stream", (batch * n, PR_STREAMS)))
    factorisation = (Kernel("gemm", (1, n, n, n)), Kernel("inverse", (1, n)))
    rest = (
        Kernel("gemm", (1, batch, d, n)),      # Ux
        Kernel("gemm", (1, batch, n, n)),      # W z at the solution, with its graph
        Kernel("gemm", (1, batch, f, classes)),   # head
        Kernel("gemm", (1, f, batch, classes)),   # head's weight gradient
        Kernel("gemm", (1, batch, classes, f)),   # gradient into z
        Kernel("gemm", (1, n, batch, n)),      # W's gradient uᵀz
        Kernel("gemm", (1, n, n, n), count=2),  # through FᵀF and the skew part into F, G
        Kernel("gemm", (1, n, batch, d)),      # U's gradient
        _adam(linear, (f + 1) * classes),
    )
    return StepWork(iteration, iteration, factorisation, rest)


def _spectral_rest(channels: int, size: tuple[int, int], batch: int, classes: int,
                   features: int) -> list[Kernel]:
    """The readout's pooling pass and the head (forward, weight gradient, state gradient)."""
    h, w = size
    return [Kernel("stream", (batch * channels * h * w, 2)),
            Kernel("gemm", (1, batch, features, classes)), Kernel("gemm", (1, features, batch, classes)),
            Kernel("gemm", (1, batch, classes, features))]


@step_work.register
def _conv(linear: MonotoneConv, batch: int, *, classes: int = 10,
          features: int | None = None) -> StepWork:
    c, cin, k = linear.F.shape[0], linear.U.weight.shape[1], linear.F.shape[-1]
    h, w = linear.size
    nf, pixels = h * (w // 2 + 1), h * w
    f = c * (h // 4) * (w // 4) if features is None else features
    images = batch * c
    iteration = (Kernel("rfft2", (images, h, w)), Kernel("gemm", (nf, batch, c, c), complex=True),
                 Kernel("irfft2", (images, h, w)), Kernel("stream", (images * pixels, PR_STREAMS)))
    factorisation = (Kernel("gemm", (nf, c, c, c), complex=True),   # F̂ᴴF̂
                     Kernel("inverse", (nf, c), complex=True))
    rest = [
        Kernel("gemm", (1, batch * pixels, cin * k * k, c)),          # U x
        Kernel("rfft2", (images, h, w)), Kernel("gemm", (nf, batch, c, c), complex=True),
        Kernel("irfft2", (images, h, w)),                              # W z with its graph
        Kernel("rfft2", (images, h, w)), Kernel("gemm", (nf, c, batch, c), complex=True),  # block gradient
        Kernel("gemm", (nf, c, c, c), complex=True, count=2),          # through F̂ᴴF̂ into F
        Kernel("gemm", (1, cin * k * k, batch * pixels, c)),          # U's gradient
        *_spectral_rest(c, (h, w), batch, classes, f),
        _adam(linear, (f + 1) * classes),
    ]
    return StepWork(iteration, iteration, factorisation, tuple(rest))


@step_work.register
def _multitier(linear: MonotoneMultiTier, batch: int, *, classes: int = 10,
               features: int | None = None) -> StepWork:
    channels, sizes = linear.channels, list(linear.sizes)
    cin, k = linear.U.weight.shape[1], linear.U.weight.shape[-1]
    tiers = len(channels)
    iteration, factorisation = [], []
    rest = [Kernel("gemm", (1, batch * sizes[0][0] * sizes[0][1], cin * k * k, channels[0]))]  # U x
    for i, (c, (h, w)) in enumerate(zip(channels, sizes)):
        nf, images = h * (w // 2 + 1), batch * c
        iteration += [Kernel("rfft2", (images, h, w)), Kernel("irfft2", (images, h, w)),
                      Kernel("stream", (images * h * w, PR_STREAMS)),
                      Kernel("gemm", (nf, batch, c, c), complex=True)]          # K'⁻¹ y
        factorisation += [Kernel("gemm", (nf, c, c, c), complex=True), Kernel("inverse", (nf, c), complex=True)]
        # W z with its graph and its kernel gradient: per tier A, G and the stride-2 map, both ways
        rest += [Kernel("rfft2", (images, h, w), count=2), Kernel("irfft2", (images, h, w)),
                 Kernel("rfft2", (images, h, w), count=2),
                 Kernel("gemm", (nf, batch, c, c), complex=True, count=3),
                 Kernel("gemm", (nf, c, batch, c), complex=True, count=3)]
        if i == tiers - 1:
            break
        c2, (hc, wc) = channels[i + 1], sizes[i + 1]
        nc = hc * (wc // 2 + 1)
        iteration += [Kernel("gemm", (nc, batch, c, c2), complex=True, count=4),   # L K'⁻¹ y, per alias
                      Kernel("gemm", (nc, batch, c2, c2), complex=True, count=3),  # Z w, ÂᴴZ w, ZÂ x
                      Kernel("gemm", (nc, batch, c2, c), complex=True, count=4)]   # K'⁻¹ Lᴴ q, per alias
        factorisation += [Kernel("gemm", (nf, c2, c, c), complex=True, count=2),   # E, F
                          Kernel("gemm", (nf, c2, c, c2), complex=True),            # P
                          Kernel("inverse", (nc, c2), complex=True),                # Z
                          Kernel("gemm", (nc, c2, c2, c2), complex=True, count=4)]  # ÂᴴZ, ZÂ, correction
        rest += [Kernel("gemm", (nf, batch, c, c2), complex=True, count=2),
                 Kernel("gemm", (nf, c2, batch, c), complex=True, count=2)]
    last_c, (lh, lw) = channels[-1], sizes[-1]
    f = last_c * 16 if features is None else features
    rest += [*_spectral_rest(last_c, (lh, lw), batch, classes, f), _adam(linear, (f + 1) * classes)]
    return StepWork(tuple(iteration), tuple(iteration), tuple(factorisation), tuple(rest))
