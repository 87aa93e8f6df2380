"""Benchmark: one training step (forward + backward + Adam) of the paper's FC monDEQ on MNIST.

Model and settings as in Winston & Kolter (2020): 87 hidden units, m = 1, ReLU, Peaceman-Rachford
with α = 1, tol 1e-2, batch 128, float32, on ``--device`` (default: CUDA when available, else the
CPU; the whole training set sits on the device). Prints the median step time over ``--steps`` real
MNIST minibatches (after warm-up), its split into forward solve / backward solve / factorisation /
resolvent applications / the rest, and the mean solver iterations. The factorisation (LU of the
87 × 87 matrix I + α(I − W)) and one resolvent application are timed in isolation after training;
inside the solves their share is estimated from those timings. On CUDA the device is synchronised
before and after each timed region only. The paper's code measured 4.5–5.6 ms per step on this CPU
machine kind.

    python experiments/bench_fc.py --steps 400
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from mondeq import fc_mondeq
from mondeq.cli.main import run_program
from mondeq.cli.options import data_root_arg, device_arg, non_negative_int, positive_float, positive_int
from mondeq.data import batches, load_dataset, normalize
from splitting import SOLVERS, STEP_LIMITS


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive_int, default=400, help="timed steps")
    p.add_argument("--warmup", type=non_negative_int, default=30, help="untimed steps first")
    p.add_argument("--repeats", type=positive_int, default=50, help="repeats of the factorisation / apply timings")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--solver", default="pr", choices=sorted(SOLVERS), help="splitting method")
    p.add_argument("--alpha", type=positive_float, default=1.0, help="its step size")
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model and the data live (default: cuda when available, else cpu)")
    p.add_argument("--data-root", type=data_root_arg, default=None,
                   help="folder holding mnist/ (default: $MONDEQ_DATA, the checkout's data/, then ~/.cache/mondeq)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    cuda = device.type == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter()

    torch.manual_seed(0)
    x, y = load_dataset("mnist", args.data_root, train=True)
    x, y = normalize(x).reshape(len(x), -1).to(device), y.to(device)
    model = fc_mondeq(784, 87, 10, m=1.0, solver=args.solver, alpha=args.alpha, tol=1e-2,
                      max_iter=50).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps, fwd, bwd, fwd_it, bwd_it = [], [], [], [], []
    generator = torch.Generator(device=device).manual_seed(0)
    for i, (xb, yb) in enumerate(batches(x, y, 128, shuffle=True, generator=generator)):
        start = now()
        logits, stats = model.forward_with_stats(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        elapsed = now() - start
        if i >= args.warmup:
            steps.append(elapsed)
            fwd.append(stats.forward.time)
            bwd.append(stats.backward.time)
            fwd_it.append(stats.forward.iterations)
            bwd_it.append(stats.backward.iterations)
        if len(steps) == args.steps:
            break

    def timed(fn: Callable[[], object]) -> float:
        fn()
        samples = []
        for _ in range(args.repeats):
            start = now()
            fn()
            samples.append(now() - start)
        return statistics.median(samples)

    linear = model.layer.linear
    with torch.no_grad():
        factor = timed(lambda: linear.operator().resolvent(args.alpha))
        resolvent = linear.operator().resolvent(args.alpha)
        state = linear.bias(x[:128])
        apply = timed(lambda: resolvent.solve(state))
    ms = lambda v: 1000 * statistics.median(v)  # noqa: E731
    n_fwd, n_bwd = statistics.mean(fwd_it), statistics.mean(bwd_it)
    uses_resolvent = args.solver not in STEP_LIMITS
    applies = 1000 * (n_fwd + n_bwd) * apply if uses_resolvent else 0.0
    factorisation = 1000 * factor if uses_resolvent else 0.0
    step, f, b = ms(steps), ms(fwd), ms(bwd)
    print(f"device={device} threads={torch.get_num_threads()} solver={args.solver} alpha={args.alpha} "
          f"steps={len(steps)}")
    print(f"training step  median {step:.2f} ms  (forward solve {f:.2f} ms, backward solve {b:.2f} ms, "
          f"rest {step - f - b:.2f} ms)")
    print(f"inside the solves (isolated timings): factorisation {factorisation:.2f} ms, "
          f"{n_fwd + n_bwd:.1f} resolvent applications ≈ {applies:.2f} ms ({1000 * apply:.3f} ms each), "
          f"other solver work ≈ {max(f + b - factorisation - applies, 0.0):.2f} ms")
    print(f"iterations     forward {n_fwd:.2f}  backward {n_bwd:.2f}")
    if cuda:
        print("(solve times are the solvers' own clocks; the step time is synchronised)")
    print(f"vs the paper's 4.5–5.6 ms/step (CPU): {4.5 / step:.2f}–{5.6 / step:.2f}× faster")
    return {"step": step, "forward_solve": f, "backward_solve": b, "factorisation": factorisation,
            "apply": 1000 * apply}


if __name__ == "__main__":  # one-line errors, as the mondeq command's
    sys.exit(run_program(main))
