"""Benchmark: each architecture's training step against its hardware floor, before and after.

For the paper's MNIST models (FC 784 → 87, single conv 54 × 30 × 30, multi-tier 16/32/32;
batch 128, PR α = 1, tol 1e-2, Adam, float32) prints per architecture and per library checkout:

* the median training-step time (forward + backward + Adam) on real MNIST minibatches and the
  mean forward / backward iterations;
* the step's floor (:mod:`mondeq.perf.floor`: the unavoidable GEMMs, FFTs, inverses and fused
  elementwise passes, each timed alone at its shape) and the ratio step / floor;
* the tensor operations per PR iteration (ATen calls through the dispatcher, forward and
  backward problems; FFTs done by scipy are not ATen calls), and per training step.

On CUDA step times are wall times with the device synchronised, and the floor is priced with
the device's own rates. ``--before PATH`` names a second checkout of the library (e.g. ``git worktree add /tmp/base
HEAD~5``). Both libraries are loaded into this one process and their steps are interleaved
(A, B, A, B …) on the same batches, so both see the same machine load; the floor is priced once
with this checkout's model. With ``--threads 1`` (the default) step times and the floor's kernel
timings are this process's CPU time, which time slicing on a shared machine does not inflate
(wall times are printed beside them); they are still noisy there (caches, memory bandwidth are
shared). Operation and iteration counts are exact.

    OMP_NUM_THREADS=1 python experiments/bench_step.py --before /tmp/base31 --threads 1
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mondeq
import mondeq.training
import splitting
import splitting.prox
from mondeq.cli import device_arg
from mondeq.cli.main import run_program
from mondeq.data import load_mnist, normalize
from mondeq.perf import KernelTimer, floor_line, step_floor
from mondeq.perf.checkout import import_checkout

ARCHES = {"fc": 100, "conv": 4, "multitier": 4}  # timed steps per library (interleaved)


class OpCounter(TorchDispatchMode):
    """Counts every ATen call that reaches the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def library(mondeq, splitting) -> dict:
    """What the benchmark uses from one checkout's modules (its training programs' optimizer:
    ``mondeq.training.adam``, or PyTorch's default Adam in checkouts older than it)."""
    adam = getattr(mondeq.training, "adam", None) or (lambda params, lr: torch.optim.Adam(params, lr=lr))
    return {"adam": adam, "fc": mondeq.fc_mondeq, "conv": mondeq.single_conv_mondeq,
            "multitier": mondeq.multitier_mondeq, "pr": splitting.peaceman_rachford,
            "DiagonalQuadratic": splitting.prox.DiagonalQuadratic, "root": Path(mondeq.__file__).parents[1]}


class Run:
    """One library's model and optimizer for one architecture, stepped on shared batches."""

    def __init__(self, lib: dict, arch: str, device: torch.device) -> None:
        torch.manual_seed(0)
        self.lib, self.model, self.device = lib, lib[arch]().to(device), device
        self.opt = lib["adam"](self.model.parameters(), lr=1e-3)
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.iterations: list[tuple[int, int]] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, x: torch.Tensor, y: torch.Tensor, *, timed: bool) -> None:
        self.sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        logits, stats = self.model.forward_with_stats(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sync()
        if timed:
            self.times.append(time.perf_counter() - start)
            self.cpu_times.append(time.process_time() - start_cpu)
            self.iterations.append((stats.forward.iterations, stats.backward.iterations))

    def ops_per_iteration(self, x: torch.Tensor) -> tuple[float, float, int]:
        """ATen calls per forward and per backward PR iteration (difference of two capped solves
        that cannot converge), and per training step."""
        layer = self.model.layer
        with torch.no_grad():
            op = layer.linear.operator()
            bias = tuple(b.detach() for b in layer.linear.bias(self.model.normalization(x)
                                                               if self.model.normalization else x))
            jac = tuple((torch.rand_like(b) > 0.5).to(b.dtype) for b in bias)
            problems = ((op, layer.nonlinearity, bias),
                        (op.transpose(), self.lib["DiagonalQuadratic"](jac), bias))
            per = []
            for problem_op, prox, b in problems:
                counts = []
                for iters in (4, 8):
                    resolvent = problem_op.resolvent(1.0)
                    with OpCounter() as c:
                        self.lib["pr"](problem_op, prox, b, alpha=1.0, tol=1e-30, max_iter=iters,
                                       resolvent=resolvent)
                    counts.append(sum(c.counts.values()))
                per.append((counts[1] - counts[0]) / 4)
        with OpCounter() as c:
            self.step(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), timed=False)
        return per[0], per[1], sum(c.counts.values())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, default=None, help="another checkout to compare with")
    p.add_argument("--arch", nargs="+", choices=sorted(ARCHES), default=list(ARCHES))
    p.add_argument("--steps", type=float, default=1.0, help="scale of the timed steps per architecture")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the models, the data and the floor's kernels run (default: cuda when available)")
    args = p.parse_args(argv)
    cpu_clock = args.device.type == "cpu" and args.threads == 1
    torch.set_num_threads(args.threads)
    libs = {"after": library(mondeq, splitting)}
    if args.before is not None:
        libs = {"before": library(**import_checkout(args.before)), **libs}
    shapes = {"fc": mondeq.fc_mondeq, "conv": mondeq.single_conv_mondeq, "multitier": mondeq.multitier_mondeq}

    images, labels = load_mnist(train=True)
    images = normalize(images)
    timer = KernelTimer(args.device, torch.float32)
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch_size}  PR α=1 tol=1e-2  "
          f"libraries: " + ", ".join(f"{k}={v['root']}" for k, v in libs.items()))
    for arch in args.arch:
        runs = {name: Run(lib, arch, args.device) for name, lib in libs.items()}
        steps = max(1, round(ARCHES[arch] * args.steps))
        warmup = 3 if arch == "fc" else 1
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(images), generator=generator)
        for i in range(warmup + steps):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x, y = images[idx].to(args.device), labels[idx].to(args.device)
            x = x.reshape(len(x), -1) if arch == "fc" else x
            for run in runs.values():
                run.step(x, y, timed=i >= warmup)
        print(f"\n{arch}: {steps} timed steps per library, interleaved")
        for name, run in runs.items():
            fwd = statistics.mean(i for i, _ in run.iterations)
            bwd = statistics.mean(i for _, i in run.iterations)
            step = statistics.median(run.cpu_times if cpu_clock else run.times)
            floor = step_floor(shapes[arch](), args.batch_size, forward_iterations=fwd,
                               backward_iterations=bwd, timer=timer)
            ops_f, ops_b, ops_step = run.ops_per_iteration(x)
            print(f"  {name:6s} {floor_line(step, floor)}  (wall: median {1000 * statistics.median(run.times):.3g}"
                  f" ms, min {1000 * min(run.times):.3g} ms)  iterations fwd {fwd:.1f} bwd {bwd:.1f}")
            print(f"         ops per PR iteration: forward {ops_f:.0f}, backward {ops_b:.0f}; "
                  f"ops per step {ops_step}")
            print(f"         {floor.describe()}")


if __name__ == "__main__":  # one-line errors, as the mondeq command's
    sys.exit(run_program(main))
