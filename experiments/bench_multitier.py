"""Benchmark: the multi-tier convolutional monDEQ on MNIST, float32, batch 128.

Shows what the exact multi-tier resolvent costs and what one training step costs, for the
paper's MNIST multi-tier model (channels 16, 32, 32 on tiers 28 × 28, 14 × 14, 7 × 7; m = 1;
Peaceman-Rachford α = 1, tol 1e-2; Winston & Kolter 2020):

* the factorisation: the kernels' spectra, the batched inverses of the per-frequency blocks of
  every tier's Schur complement and of the stride-2 coupling (what every forward pass builds);
* one resolvent apply (an rfft2 per tier, the forward and backward sweeps across tiers, an
  irfft2 per tier) and its transpose on a batch of states;
* one training step (forward + backward + Adam) on real MNIST minibatches, and the mean forward
  and backward solver iterations.

Every figure is a median over repeats, as wall time and as this process's CPU time; with
``--threads 1`` on a shared machine the CPU time is close to what the run takes alone. The
paper's code took 5.2 s per step with 1 thread and 2.1 s with 2 threads on this machine kind.

    OMP_NUM_THREADS=1 python experiments/bench_multitier.py --threads 1 --steps 10
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from mondeq import multitier_mondeq
from mondeq.cli.main import run_program
from mondeq.cli.options import data_root_arg, device_arg, non_negative_int, positive_float, positive_int
from mondeq.data import batches, load_dataset, normalize

PAPER_STEP = {1: 5.2, 2: 2.1}


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def ms(seconds: float) -> str:
    return f"{1000 * seconds:7.1f} ms"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:K (default: cuda when available)")
    p.add_argument("--steps", type=positive_int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed training steps first")
    p.add_argument("--repeats", type=positive_int, default=10, help="repeats of the factorisation / apply timings")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--alpha", type=positive_float, default=1.0, help="Peaceman-Rachford step size")
    p.add_argument("--tol", type=positive_float, default=1e-2, help="solver tolerance (relative residual)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[16, 32, 32],
                   help="channels per tier")
    p.add_argument("--data-root", type=data_root_arg, default=None,
                   help="folder holding mnist/ (default: $MONDEQ_DATA, the checkout's data/, then ~/.cache/mondeq)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    x, y = load_dataset("mnist", args.data_root, train=True)
    x = normalize(x)
    model = multitier_mondeq(1, 28, tuple(args.channels), solver="pr", alpha=args.alpha,
                                  tol=args.tol, max_iter=50).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    linear = model.layer.linear
    tiers = " ".join(f"{c}×{h}×{w}" for c, (h, w) in zip(linear.channels, linear.sizes))
    print(f"device={device} threads={torch.get_num_threads()}  tiers {tiers}  batch {args.batch_size}  "
          f"PR α={args.alpha:g} tol={args.tol:g}  {sum(q.numel() for q in model.parameters())} parameters")

    wall, cpu, fwd_it, bwd_it, fwd_solve, bwd_solve = [], [], [], [], [], []
    data = batches(x, y, args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    for i, (xb, yb) in enumerate(data):
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        w, c = time.perf_counter(), time.process_time()
        logits, stats = model.forward_with_stats(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i >= args.warmup:
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
            fwd_it.append(stats.forward.iterations)
            bwd_it.append(stats.backward.iterations)
            fwd_solve.append(stats.forward.time)
            bwd_solve.append(stats.backward.time)
        if len(wall) == args.steps:
            break

    with torch.no_grad():
        # after the training steps, so that the blocks are those of a model in training
        factor = timed(lambda: linear.operator().resolvent(args.alpha), args.repeats, sync)
        resolvent = linear.operator().resolvent(args.alpha)
        state = linear.bias(x[: args.batch_size].to(device))
        apply = timed(lambda: resolvent.solve(state), args.repeats, sync)
        apply_t = timed(lambda: resolvent.solve_t(state), args.repeats, sync)
        mv = timed(lambda: linear.operator().mv(state), args.repeats, sync)

    step = (statistics.median(wall), statistics.median(cpu))
    print("                   wall (median)     CPU (median)")
    print(f"factorisation    {ms(factor[0])}        {ms(factor[1])}")
    print(f"resolvent apply  {ms(apply[0])}        {ms(apply[1])}    "
          f"(transposed: {ms(apply_t[0]).strip()} wall)")
    print(f"W application    {ms(mv[0])}        {ms(mv[1])}    (no graph; building the blocks included)")
    print(f"training step    {ms(step[0])}        {ms(step[1])}    "
          f"({len(wall)} steps; wall min {ms(min(wall)).strip()}, max {ms(max(wall)).strip()})")
    print(f"iterations       forward {statistics.mean(fwd_it):.2f}, backward {statistics.mean(bwd_it):.2f}")
    print(f"solves (wall)    forward {ms(statistics.median(fwd_solve)).strip()} (with the factorisation), "
          f"backward {ms(statistics.median(bwd_solve)).strip()}")
    paper = PAPER_STEP.get(torch.get_num_threads())
    if paper is not None and device.type == "cpu":
        print(f"speed-up vs the paper's {paper} s/step at {torch.get_num_threads()} thread(s): "
              f"{paper / step[0]:.1f}× (wall), {paper / step[1]:.1f}× (CPU time; target ≥ 5×)")


if __name__ == "__main__":  # one-line errors, as the mondeq command's
    sys.exit(run_program(main))
