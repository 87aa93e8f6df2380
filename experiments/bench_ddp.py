"""Benchmark: data-parallel scaling, training throughput (images/s) of 1 vs N processes.

Each configuration starts its own group of processes (torch.multiprocessing, the same
``env://`` rendezvous torchrun uses; gloo on CPU, nccl on CUDA), one thread per process on CPU,
and trains the paper's MNIST monDEQ (FC: 87 hidden units; conv: 54 channels) with DDP at a FIXED
global batch (default 128, split evenly over the processes), Adam, Peaceman-Rachford α = 1,
tol 1e-2. Throughput is ``global batch × timed steps / wall time`` of the timed steps (after
warm-up, between barriers), so it includes the gradient allreduce and every wait for the slowest
rank. All configurations run in one invocation, interleaved ``--repeats`` times, so they share
the machine's conditions; the best and the median run of each are printed.

    python experiments/bench_ddp.py --device cpu --nproc 1 2 --steps 200 --repeats 3
    python experiments/bench_ddp.py --model conv --steps 10
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from mondeq import fc_mondeq, single_conv_mondeq
from mondeq.cli.main import run_program
from mondeq.cli.options import data_root_arg, device_arg, non_negative_int, positive_int
from mondeq.data import load_dataset, normalize
from mondeq.training.data_order import epoch_order
from mondeq.training.distributed import (all_reduce_sum, barrier, rank_batches, setup, teardown,
                                wrap_model)


def _build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "fc":
        return fc_mondeq(784, 87, 10, solver="pr", alpha=1.0, tol=1e-2, max_iter=50)
    return single_conv_mondeq(1, 28, 54, 10, solver="pr", alpha=1.0, tol=1e-2, max_iter=50)


def _worker(rank: int, nproc: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc))
    if args.threads:
        torch.set_num_threads(args.threads)
    info, device = setup(args.device)
    x, y = load_dataset("mnist", args.data_root, train=True)
    x = normalize(x)
    if args.model == "fc":
        x = x.reshape(len(x), -1)
    model = wrap_model(_build(args.model).to(device), info, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = rank_batches(epoch_order(len(x), seed=0, epoch=0), args.batch_size, info)
    steps = steps[:args.warmup + args.steps]
    data = [(x[i].to(device), y[i].to(device)) for i in steps]
    times, fw = [], []
    for k, (xb, yb) in enumerate(data):
        if k == args.warmup:
            barrier()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        t0 = time.perf_counter()
        logits, stats = model.forward_with_stats(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if k >= args.warmup:
            times.append(time.perf_counter() - t0)
            fw.append(stats.forward.iterations)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    barrier()
    elapsed = time.perf_counter() - start
    iterations = all_reduce_sum(torch.tensor(float(sum(fw)))) / (nproc * len(fw))
    if info.is_main:
        Path(out).write_text(f"{elapsed} {statistics.median(times)} {float(iterations)}")
    teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:K (default: cuda when available)")
    p.add_argument("--model", choices=("fc", "conv"), default="fc", help="the paper's MNIST model to train")
    p.add_argument("--nproc", type=positive_int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--batch-size", type=positive_int, default=128, help="GLOBAL batch, split over processes")
    p.add_argument("--steps", type=positive_int, default=60, help="timed steps")
    p.add_argument("--warmup", type=non_negative_int, default=5, help="untimed steps first")
    p.add_argument("--repeats", type=positive_int, default=1,
                   help="run the --nproc list this many times, interleaved (a shared machine is noisy)")
    p.add_argument("--threads", type=non_negative_int, default=1, help="threads per process (0: torch's default)")
    p.add_argument("--data-root", type=data_root_arg, default=None,
                   help="folder holding mnist/ (default: $MONDEQ_DATA, the checkout's data/, then ~/.cache/mondeq)")
    args = p.parse_args(argv)
    load_dataset("mnist", args.data_root, train=True)  # a missing dataset: one error here, not one per process
    os.environ["OMP_NUM_THREADS"] = str(args.threads or os.cpu_count())
    print(f"model={args.model} device={args.device} global batch={args.batch_size} "
          f"threads/process={args.threads} timed steps={args.steps} (cpus: {os.cpu_count()})")
    results: dict[int, list[tuple[float, float, float]]] = {n: [] for n in args.nproc}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for nproc in args.nproc:
                out = os.path.join(tmp, f"n{nproc}.txt")
                mp.spawn(_worker, args=(nproc, _free_port(), args, out), nprocs=nproc, join=True)
                elapsed, median, iterations = map(float, Path(out).read_text().split())
                results[nproc].append((args.batch_size * args.steps / elapsed, median, iterations))
                print(f"  run {repeat + 1} nproc={nproc}: {results[nproc][-1][0]:8.1f} images/s", flush=True)
    base = max(r[0] for r in results[args.nproc[0]])
    for nproc, runs in results.items():
        best = max(r[0] for r in runs)
        print(f"nproc={nproc}: best {best:8.1f} images/s, median {statistics.median(r[0] for r in runs):8.1f} "
              f"over {len(runs)} run(s)  (median step {1000 * statistics.median(r[1] for r in runs):.1f} ms, "
              f"forward iterations {statistics.mean(r[2] for r in runs):.1f}; best vs nproc={args.nproc[0]}: "
              f"{best / base:.2f}×)")

if __name__ == "__main__":  # one-line errors, as the mondeq command's
    sys.exit(run_program(main))
