"""Benchmark: the single-convolution monDEQ on MNIST, float32, batch 128, on one device.

Shows what the FFT resolvent costs and what one training step costs, for the paper's model
(54 channels, 3 × 3 kernels, m = 1, inputs padded to a 30 × 30 state, Peaceman-Rachford with
tol 1e-2; Winston & Kolter 2020), on ``--device`` (default: CUDA when available, else the CPU):

* the factorisation: W's per-frequency blocks from the kernels and the batched inverse of the
  H·(W//2+1) = 480 complex 54 × 54 blocks of I + α(I − W) (what every forward pass builds);
* one resolvent apply (rfft2, one batched block matmul, irfft2) on a batch of 128 states;
* one training step (forward + backward + Adam) on real MNIST minibatches (the whole training set
  sits on the device), the mean forward and backward solver iterations, and the step's split:
  forward solve, backward solve, the factorisation and the resolvent applications inside them
  (estimated from the isolated timings), and the rest (U, the differentiable application of W and
  its parameter gradients, the head, Adam).

Every figure is a median over repeats, as wall time and (on the CPU) as this process's CPU time.
On CUDA the device is synchronised before and after each timed region only. On a shared machine
the wall time depends on the other jobs; with ``--threads 1`` the CPU time is close to the wall
time the same run takes on an idle machine. The paper's code took 3.37 s per step on this CPU
machine kind (factorisation 0.40 s, resolvent apply 0.22 s).

    python experiments/bench_conv.py --steps 20
    python experiments/bench_conv.py --threads 1 --padding 0 --device cpu   # a 28 × 28 state
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from mondeq import single_conv_mondeq
from mondeq.cli.main import run_program
from mondeq.cli.options import data_root_arg, device_arg, non_negative_int, positive_float, positive_int
from mondeq.data import batches, load_dataset, normalize

PAPER_STEP, PAPER_FACTOR, PAPER_APPLY = 3.37, 0.40, 0.22


class Clock:
    """Wall and process-CPU time; on CUDA the device is synchronised when the clock is read, so
    a timed region includes the device work it queued (and nothing outside timed regions syncs)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def now(self) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter(), time.process_time()


def timed(fn: Callable[[], object], repeats: int, clock: Clock) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = clock.now()
        fn()
        w2, c2 = clock.now()
        wall.append(w2 - w)
        cpu.append(c2 - c)
    return statistics.median(wall), statistics.median(cpu)


def ms(seconds: float) -> str:
    return f"{1000 * seconds:7.1f} ms"


def median(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive_int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed training steps first")
    p.add_argument("--repeats", type=positive_int, default=15, help="repeats of the factorisation / apply timings")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--alpha", type=positive_float, default=1.0, help="Peaceman-Rachford step size")
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch")
    p.add_argument("--padding", type=non_negative_int, default=1,
                   help="zero padding of the 28 × 28 input (1: the paper's 30 × 30 state; 0: 28 × 28)")
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model and the data live (default: cuda when available, else cpu)")
    p.add_argument("--data-root", type=data_root_arg, default=None,
                   help="folder holding mnist/ (default: $MONDEQ_DATA, the checkout's data/, then ~/.cache/mondeq)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, clock = args.device, Clock(args.device)
    torch.manual_seed(0)
    x, y = load_dataset("mnist", args.data_root, train=True)
    x, y = normalize(x).to(device), y.to(device)  # 188 MB: the whole training set on the device
    model = single_conv_mondeq(padding=args.padding, solver="pr", alpha=args.alpha, tol=1e-2,
                               max_iter=50).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    linear = model.layer.linear
    print(f"device={device} threads={torch.get_num_threads()}  state {linear.channels}×{linear.size[0]}"
          f"×{linear.size[1]}  batch {args.batch_size}  PR α={args.alpha:g} tol=1e-2  "
          f"{sum(q.numel() for q in model.parameters())} parameters")

    keys = ("step", "cpu", "forward", "backward", "optimizer", "fwd_solve", "bwd_solve", "fwd_it", "bwd_it")
    record: dict[str, list[float]] = {k: [] for k in keys}
    generator = torch.Generator(device=device).manual_seed(0)
    for i, (xb, yb) in enumerate(batches(x, y, args.batch_size, shuffle=True, generator=generator)):
        t0 = clock.now()
        logits, stats = model.forward_with_stats(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb)
        t1 = clock.now()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = clock.now()
        opt.step()
        t3 = clock.now()
        if i >= args.warmup:
            for key, value in (("step", t3[0] - t0[0]), ("cpu", t3[1] - t0[1]), ("forward", t1[0] - t0[0]),
                               ("backward", t2[0] - t1[0]), ("optimizer", t3[0] - t2[0]),
                               ("fwd_solve", stats.forward.time), ("bwd_solve", stats.backward.time),
                               ("fwd_it", stats.forward.iterations), ("bwd_it", stats.backward.iterations)):
                record[key].append(float(value))
        if len(record["step"]) == args.steps:
            break

    with torch.no_grad():
        # after the training steps, so that the blocks are those of a model in training
        factor = timed(lambda: linear.operator().resolvent(args.alpha), args.repeats, clock)
        resolvent = linear.operator().resolvent(args.alpha)
        state = linear.bias(x[: args.batch_size])
        apply = timed(lambda: resolvent.solve(state), args.repeats, clock)
        apply_t = timed(lambda: resolvent.solve_t(state), args.repeats, clock)

    step, step_cpu = median(record["step"]), median(record["cpu"])
    fwd_it, bwd_it = statistics.mean(record["fwd_it"]), statistics.mean(record["bwd_it"])
    fwd_solve, bwd_solve = median(record["fwd_solve"]), median(record["bwd_solve"])
    applies = fwd_it * apply[0] + bwd_it * apply_t[0]  # one resolvent application per PR iteration
    print("                   wall (median)     CPU (median)")
    print(f"factorisation    {ms(factor[0])}        {ms(factor[1])}    paper 400 ms")
    print(f"resolvent apply  {ms(apply[0])}        {ms(apply[1])}    paper 220 ms "
          f"(transposed: {ms(apply_t[0]).strip()} wall)")
    print(f"training step    {ms(step)}        {ms(step_cpu)}    paper 3370 ms  "
          f"({len(record['step'])} steps; wall min {ms(min(record['step'])).strip()}, "
          f"max {ms(max(record['step'])).strip()})")
    print(f"iterations       forward {fwd_it:.2f}, backward {bwd_it:.2f}")
    print("split of the step (wall medians; factorisation and applies estimated from the isolated timings):")
    print(f"  forward pass   {ms(median(record['forward']))}   of which the forward solve {ms(fwd_solve).strip()}")
    print(f"  backward pass  {ms(median(record['backward']))}   of which the backward solve {ms(bwd_solve).strip()}")
    print(f"  optimizer      {ms(median(record['optimizer']))}")
    print(f"  forward solve  {ms(fwd_solve)}   factorisation ≈ {ms(factor[0]).strip()}, "
          f"{fwd_it:.1f} applies ≈ {ms(fwd_it * apply[0]).strip()}")
    print(f"  backward solve {ms(bwd_solve)}   {bwd_it:.1f} transposed applies ≈ {ms(bwd_it * apply_t[0]).strip()}")
    print(f"  factorisation  {ms(factor[0])}   resolvent applies (both solves) ≈ {ms(applies).strip()}, "
          f"other solver work ≈ {ms(max(fwd_solve + bwd_solve - factor[0] - applies, 0.0)).strip()}")
    print(f"  the rest       {ms(step - fwd_solve - bwd_solve)}   (U, the differentiable application of W "
          f"and its parameter gradients, the head, Adam)")
    if clock.cuda:
        print("  (solve times are the solvers' own clocks; forward/backward pass times are synchronised)")
    print(f"speed-up vs the paper's 3.37 s/step (CPU): {PAPER_STEP / step:.1f}× (wall), "
          f"{PAPER_STEP / step_cpu:.1f}× (CPU time; target ≥ 8×)")
    return {"step": step, "step_cpu": step_cpu, "factorisation": factor[0], "apply": apply[0],
            "apply_t": apply_t[0], "forward_solve": fwd_solve, "backward_solve": bwd_solve,
            "forward_iterations": fwd_it, "backward_iterations": bwd_it}


if __name__ == "__main__":  # one-line errors, as the mondeq command's
    sys.exit(run_program(main))
