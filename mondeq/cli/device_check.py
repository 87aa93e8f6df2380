"""``mondeq device-check``: what a lent accelerator can tell us, in one capped run (≤ 8 minutes).

Four parts, each with its own share of ``--budget`` (a part that finishes early passes its time on;
a part whose time is spent records ``"skipped: out of time"`` for what it did not reach):

1. the CUDA tests: ``python -m pytest -q tests/test_cuda.py`` in a subprocess, when the
   ``tests`` folder sits beside the package (a source checkout); otherwise the report says so;
2. one training step (forward, implicit backward, Adam) of the paper's MNIST models (FC 784→87,
   single conv 54 channels, multi-tier (16, 32, 32); batch 128) on the device and on the CPU,
   eager, under ``torch.compile`` and under bf16 autocast: median step time, and the first
   (compiling) step's;
3. one epoch of CIFAR-10-sized synthetic data (50,000 random 3×32×32 images, batch 128) for the
   paper's CIFAR-10 single conv (81 channels) and multi-tier (16, 32, 60) models on the device
   (eager, :func:`mondeq.training.train_epoch`), timed on as many steps as its share allows,
   extrapolated to an epoch and to the paper's 40 epochs (1.4 h on an RTX 2080 Ti). Random data
   makes the solver iteration counts, hence the time, only indicative of real CIFAR-10;
4. the whole test suite with the time left.

Writes one JSON report (``--out``) and prints a table. ``--device cpu --quick`` runs the same code
on tiny sizes, a few steps and a fraction of an epoch, in well under a minute.

    mondeq device-check --out device_check.json
    mondeq device-check --device cpu --quick
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.nn import functional as nnf

from ..training.optimizer import adam
from .options import HelpFormatter, device_arg, positive_float

PAPER_EPOCHS = 40
PAPER_HOURS = 1.4  # the paper's CIFAR-10 training time on an RTX 2080 Ti
SHARES = {"cuda_tests": 0.3, "steps": 0.35, "epochs": 0.25}  # of the budget; the suite gets the rest
MODES = ("eager", "compiled", "bf16")


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of a run (the paper's, or tiny ones for ``--quick``)."""

    batch: int
    steps: int  # timed steps per cell (after two warm-up steps)
    fc: tuple[int, int]  # in, hidden
    conv: tuple[int, int]  # image side, channels
    multitier: tuple[int, tuple[int, ...]]  # image side, channels
    epoch_images: int
    epoch_conv: int  # CIFAR channels of the single conv model
    epoch_multitier: tuple[int, ...]
    epoch_max_steps: int | None = None  # a fraction of an epoch (--quick)


PAPER = Sizes(batch=128, steps=10, fc=(784, 87), conv=(28, 54), multitier=(28, (16, 32, 32)),
              epoch_images=50_000, epoch_conv=81, epoch_multitier=(16, 32, 60))
QUICK = Sizes(batch=8, steps=2, fc=(64, 8), conv=(8, 4), multitier=(16, (2, 4, 4)),
              epoch_images=50_000, epoch_conv=4, epoch_multitier=(2, 4, 4), epoch_max_steps=3)


class Clock:
    """A deadline: seconds left overall, and per part."""

    def __init__(self, budget: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tests_dir() -> Path | None:
    """The ``tests`` folder of a source checkout (beside the package), else ``None``."""
    root = Path(__file__).resolve().parents[2]
    return root / "tests" if (root / "tests" / "test_cuda.py").is_file() else None


def run_pytest(args: list[str], timeout: float) -> dict:
    """``python -m pytest -q ARGS`` from the checkout's root, killed after ``timeout`` seconds."""
    tests = _tests_dir()
    if tests is None:
        return {"status": "skipped: no tests folder beside the package (not a source checkout)"}
    if timeout < 5:
        return {"status": "skipped: out of time"}
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    try:
        done = subprocess.run(cmd, cwd=tests.parent, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-2000:]
        return {"status": f"timed out after {timeout:.0f} s", "seconds": timeout,
                "tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"status": "passed" if done.returncode in (0, 5) else f"failed (exit {done.returncode})",
            "summary": lines[-1] if lines else "", "seconds": round(time.perf_counter() - start, 1),
            "tail": "\n".join(lines[-30:]) if done.returncode not in (0, 5) else ""}


def build(kind: str, sizes: Sizes, *, cifar: bool = False):
    """A classifier and one batch of random inputs and labels for it (CPU, float32, seeded)."""
    from ..models.zoo import fc_mondeq, multitier_mondeq, single_conv_mondeq

    torch.manual_seed(0)
    n = sizes.batch
    if kind == "fc":
        model, x = fc_mondeq(*sizes.fc, 10), torch.rand(n, sizes.fc[0])
    elif kind == "conv":
        side, channels = (32, sizes.epoch_conv) if cifar else sizes.conv
        in_ch = 3 if cifar else 1
        model, x = single_conv_mondeq(in_ch, side, channels, 10), torch.rand(n, in_ch, side, side)
    else:
        side, channels = (32, sizes.epoch_multitier) if cifar else sizes.multitier
        in_ch = 3 if cifar else 1
        model = multitier_mondeq(in_ch, side, channels, 10)
        x = torch.rand(n, in_ch, side, side)
    return model, x, torch.randint(0, 10, (n,))


def time_step(kind: str, device: torch.device, mode: str, sizes: Sizes, *, deadline: float,
              backend: str) -> dict:
    """Median wall time of a training step of ``kind`` on ``device`` in ``mode``, in ms."""
    model, x, y = build(kind, sizes)
    model, x, y = model.to(device), x.to(device), y.to(device)
    opt = adam(model.parameters(), lr=1e-3)
    if mode == "compiled":
        torch._dynamo.reset()  # each model compiles afresh: no cache entries of earlier cells
        forward = torch.compile(model, backend=backend)
    else:
        forward = model
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16"
           else contextlib.nullcontext())
    times = []
    for i in range(sizes.steps + 2):
        if i >= 2 and time.perf_counter() > deadline:
            break
        _sync(device)
        start = time.perf_counter()
        with amp:
            loss = nnf.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    steady = times[2:] or times[-1:]
    return {"model": kind, "device": str(device), "mode": mode, "batch": sizes.batch,
            "median_ms": round(1000 * statistics.median(steady), 3),
            "first_step_s": round(times[0], 3), "timed_steps": len(times[2:])}


def _random_batches(images: int, batch: int, device: torch.device, *, deadline: float,
                    max_steps: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch of random CIFAR-10-sized minibatches (3×32×32 in [0, 1), 10 classes), made on the
    device one at a time, stopping early when ``deadline`` (perf_counter) has passed."""
    gen = torch.Generator(device=device).manual_seed(0)
    for step, i in enumerate(range(0, images, batch)):
        if step and (time.perf_counter() > deadline or step == max_steps):
            return
        n = min(batch, images - i)
        yield (torch.rand(n, 3, 32, 32, device=device, generator=gen),
               torch.randint(0, 10, (n,), device=device, generator=gen))


def time_epoch(kind: str, device: torch.device, sizes: Sizes, *, seconds: float) -> dict:
    """Train on CIFAR-10-sized random data for at most ``seconds``; extrapolate to an epoch and to
    the paper's 40 epochs."""
    from ..training.loop import train_epoch

    model, _, _ = build(kind, sizes, cifar=True)
    model = model.to(device)
    opt = adam(model.parameters(), lr=1e-3)
    n = sizes.epoch_images
    steps_total = math.ceil(n / sizes.batch)
    # one step first: allocations and kernel selection are not epoch time
    train_epoch(model, opt, _random_batches(n, sizes.batch, device, deadline=0.0), steps=1,
                progress=False)
    _sync(device)
    start = time.perf_counter()
    stats = train_epoch(model, opt, _random_batches(n, sizes.batch, device, deadline=start + seconds,
                                                    max_steps=sizes.epoch_max_steps),
                        steps=steps_total, progress=False)
    _sync(device)
    elapsed = time.perf_counter() - start
    epoch_s = elapsed * steps_total / stats.steps
    channels = sizes.epoch_conv if kind == "conv" else list(sizes.epoch_multitier)
    return {"model": kind, "channels": channels, "device": str(device), "batch": sizes.batch,
            "images": n, "timed_steps": stats.steps, "steps_per_epoch": steps_total,
            "timed_s": round(elapsed, 4), "epoch_s": round(epoch_s, 2),
            "forward_iterations": round(stats.forward_iterations, 2),
            "backward_iterations": round(stats.backward_iterations, 2),
            f"hours_{PAPER_EPOCHS}_epochs": round(PAPER_EPOCHS * epoch_s / 3600, 3),
            "paper_hours": PAPER_HOURS,
            "speedup_vs_paper": round(PAPER_HOURS * 3600 / (PAPER_EPOCHS * epoch_s), 2)}


def _guarded(fn: Callable[[], dict], what: dict) -> dict:
    """A cell's result, or its error (one failing cell never stops the check)."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - the report records every failure
        return {**what, "error": f"{type(err).__name__}: {err}"[:500]}


def check(device: torch.device, *, quick: bool = False, budget: float = 480.0, backend: str | None = None,
          tests: bool = True) -> dict:
    """Run the parts in order within ``budget`` seconds; return the report (a JSON-able dict)."""
    sizes = QUICK if quick else PAPER
    backend = backend or ("aot_eager" if quick else "inductor")
    clock = Clock(budget)
    report: dict = {"device": str(device), "quick": quick, "budget_s": budget, "backend": backend,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "cpu_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    part_end = clock.start

    def part(name: str) -> float:
        """Perf-counter deadline of the next part: its share, plus what earlier parts left."""
        nonlocal part_end
        part_end = max(time.perf_counter(), part_end) + SHARES[name] * budget
        return min(part_end, clock.start + budget)

    deadline = part("cuda_tests")
    report["cuda_tests"] = (run_pytest(["tests/test_cuda.py"], deadline - time.perf_counter())
                            if tests else {"status": "skipped: --no-tests"})

    deadline = part("steps")
    devices = [device] + ([torch.device("cpu")] if device.type != "cpu" else [])
    cells = [(k, d, m) for d in devices for m in MODES for k in ("fc", "conv", "multitier")]
    report["steps"] = []
    for i, (kind, dev, mode) in enumerate(cells):
        what = {"model": kind, "device": str(dev), "mode": mode}
        left = deadline - time.perf_counter()
        if left <= 0:
            report["steps"].append({**what, "error": "skipped: out of time"})
            continue
        cell_deadline = time.perf_counter() + left / (len(cells) - i)
        report["steps"].append(_guarded(lambda: time_step(kind, dev, mode, sizes, deadline=cell_deadline,
                                                          backend=backend), what))

    deadline = part("epochs")
    report["epochs"] = []
    for i, kind in enumerate(("conv", "multitier")):
        seconds = (deadline - time.perf_counter()) / (2 - i)
        what = {"model": kind, "device": str(device)}
        report["epochs"].append(_guarded(lambda: time_epoch(kind, device, sizes, seconds=seconds), what)
                                if seconds > 0 else {**what, "error": "skipped: out of time"})

    if not tests:
        report["suite"] = {"status": "skipped: --no-tests"}
    elif quick:
        report["suite"] = {"status": "skipped: --quick"}
    else:
        report["suite"] = run_pytest(["-x", "--ignore=tests/test_cuda.py"], clock.left() - 5)
    report["elapsed_s"] = round(clock.elapsed(), 1)
    return report


def table(report: dict) -> str:
    """The report as plain text."""
    out = [f"device-check on {report['device']}" + (f" ({report['gpu']})" if report["gpu"] else "")
           + f", torch {report['torch']}, compile backend {report['backend']}, "
           f"{report['elapsed_s']} s of {report['budget_s']:g} s"]
    for name in ("cuda_tests", "suite"):
        r = report[name]
        out.append(f"{name:10s} {r['status']}  {r.get('summary', '')}")
    out.append(f"{'model':10s} {'device':7s} {'mode':9s} {'step ms':>9s} {'first s':>8s}")
    for r in report["steps"]:
        if "error" in r:
            out.append(f"{r['model']:10s} {r['device']:7s} {r['mode']:9s} {r['error']}")
        else:
            out.append(f"{r['model']:10s} {r['device']:7s} {r['mode']:9s} {r['median_ms']:9.2f} "
                       f"{r['first_step_s']:8.2f}")
    for r in report["epochs"]:
        if "error" in r:
            out.append(f"epoch {r['model']}: {r['error']}")
        else:
            out.append(f"epoch {r['model']} {r['channels']}: {r['epoch_s']:.1f} s/epoch (from "
                       f"{r['timed_steps']} of {r['steps_per_epoch']} steps, iterations "
                       f"{r['forward_iterations']}/{r['backward_iterations']}), "
                       f"{PAPER_EPOCHS} epochs ≈ {r[f'hours_{PAPER_EPOCHS}_epochs']:.2f} h vs the paper's "
                       f"{PAPER_HOURS} h: {r['speedup_vs_paper']}×")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="the accelerator to check (default: cuda when available)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, few steps, a fraction of an epoch, no whole suite (< 1 minute)")
    p.add_argument("--budget", type=positive_float, default=None,
                   help="seconds for the whole check (default 480; 45 with --quick)")
    p.add_argument("--backend", default=None,
                   help="torch.compile backend (default: inductor; aot_eager with --quick)")
    p.add_argument("--no-tests", action="store_true", help="skip the test-suite parts")
    p.add_argument("--out", type=Path, default=Path("device_check.json"), help="the JSON report")
    args = p.parse_args(argv)
    budget = args.budget or (45.0 if args.quick else 480.0)
    report = check(args.device, quick=args.quick, budget=budget, backend=args.backend,
                   tests=not args.no_tests)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"report: {args.out}")
    failed = any(report[k]["status"].startswith(("failed", "timed out")) for k in ("cuda_tests", "suite"))
    return 1 if failed else 0


if __name__ == "__main__":  # python -m mondeq.cli.device_check: the same as mondeq device-check
    from .main import run_command

    sys.exit(run_command("device-check"))
