"""Benchmark: the single-convolution monDEQ on MNIST, float32, batch 128, on this CPU.

Shows what the FFT resolvent costs and what one training step costs, for the paper's model
(54 channels, 3 × 3 kernels, m = 1, inputs padded to a 30 × 30 state, Peaceman-Rachford with
tol 1e-2; Winston & Kolter 2020):

* the factorisation: W's per-frequency blocks from the kernels and the batched inverse of the
  H·(W//2+1) = 480 complex 54 × 54 blocks of I + α(I − W) (what every forward pass builds);
* one resolvent apply (rfft2, one batched block matmul, irfft2) on a batch of 128 states;
* one training step (forward + backward + Adam) on real MNIST minibatches, and the mean forward
  and backward solver iterations.

Medians over repeats (the machine may be shared). The paper's code took 3.37 s per step on this
machine kind (factorisation 0.40 s, resolvent apply 0.22 s).

    python experiments/bench_conv.py --steps 20
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mondeq import single_conv_mondeq
from mondeq.data import batches, load_mnist, normalize

PAPER_STEP, PAPER_FACTOR, PAPER_APPLY = 3.37, 0.40, 0.22


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--repeats", type=int, default=15, help="repeats of the factorisation / apply timings")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--alpha", type=float, default=1.0, help="Peaceman-Rachford step size")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = load_mnist(train=True)
    x = normalize(x)
    model = single_conv_mondeq(solver="pr", alpha=args.alpha, tol=1e-2, max_iter=50)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    linear = model.layer.linear
    print(f"threads={torch.get_num_threads()}  state {linear.channels}×{linear.size[0]}×{linear.size[1]}  "
          f"batch {args.batch_size}  PR α={args.alpha:g} tol=1e-2  "
          f"{sum(q.numel() for q in model.parameters())} parameters")

    steps, fwd_it, bwd_it = [], [], []
    data = batches(x, y, args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
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
            fwd_it.append(stats.forward.iterations)
            bwd_it.append(stats.backward.iterations)
        if len(steps) == args.steps:
            break

    with torch.no_grad():
        # after training steps, so the blocks are those of a model in training
        factor = timed(lambda: linear.operator().resolvent(args.alpha), args.repeats)
        resolvent = linear.operator().resolvent(args.alpha)
        state = linear.bias(x[: args.batch_size])
        apply = timed(lambda: resolvent.solve(state), args.repeats)
        apply_t = timed(lambda: resolvent.solve_t(state), args.repeats)

    step = statistics.median(steps)
    print(f"factorisation   {1000 * factor:8.1f} ms   (paper 400 ms: {PAPER_FACTOR / factor:.1f}× faster)")
    print(f"resolvent apply {1000 * apply:8.1f} ms   transposed {1000 * apply_t:.1f} ms   "
          f"(paper 220 ms: {PAPER_APPLY / apply:.1f}× faster)")
    print(f"training step   {1000 * step:8.1f} ms   median of {len(steps)} "
          f"(min {1000 * min(steps):.1f}, max {1000 * max(steps):.1f})")
    print(f"iterations      forward {statistics.mean(fwd_it):.2f}  backward {statistics.mean(bwd_it):.2f}")
    print(f"vs the paper's {PAPER_STEP} s/step: {PAPER_STEP / step:.1f}× faster (target ≥ 8×)")


if __name__ == "__main__":
    main()
