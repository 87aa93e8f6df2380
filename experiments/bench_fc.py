"""Benchmark: one training step (forward + backward + Adam) of the paper's FC monDEQ on MNIST.

Model and settings as in Winston & Kolter (2020): 87 hidden units, m = 1, ReLU, Peaceman-Rachford
with α = 1, tol 1e-2, batch 128, float32. Prints the median step time over ``--steps`` real
MNIST minibatches (after warm-up), its split into forward solve / backward solve / the rest, and
the mean solver iterations. The paper's code measured 4.5–5.6 ms per step on this machine kind.

    python experiments/bench_fc.py --steps 400
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mondeq import fc_mondeq
from mondeq.data import batches, load_mnist, normalize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400, help="timed steps")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--solver", default="pr")
    p.add_argument("--alpha", type=float, default=1.0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = load_mnist(train=True)
    x = normalize(x).reshape(len(x), -1)
    model = fc_mondeq(784, 87, 10, m=1.0, solver=args.solver, alpha=args.alpha, tol=1e-2, max_iter=50)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps, fwd, bwd, fwd_it, bwd_it = [], [], [], [], []
    data = batches(x, y, 128, shuffle=True, generator=torch.Generator().manual_seed(0))
    for i, (xb, yb) in enumerate(data):
        start = time.perf_counter()
        logits, stats = model.forward_with_stats(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        elapsed = time.perf_counter() - start
        if i >= args.warmup:
            steps.append(elapsed)
            fwd.append(stats.forward.time)
            bwd.append(stats.backward.time)
            fwd_it.append(stats.forward.iterations)
            bwd_it.append(stats.backward.iterations)
        if len(steps) == args.steps:
            break
    ms = lambda v: 1000 * statistics.median(v)  # noqa: E731
    print(f"threads={torch.get_num_threads()} solver={args.solver} alpha={args.alpha} steps={len(steps)}")
    print(f"training step  median {ms(steps):.2f} ms  (forward solve {ms(fwd):.2f} ms, "
          f"backward solve {ms(bwd):.2f} ms, rest {ms(steps) - ms(fwd) - ms(bwd):.2f} ms)")
    print(f"iterations     forward {statistics.mean(fwd_it):.2f}  backward {statistics.mean(bwd_it):.2f}")
    print(f"vs the paper's 4.5–5.6 ms/step: {4.5 / ms(steps):.2f}–{5.6 / ms(steps):.2f}× faster")


if __name__ == "__main__":
    main()
