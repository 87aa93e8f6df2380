"""``mondeq dbm``: train a monotone deep Boltzmann machine to complete and classify MNIST.

Pixels are binned into K values, each observed with probability ``--observed`` (training and test;
the label never), and the rest inferred by mean field as a monotone equilibrium
(:mod:`mondeq.categorical`). The run folder receives ``checkpoint.pt`` (every epoch; ``--resume``
continues exactly), ``metrics.csv``, ``results.json`` (the DBM's label accuracy, hidden-pixel bin
accuracy and ℓ2, the baselines on the same masks, the inference-cost table) and
``completions.png``.

    mondeq dbm --bins 2 --epochs 1 --out runs/dbm-k2
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from ..categorical.baseline_runs import (classifier_accuracy, mean_fill_scores, rbm_scores, train_classifier,
                                         train_rbm)
from ..categorical.build import build_dbm, model_config
from ..categorical.metrics import fixed_masks
from ..categorical.picture import save_completions
from ..categorical.train import evaluate, inference_cost, train_epoch
from ..data.mnist import load_mnist
from ..data.root import resolve_data_root
from ..errors import ResumeConfigError
from ..training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from ..training.logs import EpochLog
from ..training.optimizer import adam
from ..training.schedules import cosine
from .options import HelpFormatter, data_root_arg, default_device, device_arg, positive_float, positive_int

COST_METHODS = {"fb": 0.125, "pr": 0.25, "anderson-pr": 0.25}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mondeq dbm", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--architecture", choices=("dense", "conv"), default="dense",
                   help="couplings: dense (hidden variables) or the multi-tier convolution with groups")
    p.add_argument("--bins", type=positive_int, default=2, help="intensity bins K per pixel")
    p.add_argument("--observed", type=positive_float, default=0.4, help="fraction of pixels observed")
    p.add_argument("--hidden", type=positive_int, default=100, help="dense: hidden variables")
    p.add_argument("--hidden-values", type=positive_int, default=4, help="dense: values per hidden variable")
    p.add_argument("--rank", type=positive_int, default=256, help="dense: rows of A")
    p.add_argument("--channels", type=positive_int, nargs=2, default=(20, 40), help="conv: channels at H/2, H/4")
    p.add_argument("--label-from", choices=("last", "all"), default="last",
                   help="conv: the label couples to the last tier only (the paper) or to every tier (full kernels)")
    p.add_argument("--m", type=positive_float, default=0.05, help="monotonicity margin")
    p.add_argument("--solver", choices=("fb", "pr", "dr", "anderson-pr", "anderson-fb"), default="pr",
                   help="splitting method of the mean-field solve (training and scoring)")
    p.add_argument("--alpha", type=positive_float, default=1.0, help="splitting step, ≤ 1")
    p.add_argument("--tol", type=positive_float, default=1e-2, help="bound on the true relative mean-field residual")
    p.add_argument("--max-iter", type=positive_int, default=200, help="iteration cap of each solve")
    p.add_argument("--epochs", type=positive_int, default=1, help="training epochs (cosine learning-rate schedule)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per training step")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate")
    p.add_argument("--bias-init", choices=("zero", "data"), default="zero",
                   help="start of the pixel and label biases: zero (uniform marginals at W = 0) or data "
                        "(the training set's per-position bin and class frequencies, in log)")
    p.add_argument("--label-weight", type=positive_float, default=1.0,
                   help="weight of the label cross-entropy beside the hidden pixels' one")
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (0: all)")
    p.add_argument("--test-subset", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="also score mean fill, an MLP on masked images and an RBM on the same masks")
    p.add_argument("--baseline-epochs", type=positive_int, default=1, help="training epochs of the MLP and RBM baselines")
    p.add_argument("--rbm-hidden", type=int, default=0,
                   help="binary hidden units of the RBM baseline (0: as many as the DBM has hidden one-hot "
                        "channels: hidden × hidden-values, or Σ channels × positions for conv)")
    p.add_argument("--cost-batch", type=positive_int, default=100, help="images in the inference-cost batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameters, masks and data order")
    p.add_argument("--out", type=Path, default=Path("runs/dbm"), help="run folder (results.json, metrics.csv, completions.png)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    p.add_argument("--stop-after", type=positive_int, default=None,
                   help="stop after this epoch of the --epochs schedule (continue later with --resume)")
    p.add_argument("--device", type=device_arg, default=default_device(), help="where the model and data live (default: cuda when available)")
    p.add_argument("--data-root", type=data_root_arg, default=None,
                   help="folder holding mnist/ (default: $MONDEQ_DATA, the checkout's data/, then ~/.cache/mondeq)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar per epoch")
    return p


def _data(args):
    root = resolve_data_root(args.data_root) / "mnist"
    train_x, train_y = load_mnist(root, train=True, download=False)
    test_x, test_y = load_mnist(root, train=False, download=False)
    if args.train_subset:
        train_x, train_y = train_x[:args.train_subset], train_y[:args.train_subset]
    if args.test_subset:
        test_x, test_y = test_x[:args.test_subset], test_y[:args.test_subset]
    return train_x[:, 0], train_y, test_x[:, 0], test_y


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.alpha > 1:
        parser().error(f"--alpha must be ≤ 1 (the simplex-entropy prox is applied at α), got {args.alpha}")
    if args.bins < 2:
        parser().error(f"--bins must be at least 2 (a pixel variable needs two values), got {args.bins}")
    if args.resume and not (args.out / "checkpoint.pt").is_file():
        parser().error(f"--resume: {args.out} holds no checkpoint.pt of a `mondeq dbm` run; start it without --resume")
    if not args.observed < 1:
        parser().error(f"--observed must be a fraction below 1, got {args.observed}")
    if not (args.resume or args.overwrite) and any((args.out / f).exists() for f in ("checkpoint.pt", "results.json")):
        parser().error(f"--out {args.out} already holds a run; pass --resume to continue it or --overwrite")
    torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = _data(args)
    shape = tuple(train_x.shape[1:])
    model_settings = model_config(
        architecture=args.architecture, bins=args.bins, image=shape, hidden=args.hidden,
        hidden_values=args.hidden_values, rank=args.rank, channels=tuple(args.channels),
        label_from=args.label_from, m=args.m,
        solver=args.solver, alpha=args.alpha, tol=args.tol, max_iter=args.max_iter, seed=args.seed)
    config = {"model": model_settings, "observed": args.observed, "batch_size": args.batch_size, "lr": args.lr,
              "label_weight": args.label_weight, "train_subset": args.train_subset, "epochs": args.epochs}
    model = build_dbm(model_settings).to(args.device, torch.float32)
    model.set_bin_values(train_x)  # a function of the training data: the same after a resume
    if args.bias_init != "zero":  # (recorded only when set: older runs resume as before)
        config["bias_init"] = args.bias_init
        model.set_bias_from_data(train_x, train_y)
    optimizer = adam(model.parameters(), lr=args.lr)
    steps = (len(train_x) + args.batch_size - 1) // args.batch_size
    scheduler = cosine(optimizer, total_steps=args.epochs * steps)
    history, first = [], 0
    checkpoint = args.out / "checkpoint.pt"
    if args.resume:
        saved = read_checkpoint(checkpoint, map_location=args.device)
        fixed = {k: v for k, v in config.items() if k != "epochs"}
        if json.dumps({k: saved["config"].get(k) for k in fixed}, default=list) != json.dumps(fixed, default=list):
            raise ResumeConfigError(f"{checkpoint} was trained with other settings; resume with the same "
                                    f"options (saved: {saved['config']})")
        state = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
                                map_location=args.device, state=saved)
        history, first = state["history"], state["epoch"]
    test_masks = fixed_masks(len(test_x), shape, args.observed, seed=args.seed + 1)
    log = EpochLog(args.out, first_epoch=first + 1)
    last = args.epochs if args.stop_after is None else min(args.stop_after, args.epochs)
    for epoch in range(first, last):
        record = train_epoch(model, optimizer, train_x, train_y, epoch=epoch, seed=args.seed,
                             batch_size=args.batch_size, fraction=args.observed, label_weight=args.label_weight,
                             scheduler=scheduler, progress=args.progress)
        quick = evaluate(model, test_x[:1000], test_y[:1000], test_masks[:1000])
        history.append({"epoch": epoch + 1, **record, **{f"test1k_{k}": v for k, v in quick.items()}})
        save_checkpoint(checkpoint, model=model, optimizer=optimizer, epoch=epoch + 1, history=history,
                        config=config, scheduler=scheduler)
        log.write(history)
        print(f"epoch {epoch + 1}: loss {record['loss']:.4f}, {record['seconds']:.0f}s, test (1000) label "
              f"{quick['label_accuracy']:.4f} bin {quick['bin_accuracy']:.4f} l2 {quick['l2']:.3f}", flush=True)
    log.close()
    if last < args.epochs:
        print(f"stopped after epoch {last} of {args.epochs}; continue with --resume", flush=True)
        return 0
    results = _report(args, model, history, train_x, train_y, test_x, test_y, test_masks)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("dbm", "baselines")}, indent=2))
    return 0


def _report(args, model, history, train_x, train_y, test_x, test_y, test_masks) -> dict:
    begin = time.perf_counter()
    dbm = evaluate(model, test_x, test_y, test_masks, progress=args.progress)
    dbm["test_seconds"] = time.perf_counter() - begin
    results = {"config": {k: (str(v) if isinstance(v, Path) or k == "device" else v) for k, v in vars(args).items()},
               "test_images": len(test_x), "epochs": len(history),
               "train_seconds": sum(h["seconds"] for h in history), "dbm": dbm, "baselines": {}}
    if args.baselines:
        hidden_units = args.rbm_hidden or _hidden_units(model)
        results["baselines"]["mean_fill"] = mean_fill_scores(train_x, test_x, test_masks, bins=args.bins)
        clf, seconds = train_classifier(train_x, train_y, epochs=args.baseline_epochs, fraction=args.observed,
                                        seed=args.seed, device=args.device, progress=args.progress)
        results["baselines"]["masked_classifier"] = {
            "label_accuracy": classifier_accuracy(clf, test_x, test_y, test_masks), "train_seconds": seconds}
        rbm, seconds = train_rbm(train_x, train_y, bins=args.bins, hidden=hidden_units, epochs=args.baseline_epochs,
                                 fraction=args.observed, seed=args.seed, device=args.device, progress=args.progress)
        results["baselines"]["rbm_mean_field"] = {**rbm_scores(rbm, test_x, test_y, test_masks,
                                                                             bin_values=model.bin_values),
                                                  "hidden_units": hidden_units, "train_seconds": seconds}
    cost = min(args.cost_batch, len(test_x))
    results["inference_cost"] = inference_cost(model, test_x[:cost], test_masks[:cost], methods=COST_METHODS)
    with torch.no_grad():
        n = min(16, len(test_x))
        out = model.complete(test_x[:n].to(args.device), test_masks[:n].to(args.device))
    save_completions(args.out / "completions.png", test_x[:n], test_masks[:n], out.expected_intensity().cpu(),
                     out.label.argmax(1).cpu(), test_y[:n])
    return results


def _hidden_units(model) -> int:
    """The DBM's hidden one-hot channels (every tier between the pixels and the label): the RBM
    baseline's default hidden size."""
    return sum(math.prod(shape) for shape in model.coupling.state_shape[1:-1])


main = run

if __name__ == "__main__":  # python -m mondeq.cli.dbm: the command's one-line errors
    from .main import run_command
    sys.exit(run_command("dbm"))
