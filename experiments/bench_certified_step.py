"""Benchmark: one certified-training step with the joint bound, for the FC, conv and multi-tier models.

A step is what ``mondeq train --certified-eps ε --certified-bound joint`` does per batch: forward
solve, the offset cross entropy on logits raised by ε times the joint margin constants (the
certificate's bound, with its graph: :mod:`mondeq.robustness.joint_training`), backward (implicit
solve plus the constants' graph), Adam step. Models as the zoo builds them for MNIST (paper
widths; multi-tier narrower by default, ``--multitier-channels``), float32, batch 128 of real
MNIST test images, on ``--device``. Printed per model: the median step time over ``--steps``
steps after ``--warmup``, and the median time of the joint constants alone (their forward and
backward, after a parameter change so that nothing is cached), each with its interquartile range.

Only the public API is used, so the program runs against any checkout of the library, e.g. to
compare two (run them in turn, several times, on a quiet machine; one thread keeps them
comparable)::

    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/other/checkout python experiments/bench_certified_step.py
    OMP_NUM_THREADS=1 python experiments/bench_certified_step.py --models fc conv --steps 40

A checkout whose loss has no joint path for a model says so on that model's line.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

import mondeq
from mondeq.cli import device_arg
from mondeq.data import load_mnist
from mondeq.errors import MonDEQError
from mondeq.robustness.certified_losses import make_certified_loss

MODELS = ("fc", "conv", "multitier")


def _quartiles(samples: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
    return q[0], statistics.median(samples), q[-1]


def bench(kind: str, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> str:
    """One model's line: step and constants medians (ms), or why the joint loss is missing."""
    torch.manual_seed(0)
    config = {"model": kind, "dataset": "mnist"}
    if kind == "multitier":
        config["channels"] = args.multitier_channels
    model = mondeq.build_model(config).to(args.device)
    model.train()
    try:
        loss_fn = make_certified_loss("offset-ce", model, args.eps, bound="joint")
    except MonDEQError as err:
        return f"{kind:10s} joint-bound loss refused by this checkout: {' '.join(str(err).split())[:100]}"
    from mondeq.robustness.joint_training import differentiable_joint_constants

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cuda = args.device.type == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize(args.device)
        return time.process_time() if args.cpu_time else time.perf_counter()

    steps, constants = [], []
    for i in range(args.warmup + args.steps):
        lo = (i * args.batch) % (len(x) - args.batch)
        xb, yb = x[lo:lo + args.batch], y[lo:lo + args.batch]
        start = now()
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        probe = copy.deepcopy(model)  # its own (empty) caches: the step above keeps its cost
        mid = now()
        differentiable_joint_constants(probe).sum().backward()
        end = now()
        if i >= args.warmup:
            steps.append(mid - start)
            constants.append(end - mid)
        print(f"\r{kind}: step {i + 1}/{args.warmup + args.steps}", end="", file=sys.stderr, flush=True)
    print("\r", end="", file=sys.stderr)
    s, c = _quartiles(steps), _quartiles(constants)
    return (f"{kind:10s} step {1e3 * s[1]:8.1f} ms (IQR {1e3 * s[0]:.1f}–{1e3 * s[2]:.1f})   "
            f"joint constants {1e3 * c[1]:7.1f} ms (IQR {1e3 * c[0]:.1f}–{1e3 * c[2]:.1f})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to time")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch-size", dest="batch", type=int, default=128, help="training batch")
    p.add_argument("--batch", dest="batch", type=int, help=argparse.SUPPRESS)  # the former spelling
    p.add_argument("--eps", type=float, default=0.3, help="certified radius of the loss (pixel scale)")
    p.add_argument("--multitier-channels", type=int, nargs="+", default=[8, 16, 16],
                   help="channels per tier of the multi-tier model (the paper's: 16 32 32)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with this process's CPU time instead of the wall clock (CPU only; less "
                        "sensitive to other processes on a loaded machine)")
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model and the data live (default: cuda when available, else cpu)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        p.error("need --steps >= 1, --warmup >= 0 and --batch-size >= 1")
    x, y = load_mnist(train=False)
    x, y = x[:2048].float().to(args.device), y[:2048].to(args.device)
    if x.dtype == torch.uint8 or float(x.max()) > 1.5:  # pixels in [0, 1] (the models normalise)
        x = x / 255.0
    print(f"mondeq from {mondeq.__file__}; {torch.get_num_threads()} thread(s); {args.device}; "
          f"{'CPU' if args.cpu_time else 'wall'} time")
    for kind in args.models:
        print(bench(kind, args, x, y), flush=True)
    return 0


if __name__ == "__main__":
    try:  # the mondeq command's one-line errors; an older checkout being timed may lack them
        from mondeq.cli.main import run_program
    except ImportError:
        def run_program(entry):
            try:
                return entry(sys.argv[1:])
            except MonDEQError as err:
                sys.exit(f"error: {' '.join(str(err).split())}")
    sys.exit(run_program(main))
