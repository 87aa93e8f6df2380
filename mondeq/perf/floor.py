r"""A training step's floor: the unavoidable kernels, priced at this machine's measured rates.

:func:`~mondeq.operators.work.step_work` lists the kernels a step must run, from the shapes: per
forward and backward iteration one resolvent application (an 87 × 87 GEMM for the paper's FC
model; an rfft2, one batched complex C × C GEMM over the half spectrum and an irfft2 for conv)
and its fused elementwise passes, the factorisation, and the rest of the step. :class:`KernelTimer`
runs each distinct kernel alone on the device (a microbenchmark at exactly the step's shape; the
fastest of a few repeats), so its FLOP rate is what this machine reaches on that shape, not a
datasheet peak. The floor is

.. math:: T_\mathrm{floor} = n_\mathrm{fwd}\,T_\mathrm{iter} + n_\mathrm{bwd}\,T_\mathrm{iter}^\top
          + T_\mathrm{factor} + T_\mathrm{rest},

with the iteration counts the step actually ran. A step at ``1.0 ×`` its floor would spend all
its time in those kernels: what is above is small-operation overhead (dispatch, allocation,
extra elementwise passes, copies) or a worse layout. The estimate leaves out the smallest
kernels, so it is a lower bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import scipy.fft
import torch
from torch import Tensor

from ..operators.work import Kernel, StepWork, step_work


class KernelTimer:
    """Times kernels alone on ``device`` in ``dtype`` (complex kernels in the matching complex
    dtype), once per distinct kernel; the fastest of ``repeats`` runs after a warm-up, in CPU
    time when torch runs one CPU thread, else in wall time (synchronised on CUDA)."""

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
                 repeats: int = 5) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.repeats = int(repeats)
        self._seconds: dict[tuple, float] = {}

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def seconds(self, kernel: Kernel) -> float:
        """Seconds of one call of ``kernel`` (its ``count`` not applied)."""
        key = (kernel.kind, kernel.shape, kernel.complex)
        if key not in self._seconds:
            self._seconds[key] = self._measure(kernel)
        return self._seconds[key]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _clock(self) -> float:
        # one CPU thread: this process's CPU time, which a loaded machine's time slicing does not
        # inflate (the fastest of a few wall times still caught preemptions of 10 ms there)
        if self.device.type == "cpu" and torch.get_num_threads() == 1:
            return time.process_time()
        self._sync()
        return time.perf_counter()

    def _best(self, fn) -> float:
        fn()
        best = float("inf")
        for _ in range(self.repeats):
            start = self._clock()
            fn()
            best = min(best, self._clock() - start)
        return best

    def _measure(self, kernel: Kernel) -> float:
        kw = {"device": self.device, "dtype": self.dtype}
        cdtype = torch.complex128 if self.dtype == torch.float64 else torch.complex64
        if kernel.kind == "gemm":
            b, m, k, n = kernel.shape
            ckw = {"device": self.device, "dtype": cdtype} if kernel.complex else kw
            a, c = torch.randn(b, m, k, **ckw), torch.randn(b, k, n, **ckw)
            out = torch.empty(b, m, n, **ckw)
            if b == 1:
                a, c, out = a[0], c[0], out[0]
                return self._best(lambda: torch.mm(a, c, out=out))
            return self._best(lambda: torch.bmm(a, c, out=out))
        if kernel.kind == "rfft2":
            x = torch.randn(*kernel.shape, **kw)
            best = self._best(lambda: torch.fft.rfft2(x))
            if self.device.type == "cpu":  # the library may use either transform on the CPU
                best = min(best, self._best(lambda: scipy.fft.rfft2(x.numpy())))
            return best
        if kernel.kind == "irfft2":
            images, h, w = kernel.shape
            y = torch.fft.rfft2(torch.randn(images, h, w, **kw))
            best = self._best(lambda: torch.fft.irfft2(y, s=(h, w)))
            if self.device.type == "cpu":
                best = min(best, self._best(lambda: scipy.fft.irfft2(y.numpy(), s=(h, w))))
            return best
        if kernel.kind == "inverse":
            b, n = kernel.shape
            a = torch.randn(b, n, n, device=self.device, dtype=cdtype if kernel.complex else self.dtype)
            a = a + n * torch.eye(n, dtype=a.dtype, device=self.device)
            return self._best(lambda: torch.linalg.inv_ex(a))
        if kernel.kind == "stream":  # bandwidth of a three-transfer add at this size
            elements, transfers = kernel.shape
            x, y, out = (torch.randn(elements, **kw) for _ in range(3))
            return self._best(lambda: torch.add(x, y, out=out)) * transfers / 3
        raise ValueError(f"unknown kernel kind {kernel.kind!r}")

    def phase(self, kernels: tuple[Kernel, ...]) -> float:
        """Seconds of a list of kernels, each ``count`` times."""
        return sum(self.seconds(k) * k.count for k in kernels)

    def rates(self, kernels) -> dict[str, float]:
        """Measured FLOP/s per kind (``"stream"``: bytes/s) over ``kernels``, count-weighted."""
        work: dict[str, float] = {}
        secs: dict[str, float] = {}
        for k in kernels:
            kind = "complex gemm" if k.kind == "gemm" and k.complex else k.kind
            amount = k.bytes(self.itemsize) if k.kind == "stream" else k.flops
            work[kind] = work.get(kind, 0.0) + amount * k.count
            secs[kind] = secs.get(kind, 0.0) + self.seconds(k) * k.count
        return {kind: work[kind] / secs[kind] for kind in work if secs[kind] > 0}


@dataclass
class FloorReport:
    """A step's floor by phase (seconds), its FLOPs, and the rates it was priced at."""

    forward: float
    backward: float
    factorisation: float
    rest: float
    flops: float
    rates: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.factorisation + self.rest

    def ratio(self, step_seconds: float) -> float:
        """How many floors a measured step takes."""
        return step_seconds / self.total

    def describe(self) -> str:
        ms = 1000.0
        rates = ", ".join(f"{kind} {rate / 1e9:.1f} {'GB/s' if kind == 'stream' else 'GFLOP/s'}"
                          for kind, rate in self.rates.items())
        return (f"floor {ms * self.total:.3g} ms (forward iterations {ms * self.forward:.3g}, backward "
                f"{ms * self.backward:.3g}, factorisation {ms * self.factorisation:.3g}, rest "
                f"{ms * self.rest:.3g}; {self.flops / 1e9:.3g} GFLOP); rates: {rates}")


def step_floor(model: torch.nn.Module, batch: int, *, forward_iterations: float,
               backward_iterations: float, timer: KernelTimer | None = None,
               work: StepWork | None = None) -> FloorReport:
    """The floor of one PR training step of a monDEQ classifier (module docstring).

    Args:
        model: a classifier with ``model.layer.linear`` (the zoo's models) and ``model.head``.
        batch: samples per step.
        forward_iterations, backward_iterations: the solves' mean iteration counts.
        timer: the :class:`KernelTimer` to price with (default: the model's device and dtype).
        work: the step's kernels (default: :func:`~mondeq.operators.work.step_work` of the layer).
    """
    linear = model.layer.linear
    param = next(linear.parameters())
    if timer is None:
        timer = KernelTimer(param.device, param.dtype)
    if work is None:
        head = getattr(model, "head", None)
        weight: Tensor | None = getattr(head, "weight", None)
        kw = {} if weight is None else {"classes": weight.shape[0], "features": weight.shape[1]}
        work = step_work(linear, batch, **kw)
    kernels = [*work.forward_iteration, *work.backward_iteration, *work.factorisation, *work.rest]
    return FloorReport(forward=forward_iterations * timer.phase(work.forward_iteration),
                       backward=backward_iterations * timer.phase(work.backward_iteration),
                       factorisation=timer.phase(work.factorisation), rest=timer.phase(work.rest),
                       flops=work.flops(forward_iterations, backward_iterations),
                       rates=timer.rates(kernels))


def floor_line(step_seconds: float, floor: FloorReport | float) -> str:
    """``"step 4.46 ms = 1.9 × floor"`` for a training report. A step cannot beat its floor: a
    ratio below 1 means the floor's microbenchmarks were slowed by other work on the machine, and
    the line says so rather than report it."""
    total = floor.total if isinstance(floor, FloorReport) else float(floor)
    ratio = step_seconds / total
    return (f"step {1000 * step_seconds:.3g} ms = {ratio:.2g} × floor"
            + (" (below 1: the floor was priced while other work slowed this machine; rerun on an idle "
               "one for the ratio)" if ratio < 1 else ""))


def report_line(model: torch.nn.Module, batch: int, *, step_seconds: float, forward_iterations: float,
                backward_iterations: float) -> str:
    """The training report's line, ``"step 4.46 ms = 1.9 × floor (floor 2.3 ms: …)"``, priced
    now on the model's device (microbenchmarks: well under a second for FC, seconds for conv);
    says so when the layer's family has no floor model."""
    try:
        floor = step_floor(model, batch, forward_iterations=forward_iterations,
                           backward_iterations=backward_iterations)
    except NotImplementedError as err:
        return f"step {1000 * step_seconds:.3g} ms ({err})"
    return f"{floor_line(step_seconds, floor)} ({floor.describe()})"
