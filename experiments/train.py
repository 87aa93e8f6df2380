"""Train a monDEQ classifier on MNIST and report accuracy, solver iterations, Lipschitz bound and
certified ℓ2 accuracy.

The default run trains the paper's fully connected monDEQ (87 hidden units, m = 1, ReLU,
Peaceman-Rachford with α = 1, tol 1e-2) and writes, under ``--out``:

* ``results.json``: configuration, per-epoch history and the final report;
* ``curves.png``: training loss, test accuracy and solver iterations per epoch;
* ``checkpoint.pt``: saved after every epoch; ``--resume`` continues from it.

Certified training: ``--certified-eps 1.58`` trains for that ℓ2 radius in pixel scale with the
Lipschitz-margin loss (``mondeq.losses.LipschitzMarginLoss``), trading clean accuracy for
certified accuracy. Certificates in the report are sound: they subtract the solver's error.

Example::

    python experiments/train.py --epochs 3
    python experiments/train.py --epochs 6 --resume   # three more epochs
    python experiments/train.py --certified-eps 1.58 --out runs/mnist_fc_cert
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from mondeq import certified_accuracy, fc_mondeq, single_conv_mondeq
from mondeq.data import MNIST_STD, batches, load_mnist, normalize, num_batches
from mondeq.losses import LipschitzMarginLoss
from mondeq.training import evaluate, load_checkpoint, save_checkpoint, train_epoch
from mondeq.tuning import AlphaTuner
from splitting import SOLVERS

EPSILONS = (0.1, 0.3, 0.5, 1.0)
TIGHT_TOL = 1e-6
"""Tolerance of the final re-solve that certifies with almost no slack."""
CERTIFIED_EPOCHS = 30
"""Default epochs with --certified-eps: Lipschitz-margin training converges slowly."""


def build_fc(args: argparse.Namespace) -> torch.nn.Module:
    return fc_mondeq(784, args.hidden, 10, m=args.m, solver=args.solver, alpha=args.alpha,
                     tol=args.tol, max_iter=args.max_iter)


def build_conv(args: argparse.Namespace) -> torch.nn.Module:
    """The paper's single-convolution monDEQ: 54 channels, 3 × 3, MNIST padded to a 30 × 30 state."""
    return single_conv_mondeq(1, 28, 54, 10, m=args.m, solver=args.solver, alpha=args.alpha,
                              tol=args.tol, max_iter=args.max_iter)


MODELS: dict[str, Callable[[argparse.Namespace], torch.nn.Module]] = {"fc": build_fc, "conv": build_conv}
"""Model factories by ``--model`` name; each takes the parsed arguments."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="fc", help="architecture")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"total training epochs (default: 4, or {CERTIFIED_EPOCHS} with --certified-eps)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (peak)")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning-rate schedule over all epochs")
    p.add_argument("--hidden", type=int, default=87, help="hidden units (fc)")
    p.add_argument("--m", type=float, default=1.0, help="monotonicity margin m > 0")
    p.add_argument("--solver", choices=sorted(SOLVERS), default="pr", help="splitting method")
    p.add_argument("--alpha", type=float, default=1.0, help="splitting step size")
    p.add_argument("--tune-alpha-every", type=int, default=0, metavar="N",
                   help="every N training steps, re-pick α on that batch by halving from 1 while "
                        "forward + backward iterations fall (mondeq.tuning); 0: keep --alpha")
    p.add_argument("--tol", type=float, default=1e-2, help="forward/backward relative residual")
    p.add_argument("--max-iter", type=int, default=50, help="solver iteration cap")
    p.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS),
                   help="ℓ2 radii (pixel scale [0, 1]) for certified accuracy")
    p.add_argument("--certify-tol", type=float, default=None,
                   help="re-solve at this tolerance before certifying each epoch (default: --tol, or "
                        f"{TIGHT_TOL:g} with --certified-eps; certificates are sound either way, a "
                        "tighter solve only shrinks the slack)")
    g = p.add_argument_group("certified training")
    g.add_argument("--certified-eps", type=float, default=0.0,
                   help="train for this certified ℓ2 radius (pixel scale) with the Lipschitz-margin "
                        "loss; 0 trains with plain cross entropy")
    g.add_argument("--certified-warmup", type=float, default=0.0,
                   help="fraction of training with plain cross entropy before ε starts to rise")
    g.add_argument("--certified-ramp", type=float, default=0.3,
                   help="fraction of training over which ε rises linearly to --certified-eps")
    g.add_argument("--power-iterations", type=int, default=0,
                   help="estimate ‖U‖₂ in the loss by this many warm-started power steps per batch "
                        "instead of the exact norm (cheaper for wide layers; certificates always "
                        "use the exact norm)")
    g.add_argument("--lipschitz-penalty", type=float, default=0.0,
                   help="weight λ of λ·max(0, ‖U‖₂/m − target)² added to the loss")
    g.add_argument("--lipschitz-target", type=float, default=0.0,
                   help="‖U‖₂/m (normalised input scale) above which the penalty acts")
    p.add_argument("--out", type=Path, default=Path("runs/mnist_fc"), help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    p.add_argument("--data", type=Path, default=None, help="MNIST folder (default: the repo's data/mnist)")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = CERTIFIED_EPOCHS if args.certified_eps > 0 else 4
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be positive")
    if args.tune_alpha_every < 0:
        p.error("--tune-alpha-every must be >= 0")
    if args.certified_eps < 0 or not 0 <= args.certified_warmup <= 1 or not 0 <= args.certified_ramp <= 1:
        p.error("--certified-eps must be >= 0 and --certified-warmup, --certified-ramp in [0, 1]")
    if args.power_iterations < 0 or args.lipschitz_penalty < 0:
        p.error("--power-iterations and --lipschitz-penalty must be >= 0")
    if args.certified_eps > 0 and args.certified_eps not in args.epsilons:
        args.epsilons = sorted([*args.epsilons, args.certified_eps])
    if args.certified_eps > 0 and args.certify_tol is None:
        # certified-trained models have large states and ‖I − W‖: at --tol the slack would eat
        # most radii, so certify from tight solves (cheap next to an epoch of training)
        args.certify_tol = TIGHT_TOL
    return args


def load_data(args: argparse.Namespace):
    x_train, y_train = load_mnist(args.data, train=True)
    x_test, y_test = load_mnist(args.data, train=False)
    x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    return normalize(x_train), y_train, normalize(x_test), y_test


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    axes[0].set(title="training loss", xlabel="epoch", yscale="log")
    axes[1].plot(epochs, [100 * h["test_accuracy"] for h in history], marker="o", label="clean")
    for eps in history[-1]["certified"]:
        axes[1].plot(epochs, [100 * h["certified"][eps] for h in history], marker=".", label=f"certified ε={eps}")
    axes[1].set(title="test accuracy (%)", xlabel="epoch")
    axes[1].legend(fontsize=7)
    axes[2].plot(epochs, [h["forward_iterations"] for h in history], marker="o", label="forward")
    axes[2].plot(epochs, [h["backward_iterations"] for h in history], marker="o", label="backward")
    axes[2].set(title="mean solver iterations", xlabel="epoch")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_data(args)
    model = MODELS[args.model](args)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = num_batches(len(x_train), args.batch_size)
    total = steps * args.epochs
    schedule = (lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total))) if args.schedule == "cosine" else (lambda k: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    loss_fn = None
    if args.certified_eps > 0:  # radii in pixel scale → the model's normalised scale
        loss_fn = LipschitzMarginLoss(model, args.certified_eps / MNIST_STD,
                                      warmup_steps=round(args.certified_warmup * total),
                                      ramp_steps=round(args.certified_ramp * total),
                                      lipschitz_penalty=args.lipschitz_penalty,
                                      lipschitz_target=args.lipschitz_target,
                                      power_iterations=args.power_iterations)
    history: list[dict] = []
    first_epoch = 1
    checkpoint = args.out / "checkpoint.pt"
    if args.resume:
        state = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler)
        history, first_epoch = state["history"], state["epoch"] + 1
        print(f"resumed from {checkpoint} after epoch {state['epoch']}")
    if loss_fn is not None:
        loss_fn.step = (first_epoch - 1) * steps
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model} monDEQ, {n_params} parameters, {args.solver.upper()} α={args.alpha:g} "
          f"tol={args.tol:g}; {len(x_train)} train / {len(x_test)} test images")
    generator = torch.Generator().manual_seed(args.seed)
    tuner = AlphaTuner(args.tune_alpha_every) if args.tune_alpha_every else None
    wall = time.perf_counter()
    for epoch in range(first_epoch, args.epochs + 1):
        stats = train_epoch(model, optimizer, batches(x_train, y_train, args.batch_size, shuffle=True,
                                                      generator=generator),
                            steps=steps, scheduler=scheduler, desc=f"epoch {epoch}/{args.epochs}",
                            loss_fn=loss_fn, on_batch=tuner)
        ev = evaluate(model, batches(x_test, y_test, 1000, shuffle=False), input_scale=MNIST_STD,
                      certify_tol=args.certify_tol)
        certified = certified_accuracy(ev.radii, args.epsilons)
        history.append({
            "epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
            "test_accuracy": ev.accuracy, "forward_iterations": stats.forward_iterations,
            "backward_iterations": stats.backward_iterations, "test_forward_iterations": ev.forward_iterations,
            "step_time_ms": 1000 * stats.step_time, "lipschitz": ev.lipschitz,
            "certified": {str(k): v for k, v in certified.items()},
            "certificate_slack": float(ev.slack.mean()) if len(ev.slack) else 0.0,
            "train_eps": loss_fn.current_eps() * MNIST_STD if loss_fn is not None else 0.0,
            "alpha": model.layer.alpha,
        })
        print(f"epoch {epoch}: loss {stats.loss:.4f}  test acc {100 * ev.accuracy:.2f}%  "
              f"iterations fwd {stats.forward_iterations:.1f} bwd {stats.backward_iterations:.1f}  "
              f"step {1000 * stats.step_time:.2f} ms  Lipschitz ‖U‖₂/m {ev.lipschitz:.2f}  certified "
              + " ".join(f"ε={k:g}: {100 * v:.1f}%" for k, v in certified.items()), flush=True)
        save_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                        history=history, config=config)
    if not history:
        print(f"nothing to do: checkpoint already at epoch {first_epoch - 1} of {args.epochs}")
        return {}
    final = history[-1]
    train_wall = time.perf_counter() - wall
    report = {"config": config, "history": history, "final": final, "train_wall_time_s": train_wall}
    if args.certify_tol is None:
        # One more certification with every equilibrium re-solved tightly: the slack (the radius
        # the solver error costs) then all but vanishes. Per-epoch figures keep the cheaper --tol.
        tight = evaluate(model, batches(x_test, y_test, 1000, shuffle=False), input_scale=MNIST_STD,
                         certify_tol=TIGHT_TOL)
        certified_tight = certified_accuracy(tight.radii, args.epsilons)
        report["certified_tight"] = {"tol": TIGHT_TOL, "slack": float(tight.slack.mean()),
                                     "certified": {str(k): v for k, v in certified_tight.items()}}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    plot_curves(history, args.out / "curves.png")
    print("\nfinal report")
    print(f"  test accuracy            {100 * final['test_accuracy']:.2f}%")
    print(f"  solver iterations        forward {final['forward_iterations']:.1f}, backward {final['backward_iterations']:.1f} (train), "
          f"forward {final['test_forward_iterations']:.1f} (test)")
    print(f"  Lipschitz bound ‖U‖₂/m   {final['lipschitz']:.3f} (normalised input), "
          f"{final['lipschitz'] / MNIST_STD:.3f} (pixel scale)")
    solve_tol = args.tol if args.certify_tol is None else args.certify_tol
    print("  certified ℓ2 accuracy    " + ", ".join(f"ε={k}: {100 * v:.1f}%" for k, v in final["certified"].items())
          + f" (sound; solve at tol {solve_tol:g}: radii pay {final['certificate_slack']:.2g} pixel on average "
            "for the solver error)")
    if "certified_tight" in report:
        print("                           " + ", ".join(f"ε={k:g}: {100 * v:.1f}%" for k, v in certified_tight.items())
              + f" (sound; re-solved at tol {TIGHT_TOL:g}: slack {report['certified_tight']['slack']:.2g})")
    print(f"  training wall time       {train_wall:.1f} s")
    print(f"  wrote {args.out / 'results.json'}, {args.out / 'curves.png'}, {checkpoint}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
