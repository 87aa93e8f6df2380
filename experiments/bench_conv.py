"""Benchmark: the single-convolution monDEQ on MNIST, float32, batch 128, on this CPU.

Shows what the FFT resolvent costs and what one training step costs, for the paper's model
(54 channels, 3 × 3 kernels, m = 1, inputs padded to a 30 × 30 state, Peaceman-Rachford with
tol 1e-2; Winston & Kolter 2020):

* the factorisation: W's per-frequency blocks from the kernels and the batched inverse of the
  H·(W//2+1) = 480 complex 54 × 54 blocks of I + α(I − W) (what every forward pass builds);
* one resolvent apply (rfft2, one batched block matmul, irfft2) on a batch of 128 states;
* one training step (forward + backward + Adam) on real MNIST minibatches, and the mean forward
  and backward solver iterations.

Every figure is a median over repeats, as wall time and as this process's CPU time. On a shared
machine the wall time depends on the other jobs; with ``--threads 1`` the CPU time is close to
the wall time the same run takes on an idle machine. The paper's code took 3.37 s per step on
this machine kind (factorisation 0.40 s, resolvent apply 0.22 s).

    python experiments/bench_conv.py --steps 20
    python experiments/bench_conv.py --threads 1 --padding 0   # a 28 × 28 state
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from mondeq import single_conv_mondeq
from mondeq.data import batches, load_mnist, normalize

PAPER_STEP, PAPER_FACTOR, PAPER_APPLY = 3.37, 0.40, 0.22


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def ms(seconds: float) -> str:
    return f"{1000 * seconds:7.1f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--repeats", type=int, default=15, help="repeats of the factorisation / apply timings")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--alpha", type=float, default=1.0, help="Peaceman-Rachford step size")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--padding", type=int, default=1,
                   help="zero padding of the 28 × 28 input (1: the paper's 30 × 30 state; 0: 28 × 28)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = load_mnist(train=True)
    x = normalize(x)
    model = single_conv_mondeq(padding=args.padding, solver="pr", alpha=args.alpha, tol=1e-2, max_iter=50)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    linear = model.layer.linear
    print(f"threads={torch.get_num_threads()}  state {linear.channels}×{linear.size[0]}×{linear.size[1]}  "
          f"batch {args.batch_size}  PR α={args.alpha:g} tol=1e-2  "
          f"{sum(q.numel() for q in model.parameters())} parameters")

    wall, cpu, fwd_it, bwd_it, fwd_solve, bwd_solve = [], [], [], [], [], []
    data = batches(x, y, args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    for i, (xb, yb) in enumerate(data):
        w, c = time.perf_counter(), time.process_time()
        logits, stats = model.forward_with_stats(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
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
        factor = timed(lambda: linear.operator().resolvent(args.alpha), args.repeats)
        resolvent = linear.operator().resolvent(args.alpha)
        state = linear.bias(x[: args.batch_size])
        apply = timed(lambda: resolvent.solve(state), args.repeats)
        apply_t = timed(lambda: resolvent.solve_t(state), args.repeats)

    step = (statistics.median(wall), statistics.median(cpu))
    print("                   wall (median)     CPU (median)")
    print(f"factorisation    {ms(factor[0])}        {ms(factor[1])}    paper 400 ms")
    print(f"resolvent apply  {ms(apply[0])}        {ms(apply[1])}    paper 220 ms "
          f"(transposed: {ms(apply_t[0]).strip()} wall)")
    print(f"training step    {ms(step[0])}        {ms(step[1])}    paper 3370 ms  "
          f"({len(wall)} steps; wall min {ms(min(wall)).strip()}, max {ms(max(wall)).strip()})")
    print(f"iterations       forward {statistics.mean(fwd_it):.2f}, backward {statistics.mean(bwd_it):.2f}")
    print(f"solves (wall)    forward {ms(statistics.median(fwd_solve)).strip()} (with the factorisation), "
          f"backward {ms(statistics.median(bwd_solve)).strip()}; the rest of the step is U, one "
          f"differentiable application of W, its parameter gradients, the head and Adam")
    print(f"speed-up vs the paper's 3.37 s/step: {PAPER_STEP / step[0]:.1f}× (wall), "
          f"{PAPER_STEP / step[1]:.1f}× (CPU time; target ≥ 8×)")


if __name__ == "__main__":
    main()
