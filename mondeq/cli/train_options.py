"""The training command's options: the parser, its validation, the defaults that depend on other
options, and the merge with a saved run's configuration on ``--resume``."""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from splitting import SOLVERS, STEP_LIMITS

from ..data import DATASETS
from ..errors import ResumeConfigError, RunExistsError
from ..models import MODELS
from ..models.nonlinearities import DEFAULT_NONLINEARITY, NONLINEARITIES
from ..robustness.joint_training import TRAINING_BOUNDS
from ..training.resume import explicit_options, merge_saved_config
from ..training.schedules import SCHEDULES
from ..training.step_size import FB_SOLVERS, STABLE_FRACTION, STEP_RULES
from .options import HelpFormatter, data_root_arg, device_arg

DESCRIPTION = ("Train a monDEQ classifier (MNIST, CIFAR-10 or SVHN) and report accuracy, solver "
               "iterations, Lipschitz bound and certified ℓ2 accuracy.")

EPSILONS = (0.1, 0.3, 0.5, 1.0)
TIGHT_TOL = 1e-5
"""Tolerance of the final re-solve that certifies with almost no slack. Float32 solves reach a
true relative residual near 1e-6 at best (round-off), so 1e-6 would sometimes never be confirmed;
1e-5 is, and its slack (a few 1e-5 pixel) is still negligible next to the radii."""
LOSSES = ("margin", "emma", "offset-ce", "logit-annealing")
"""--loss choices (mondeq.robustness.certified_losses.CERTIFIED_LOSSES)."""
DEFAULT_LOSS = "offset-ce"
"""Measured best on MNIST FC (issue 19: 5 epochs, 2 seeds, ε = 0.3 and 1.58): certified accuracy
+0.1–0.4 pt over margin at ε = 0.3 and +0.8–1.0 pt at ε = 1.58."""
DEFAULT_CERTIFIED_BOUND = "auto"
"""--certified-bound default: the joint bound where the loss has it. Measured on MNIST FC (issue
19, 5 epochs, offset-ce, ε = 1.58): 46.3 % certified at 1.58 with the product bound, 55.2 % with
the joint one (and 95.1 vs 90.8 % clean)."""
CERTIFIED_EPOCHS = 30
"""Default epochs with --certified-eps: Lipschitz-margin training converges slowly."""
MAY_CHANGE_ON_RESUME = {"epochs", "resume", "out", "device", "data_root", "checkpoint_every", "amp",
                        "tensorboard"}
"""Options that --resume accepts with a value other than the saved run's."""
SAVED_BEFORE_OPTION = {"nonlinearity": DEFAULT_NONLINEARITY, "operator_penalty": 0.0,
                       "operator_penalty_iterations": 0, "loss": "margin", "normalize_head": False,
                       "certified_bound": "product"}
"""What a run saved before these options existed used: --resume compares typed options with them."""


def build_parser(description: str = DESCRIPTION) -> argparse.ArgumentParser:
    """The training command's options (``experiments/train.py --help``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist", help="the data to train and test on")
    p.add_argument("--data-root", type=data_root_arg, default=None,
                   help="folder holding mnist/, cifar10/, svhn/, or the files in torchvision's layout "
                        "(MNIST/raw/, cifar-10-batches-py/, *_32x32.mat) (default: $MONDEQ_DATA, the "
                        "checkout's data/, then ~/.cache/mondeq)")
    p.add_argument("--model", choices=MODELS, default="fc", help="architecture")
    p.add_argument("--hidden", type=int, default=87, help="hidden units (fc)")
    p.add_argument("--channels", type=int, nargs="+", default=None,
                   help="conv: one width; multitier: one per tier (default: the paper's for the dataset)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"total training epochs (default: 4, or {CERTIFIED_EPOCHS} with --certified-eps)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (summed over processes)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (peak)")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning-rate schedule")
    p.add_argument("--milestones", type=int, nargs="+", default=None,
                   help="epochs at which --schedule step multiplies the lr by --gamma (default: "
                        "every quarter of the run)")
    p.add_argument("--gamma", type=float, default=0.1, help="step-decay factor")
    p.add_argument("--augment", action="store_true",
                   help="random crop (4 pixels of zero padding) and, on cifar10, horizontal flips")
    p.add_argument("--m", type=float, default=1.0, help="monotonicity margin m > 0")
    p.add_argument("--nonlinearity", choices=list(NONLINEARITIES), default=DEFAULT_NONLINEARITY,
                   help="σ = prox_f of a convex f (mondeq.models.nonlinearities; the Lipschitz bound "
                        "and certificates hold for each)")
    p.add_argument("--solver", choices=sorted(SOLVERS), default="pr", help="splitting method")
    p.add_argument("--alpha", type=float, default=None,
                   help="splitting step size (default: 1 for pr, dr, anderson-pr; for fb and "
                        "anderson-fb, which converge only for α < 2m/L² with L = ‖I − W‖₂, α = "
                        f"{STABLE_FRACTION:g}·2m/L², and for fbf (α < 1/L) α = {STABLE_FRACTION:g}/L, "
                        "recomputed from the current W before every training step, so the solves "
                        "converge as training changes W)")
    p.add_argument("--tune-alpha-every", type=int, default=0, metavar="N",
                   help="every N training steps, re-pick α on that batch by halving from 1 while "
                        "forward + backward iterations fall (mondeq.training.step_size); 0: keep --alpha")
    p.add_argument("--tol", type=float, default=1e-2, help="forward/backward relative residual")
    p.add_argument("--max-iter", type=int, default=50, help="solver iteration cap")
    p.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS),
                   help="ℓ2 radii (pixel scale [0, 1]) for certified accuracy")
    p.add_argument("--certify-tol", type=float, default=None,
                   help="re-solve at this tolerance before certifying each epoch (default: --tol, or "
                        f"{TIGHT_TOL:g} with --certified-eps)")
    g = p.add_argument_group("certified training")
    g.add_argument("--certified-eps", type=float, default=0.0,
                   help="train for this certified ℓ2 radius (pixel scale) with the certified-training "
                        "--loss; 0 trains with plain cross entropy")
    g.add_argument("--loss", choices=LOSSES, default=DEFAULT_LOSS,
                   help="certified-training loss (with --certified-eps): margin (Lipschitz-margin cross "
                        "entropy, Tsuzuku et al. 2018), emma (Hu et al. 2023), offset-ce (offset cross "
                        "entropy with temperature, AOL/SLL) or logit-annealing (Lai et al. 2025); see "
                        "mondeq.robustness.certified_losses")
    g.add_argument("--certified-bound", choices=TRAINING_BOUNDS, default=DEFAULT_CERTIFIED_BOUND,
                   help="margin constants of the loss and of the run's reported certificates: product "
                        "(‖H_y − H_j‖·‖U‖₂/m), joint (the certificate's joint bound with its graph, "
                        "scalar multiplier; mondeq.robustness.joint_training; every model) or auto "
                        "(joint wherever the layer has a block structure: every built-in model)")
    g.add_argument("--normalize-head", action="store_true",
                   help="row-normalise the linear head (last-layer normalisation, Singla et al. 2022); "
                        "certificates use the normalised rows")
    g.add_argument("--certified-warmup", type=float, default=0.0,
                   help="fraction of training with plain cross entropy before ε starts to rise")
    g.add_argument("--certified-ramp", type=float, default=0.3,
                   help="fraction of training over which ε rises linearly to --certified-eps")
    g.add_argument("--power-iterations", type=int, default=0,
                   help="estimate ‖U‖₂ in the loss by this many warm-started power steps per batch")
    g.add_argument("--lipschitz-penalty", type=float, default=0.0,
                   help="weight λ of λ·max(0, ‖U‖₂/m − target)² added to the loss")
    g.add_argument("--lipschitz-target", type=float, default=0.0,
                   help="‖U‖₂/m (normalised input scale) above which the penalty acts")
    o = p.add_argument_group("operator regularisation")
    o.add_argument("--operator-penalty", type=float, default=0.0, metavar="λ",
                   help="add λ·‖I − W‖₂ to the loss (mondeq.training.regularisers): a better "
                        "conditioned W, fewer solver iterations")
    o.add_argument("--operator-penalty-iterations", type=int, default=0, metavar="N",
                   help="estimate ‖I − W‖₂ in the penalty by N warm-started power steps per batch "
                        "(0: exact where the layer's blocks are small: fc, conv, small multitier; "
                        "else 2 power steps)")
    r = p.add_argument_group("devices and runs")
    r.add_argument("--device", default=None, help="cpu, cuda or cuda:K (default: cuda when available)")
    r.add_argument("--amp", action="store_true", help="training step under bfloat16 autocast")
    r.add_argument("--out", type=Path, default=None, help="output folder (default: runs/{dataset}_{model})")
    r.add_argument("--resume", action="store_true",
                   help="continue OUT/checkpoint.pt with its saved configuration")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoint, results, metrics, curves, "
                        "TensorBoard events and certify outputs are removed first); without it, and "
                        "without --resume, an --out holding a run is refused")
    r.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="also checkpoint every N training steps (0: after each epoch only)")
    r.add_argument("--tensorboard", action="store_true",
                   help="also write the per-epoch scalars of OUT/metrics.csv as TensorBoard events in "
                        "OUT/tensorboard/ (needs: pip install tensorboard)")
    r.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data order")
    r.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    r.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    return p


POSITIVE_INTS = ("hidden", "epochs", "batch_size", "max_iter", "train_limit", "test_limit")
NON_NEGATIVE_INTS = ("tune_alpha_every", "power_iterations", "checkpoint_every",
                     "operator_penalty_iterations")
POSITIVE_FLOATS = ("lr", "m", "alpha", "tol", "certify_tol")


def validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:  # noqa: C901
    """Refuse values that would fail later, silently misbehave, or are not finite.

    Exits through ``p.error`` (status 2) naming the option and the value it got.
    """
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            p.error(f"--{name.replace('_', '-')} must be finite, got {value}")
    for name in POSITIVE_INTS:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    for name in NON_NEGATIVE_INTS:
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be ≥ 0, got {getattr(args, name)}")
    for name in POSITIVE_FLOATS:
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.channels is not None and min(args.channels) < 1:
        p.error(f"--channels must be ≥ 1, got {args.channels}")
    if args.model == "conv" and args.channels is not None and len(args.channels) != 1:
        p.error(f"--channels: --model conv takes one value, got {args.channels}")
    if args.milestones is not None and (min(args.milestones) < 1 or args.milestones != sorted(args.milestones)):
        p.error(f"--milestones must be increasing epochs ≥ 1, got {args.milestones}")
    if not 0 < args.gamma <= 1:
        p.error(f"--gamma must be in (0, 1], got {args.gamma}")
    if min(args.epsilons) < 0 or args.certified_eps < 0:
        p.error("--epsilons and --certified-eps must be ≥ 0")
    if not 0 <= args.certified_warmup <= 1 or not 0 <= args.certified_ramp <= 1:
        p.error("--certified-warmup and --certified-ramp must be in [0, 1]")
    if args.lipschitz_penalty < 0:
        p.error("--lipschitz-penalty must be ≥ 0")
    if args.operator_penalty < 0:
        p.error(f"--operator-penalty must be ≥ 0, got {args.operator_penalty}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file; give a folder (it will hold checkpoint.pt and results.json)")
    if args.device is not None:  # kept a string (it is saved in the run's configuration)
        try:
            device_arg(args.device)
        except argparse.ArgumentTypeError as err:
            p.error(f"--device {args.device}: {err}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The options, with their dependent defaults filled in; ``args.explicit`` names the options
        typed on the command line.
    """
    p = build_parser()
    args = p.parse_args(argv)
    validate(p, args)
    args.explicit = explicit_options(p, argv)
    if "loss" in args.explicit and args.certified_eps == 0 and not args.resume:
        p.error(f"--loss {args.loss} chooses the certified-training loss: give --certified-eps > 0 "
                "(without it training uses plain cross entropy)")
    if "channels" in args.explicit and args.model == "fc" and not args.resume:  # else silently unused
        p.error("--channels sets the widths of --model conv and multitier; --model fc takes --hidden")
    if "hidden" in args.explicit and args.model != "fc" and not args.resume:
        p.error(f"--hidden sets the width of --model fc; --model {args.model} takes --channels")
    if args.out is None:
        args.out = Path(f"runs/{args.dataset}_{args.model}")
    if args.resume and args.overwrite:
        p.error("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if args.data_root is not None:  # saved with the run: commands on it reuse it from any folder
        args.data_root = args.data_root.absolute()
    return finish_defaults(args)


RUN_FILES = ("checkpoint.pt", "results.json")
"""The files that make a folder a run (``--out`` holding one needs --resume or --overwrite)."""
REPLACED_FILES = (*RUN_FILES, "metrics.csv", "curves.png", "certify.json", "certify.png", "tensorboard")
"""What ``--overwrite`` removes first: every output that describes the run being replaced."""


def refuse_existing_run(args: argparse.Namespace) -> None:
    """Refuse to train into an ``--out`` that holds a run, unless ``--resume`` continues it or
    ``--overwrite`` replaces it (checked when the command runs, not when options are parsed).

    Raises:
        RunExistsError: naming the run that is there and the options that would proceed.
    """
    if not args.resume and not getattr(args, "overwrite", False) and holds_run(args.out):
        raise RunExistsError(f"--out {args.out} already holds a run ({describe_run(args.out)}); continue it "
                             "with --resume, replace it with --overwrite, or choose another --out")


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run of this command (a checkpoint or a results.json)."""
    return any((folder / name).is_file() for name in RUN_FILES)


def describe_run(folder: Path) -> str:
    """The run in ``folder`` in a few words: its model, epochs and whether it finished."""
    try:
        saved = json.loads((folder / "results.json").read_text())
        config, epochs = saved["config"], len(saved["history"])
        return (f"{config['dataset']} {config['model']}, {epochs} of {config['epochs']} epochs, "
                + ("finished" if saved.get("complete") else "not finished"))
    except (OSError, ValueError, KeyError, TypeError):
        return ", ".join(name for name in RUN_FILES if (folder / name).is_file())


def finish_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on other options (epochs, certification tolerance, α)."""
    args.auto_alpha = args.alpha is None and args.solver in FB_SOLVERS
    if args.alpha is None and not args.auto_alpha:
        args.alpha = 1.0
    if args.epochs is None:
        args.epochs = CERTIFIED_EPOCHS if args.certified_eps > 0 else 4
    if args.certified_eps > 0 and args.certified_eps not in args.epsilons:
        args.epsilons = sorted([*args.epsilons, args.certified_eps])
    if args.certified_eps > 0 and args.certify_tol is None:
        # certified-trained models have large states and ‖I − W‖: at --tol the slack would eat
        # most radii, so certify from tight solves (cheap next to an epoch of training)
        args.certify_tol = TIGHT_TOL
    return args


def length_dependent(config: dict) -> str | None:
    """Why this run's schedule depends on its total length (None when it does not)."""
    if config["schedule"] in ("cosine", "onecycle"):
        return f"its {config['schedule']} schedule is planned over all epochs"
    if config["schedule"] == "step" and not config.get("milestones"):
        return "its step schedule decays at quarters of the run (give --milestones to fix them)"
    if config.get("certified_eps", 0) > 0 and (config.get("certified_ramp", 0) or config.get("certified_warmup", 0)):
        return "its certified-training ε ramp is a fraction of the run"
    return None


def resume_config(args: argparse.Namespace, saved: dict, checkpoint: Path) -> argparse.Namespace:
    """The saved run's settings, with the few options that may change taken from the command line.

    Args:
        args: the parsed command line (with ``explicit``).
        saved: the configuration stored in the checkpoint.
        checkpoint: where it was read (named in the messages).

    Returns:
        The merged options; ``MAY_CHANGE_ON_RESUME`` may differ from the saved run.

    Raises:
        SystemExit: a typed option contradicts the saved run, or ``--epochs`` would change the
            length of a run whose schedule depends on it.
    """
    try:
        merged = merge_saved_config({**SAVED_BEFORE_OPTION, **saved}, vars(args), args.explicit,
                                    may_change=MAY_CHANGE_ON_RESUME, source=checkpoint)
    except ResumeConfigError as err:
        raise SystemExit(f"error: {err}") from None
    merged = argparse.Namespace(**merged)
    merged.out, merged.resume, merged.overwrite = args.out, True, False
    if "data_root" not in args.explicit:
        merged.data_root = Path(saved["data_root"]) if saved.get("data_root") else None
    if merged.epochs != saved["epochs"] and length_dependent(saved):
        raise SystemExit(f"error: --epochs {merged.epochs} would change the length of the run saved in "
                         f"{checkpoint} ({saved['epochs']} epochs), but {length_dependent(saved)}: the "
                         "resumed run would differ from any uninterrupted one. Resume without "
                         "--epochs, or start a new run (--schedule constant, or step with "
                         "--milestones, can be extended).")
    return merged


def replace_run(out, say) -> None:
    """``--overwrite``: remove the outputs of the run in ``out`` that the new run would not all
    rewrite (a stale certify.json or TensorBoard events would describe the old model)."""
    removed = []
    for name in REPLACED_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        say(f"--overwrite: removed the previous run's {', '.join(removed)} from {out}")


def diverged_hint(argv: list[str] | None) -> str:
    """What to change after the parameters became NaN/inf (``argv``: the command line, parsed
    again without the checks that the run's own outputs would now fail)."""
    args = finish_defaults(build_parser().parse_args(argv))
    if args.solver in STEP_LIMITS and not getattr(args, "auto_alpha", False):
        rule = STEP_RULES[args.solver]
        return (f"the parameters became NaN/inf because the {args.solver} solves diverged at "
                f"--alpha {args.alpha:g} ({args.solver} needs α < {rule}, L = ‖I − W‖₂): omit --alpha "
                f"(α then follows 0.9·{rule} of the current W), or use --solver pr, which converges "
                "for every α")
    return (f"the parameters became NaN/inf (the solves diverged after an unstable update): lower "
            f"--lr (now {args.lr:g}) or raise --m (now {args.m:g})")
