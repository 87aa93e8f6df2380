"""Compare splitting methods on a trained monDEQ: iterations and wall time to a true residual.

For every method in ``splitting.SOLVERS`` (FB, PR, DR, Anderson on PR and on FB, FBF, ...) and
the baselines of ``splitting.BASELINES`` (Broyden and Anderson on the plain map), and every step
size α in a grid (default 1, 1/2, …, 1/64), on one MNIST test batch:

* forward: solve z* = σ(Wz* + Ux + b) from z = 0;
* backward: solve the implicit-gradient problem (I − Wᵀ)u + Du = ḡ (D = J⁻¹ − I) for the
  cross-entropy gradient ḡ = ∂ℓ/∂z*, reusing the forward factorisation as training does;

and record the iterations and wall time until the TRUE relative residual
‖z − σ(Wz + b)‖/‖z‖ (``splitting.natural_residual``; the worst sample of the batch) first falls
below 1e-2, 1e-4, 1e-6 and 1e-9 (use ``--dtype float64`` for the last). Each threshold is one solve with ``tol`` set to it: the solvers stop
only once every sample's true residual is confirmed below ``tol``, and report the first such
iteration, which is what training pays. Times are the same solves repeated (median of
``--repeats`` interleaved rounds; by default only for each method's best α, which is what the
tables and plots show). The residual traces plotted are the solvers' own per-iteration residuals
(exact for FB, the Rachford methods' cheap estimate otherwise) of the tightest solve. Runs that blow
up (FB beyond its step limit 2m/L²) are reported as diverged, not as errors.

Writes to ``--out``: ``comparison.csv`` (every run), ``comparison.md`` (tables), and
``residual_vs_iteration.png``, ``residual_vs_time.png`` (each method at its best α) and
``iterations_vs_alpha.png``.

Without a RUN a quick model is trained first (one epoch on ``--train-limit`` images). A RUN trained
with ``--data-root`` reads MNIST from there too, unless ``--data-root`` says otherwise. An ``--out``
that already holds a comparison is refused unless ``--overwrite`` is given.
Everything runs on ``--device`` (default: CUDA when available, else the CPU); on CUDA each timed
call is synchronised before the clock stops.

    python experiments/compare_splitting.py runs/mnist_fc --out runs/compare_fc
    mondeq compare --model conv --batch-size 64 --out runs/compare_conv
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from splitting import max_stable_alpha

from ...errors import RunExistsError
from ...models import MODELS
from ...training.resume import explicit_options
from ..options import (HelpFormatter, checkpoint_file, chosen_run, data_root_arg, default_device, device_arg,
                       hidden_alias, positive_float, positive_int, run_argument, run_data_root)
from .measurement import ALPHAS, METHODS, THRESHOLDS, Run, best_alpha, measure, time_runs
from .problem import load_model, mnist_test_batch, problems, quick_model
from .report import alpha_label, cell, markdown, plot, write_csv


OUTPUTS = ("comparison.csv", "comparison.md")
"""The files that say ``--out`` holds a comparison (refused without ``--overwrite``)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The comparison's options (``experiments/compare_splitting.py``, ``mondeq compare``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    run_argument(p, help="a run of mondeq train: its --out folder or its checkpoint.pt (default: train "
                         "a quick model)")
    p.add_argument("--model", choices=MODELS, default="fc",
                   help="model to train when no RUN is given")
    p.add_argument("--train-limit", type=positive_int, default=10000, help="training images for the quick model")
    p.add_argument("--batch-size", type=positive_int, default=128, help="test batch size")
    hidden_alias(p, "--batch", dest="batch_size", type=positive_int)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=sorted(METHODS),
                   help="splitting methods and the baselines on the plain map (broyden, "
                        "anderson-plain: no convergence guarantee)")
    p.add_argument("--alphas", type=positive_float, nargs="+", default=list(ALPHAS),
                   help="step sizes α of the grid, each > 0")
    p.add_argument("--data-root", type=data_root_arg, default=None,
                   help="folder holding mnist/ (default: the RUN's own data root, else $MONDEQ_DATA, the "
                        "checkout's data/, then ~/.cache/mondeq)")
    p.add_argument("--max-iter", type=positive_int, default=400, help="iteration cap per solve")
    p.add_argument("--anderson-memory", type=positive_int, default=5, help="Anderson memory (pairs kept)")
    p.add_argument("--repeats", type=positive_int, default=7, help="timing repeats (median)")
    p.add_argument("--time", choices=("best", "all"), default="best",
                   help="time each method at its best α only (what the tables and plots show), or every run")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="float64 resolves 1e-6; float32 is what training uses")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the quick model's training")
    p.add_argument("--device", type=device_arg, default=default_device(),
                   help="where the model, the data and the solves live (default: cuda when available)")
    p.add_argument("--out", type=Path, default=Path("runs/compare_splitting"),
                   help="folder of the comparison's CSV, tables and plots")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the comparison already in --out (refused without it)")
    args = p.parse_args(argv)
    chosen_run(p, args, required=False)
    quick = sorted(explicit_options(p, argv) & {"model", "train_limit"})
    if args.run is not None and quick:  # they would be silently unused
        p.error(f"--{quick[0].replace('_', '-')} sets up the quick model trained when no RUN is given; "
                f"{args.run} is compared as it is")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file; give a folder")
    return args


def main(argv: list[str] | None = None) -> list[Run]:
    """Run the comparison, write its files under ``--out``, print the report; returns every run."""
    args = parse_args(argv)
    done = [name for name in OUTPUTS if (args.out / name).exists()]
    if done and not args.overwrite:
        raise RunExistsError(f"--out {args.out} already holds a comparison ({', '.join(done)}); replace it "
                             "with --overwrite, or choose another --out")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.run is None:
        model, config = quick_model(args.model, train_limit=args.train_limit, seed=args.seed,
                                    device=args.device, out=args.out, data_root=args.data_root)
    else:
        model, config = load_checkpoint_model(args.run, device=args.device)
        args.data_root = run_data_root(args.data_root, config)
    dtype = getattr(torch, args.dtype)
    model = model.to(device=args.device, dtype=dtype).eval()
    x, y = mnist_test_batch(model, args.batch_size, device=args.device, dtype=dtype, data_root=args.data_root)
    probs = problems(model, x, y)
    op = probs["forward"].op
    info = {"model": config.get("model", "fc"), "describe": config["trained"], "batch": len(x),
            "dtype": args.dtype, "max_iter": args.max_iter, "memory": args.anderson_memory,
            "fb_limit": max_stable_alpha(op), "m": op.m, "L": op.lipschitz(),
            "threads": torch.get_num_threads(), "device": str(args.device)}
    runs: list[Run] = []
    for direction, problem in probs.items():
        for name in args.methods:
            for alpha in args.alphas:
                run = measure(direction, name, alpha, problem, max_iter=args.max_iter,
                              memory=args.anderson_memory)
                runs.append(run)
                print(f"{direction:8s} {name:12s} α={alpha_label(alpha):5s} "
                      + " ".join(f"{e:.0e}:{cell(run, e):>4s}" for e in THRESHOLDS)
                      + f"  {run.status}" + ("  (step-size warning)" if run.step_warning else ""), flush=True)
    timed = runs if args.time == "all" else [
        b for d in probs for m in args.methods if (b := best_alpha(runs, d, m)) is not None]
    print(f"timing {len(timed)} runs: {args.repeats} interleaved rounds", flush=True)
    time_runs(timed, args.repeats, args.device)
    write_csv(runs, args.out / "comparison.csv")
    report = markdown(runs, args.methods, args.alphas, info)
    (args.out / "comparison.md").write_text(report)
    figures = plot(runs, args.methods, args.alphas, args.out)
    print("\n" + report)
    print("wrote " + ", ".join(str(p) for p in [args.out / "comparison.csv", args.out / "comparison.md", *figures]))
    return runs



def load_checkpoint_model(run: Path, *, device: torch.device):
    """:func:`.problem.load_model` for a RUN given as a run folder or a checkpoint file.

    Raises:
        FileNotFoundError: no checkpoint there.
        CheckpointError: the file is not a checkpoint with ``config`` and ``model`` (the message
            says what it is), or is damaged.
        DeviceUnavailableError: ``device`` does not exist on this machine.
        InvalidSettingError: a checkpoint trained on another dataset than MNIST.
    """
    return load_model(checkpoint_file(run), device=device)
