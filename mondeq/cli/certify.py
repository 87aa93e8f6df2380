"""The certify command: sound certified ℓ2 accuracy of a trained monDEQ (any model and dataset the
trainer makes) against PGD robust accuracy, both in pixel scale (``experiments/certify.py``; its docstring describes the outputs).

The certificate is :func:`mondeq.certify`'s with its defaults (the one rule of the API, the
training report and this command: the strongest affordable bound, float64 solves at tol 1e-6);
options that ask for less say so in the output. PGD's verdicts are judged at the truth
(:func:`mondeq.pgd`), and a PGD success inside a certified radius would be a counterexample (there
must be none). The looseness search (the largest Lipschitz ratio found by ascent) is opt-in
(``--looseness-limit N``), announced with an estimate and a progress line.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from ..data import load_dataset
from ..models import load_run
from ..robustness import pairwise_lipschitz, pgd
from ..robustness.attacks import PGD_RESTARTS, PGD_STEPS
from ..robustness.certification import (CERTIFY_BOUNDS, CERTIFY_DTYPE, CERTIFY_MULTIPLIERS, CERTIFY_TOL,
                                        TIGHT_MAX_ITER, certificate_constants, certified_accuracy, certify)
from ..robustness.joint_bound import MULTIPLIERS
from ..robustness.looseness import ascend_lipschitz_ratio, pgd_pair_ratio
from ..training import read_checkpoint
from .options import (HelpFormatter, checkpoint_file, data_root_arg, default_device, device_arg, hidden_alias,
                      positive_float, positive_int, run_data_root)
from .plots import plot_certified

DESCRIPTION = ("Certify a trained monDEQ: sound certified ℓ2 accuracy against PGD robust accuracy on its "
               "dataset's test set, radii in pixel scale.")
EPSILONS = (0.1, 0.3, 0.5, 1.0, 1.58)
LOOSENESS_CHUNK = 16
"""Images per ratio-ascent call of the opt-in looseness search (one progress line each)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the certify command's options (``experiments/certify.py --help``)."""
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("run", type=Path, help="a run of mondeq train: its --out folder or its checkpoint.pt, "
                   "or the name of a pretrained model (mondeq.pretrained())")
    p.add_argument("--epsilons", type=positive_float, nargs="+", default=list(EPSILONS),
                   help="ℓ2 radii in pixel scale [0, 1], each > 0")
    p.add_argument("--tol", type=positive_float, default=CERTIFY_TOL,
                   help="re-solve at this tolerance before certifying, as mondeq.certify does (the "
                        "trained tolerance is also reported, to show the slack it costs)")
    p.add_argument("--max-iter", type=positive_int, default=TIGHT_MAX_ITER, help="iteration cap of the tight solve")
    p.add_argument("--bound", choices=CERTIFY_BOUNDS, default="auto",
                   help="margin constants: auto (mondeq.certify's: the joint bound where it can be built), "
                        "the joint bound of x ↦ h_y − h_j (mondeq.pairwise_lipschitz, never larger) or the "
                        "product ‖H_y − H_j‖·‖U‖₂/(m·min σ)")
    p.add_argument("--multipliers", choices=MULTIPLIERS, default=CERTIFY_MULTIPLIERS,
                   help="the joint bound's multipliers: auto (diagonal where that search is cheap), "
                        "scalar or diagonal")
    p.add_argument("--dtype", choices=("float64", "float32"), default=str(CERTIFY_DTYPE).removeprefix("torch."),
                   help="precision of certification and attacks (float32 solves stall near tol 1e-6)")
    p.add_argument("--test-limit", type=positive_int, default=None, help="certify only the first N test images")
    p.add_argument("--attack-limit", type=positive_int, default=None,
                   help="attack only the first N test images (default: all certified ones)")
    p.add_argument("--steps", type=positive_int, default=PGD_STEPS,
                   help="PGD steps per restart (in the run's float32; verdicts at --tol in --dtype)")
    p.add_argument("--restarts", type=positive_int, default=PGD_RESTARTS, help="PGD restarts (the first from x)")
    p.add_argument("--soundness-checks", type=int, default=8,
                   help="per ε, attack this many images whose certified radius exceeds ε too (a success "
                        "there would be a counterexample); the other certified images count as robust "
                        "without an attack (-1: attack them all)")
    p.add_argument("--batch-size", type=positive_int, default=1000, help="images per certification batch")
    p.add_argument("--looseness-limit", type=int, default=0,
                   help="search the largest Lipschitz ratio (pair ascent on the binding margin, float64 "
                        "solves at --tol) on the first N test images: minutes on a conv model, so opt-in "
                        "(0: skip; the PGD pairs' ratio is always reported)")
    p.add_argument("--ascent-steps", type=positive_int, default=20, help="steps of that ascent")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the run's folder; "
                   "runs/pretrained/NAME for a pretrained model)")
    p.add_argument("--data-root", type=data_root_arg, default=None,
                   help="folder holding mnist/ (default: the run's own data root, else $MONDEQ_DATA, "
                        "the checkout's data/, then ~/.cache/mondeq)")
    hidden_alias(p, "--data", dest="data_root", type=Path)
    p.add_argument("--seed", type=int, default=0, help="seed of PGD's random restarts")
    p.add_argument("--device", type=device_arg, default=default_device(),
                   help="where the model, the data and the attack's generator live (default: cuda when "
                        "available)")
    return p.parse_args(argv)


def load_model(path: Path, dtype: torch.dtype,
               device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The classifier a training run saved (:func:`mondeq.load_run`: any model and dataset, with
    its input normalisation and tuned α), in eval mode.

    Args:
        path: the run folder, or its ``checkpoint.pt``.
        dtype: precision of the returned model.
        device: where the checkpoint is loaded and the model lives.

    Returns:
        The model and the raw checkpoint dictionary.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        CheckpointError: an unreadable checkpoint, or weights that do not fit its config.
        InvalidSettingError: a config naming an unknown model or dataset.
    """
    checkpoint = checkpoint_file(path)
    state = read_checkpoint(checkpoint, map_location=device)
    model = load_run(checkpoint, map_location=device)
    return model.to(device=device, dtype=dtype).eval(), state


def main(argv: list[str] | None = None) -> dict:
    """Run the certify command.

    Args:
        argv: the command line without the program name (default: ``sys.argv[1:]``).

    Returns:
        The report written to ``certify.json``.
    """
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    device = args.device
    model, state = load_model(args.run, dtype, device)
    out = args.out or output_folder(args.run)
    out.mkdir(parents=True, exist_ok=True)
    dataset = state["config"].get("dataset") or "mnist"
    args.data_root = run_data_root(args.data_root, state["config"])  # the run's, unless given
    x, labels = load_dataset(dataset, args.data_root, train=False)  # the data-root rule of every command
    x = x[: args.test_limit].to(device=device, dtype=dtype)  # pixels: the model normalises them
    labels = labels[: args.test_limit].to(device)
    eps_list = sorted(args.epsilons)
    layer = model.layer
    print(f"{state['config']['model']} monDEQ from {args.run} (epoch {state['epoch']}), "
          f"{len(x)} test images, {args.dtype}, on {device}")

    start = time.perf_counter()  # the margin constants first, so that the solve times below are solves
    gamma, (bound, multipliers), _ = certificate_constants(model, args.bound, args.multipliers)
    constants_time = time.perf_counter() - start
    if gamma is None:
        gamma = pairwise_lipschitz(model, bound="product")  # what the ratios below are fractions of
    else:
        off = ~torch.eye(len(gamma), dtype=torch.bool, device=gamma.device)
        ratio = (pairwise_lipschitz(model, bound="product") / gamma)[off]
        print(f"joint margin bound ({multipliers} multipliers, built in {constants_time:.1f} s): "
              f"{float(ratio.median()):.2f}× tighter than the product bound (median over class pairs; "
              f"least {float(ratio.min()):.2f}×); certified accuracy below uses it", flush=True)
    settings = dict(epsilons=eps_list, batch_size=args.batch_size, bound=args.bound,
                    multipliers=args.multipliers, dtype=None)  # each model in the precision it is in
    # the trained settings' certificate in the trained precision (float32), as the run saw it
    trained = copy.deepcopy(model).float() if dtype == torch.float64 else model
    start = time.perf_counter()
    loose = certify(trained, x.to(next(trained.parameters()).dtype), labels, tol=None, **settings)
    loose_time = time.perf_counter() - start
    start = time.perf_counter()
    tight = certify(model, x, labels, tol=args.tol, max_iter=args.max_iter, **settings)
    tight_time = time.perf_counter() - start
    print(f"certificate: {tight.describe()}"
          + (f"; weaker than mondeq.certify's default: {', '.join(tight.weaker_than_default())}"
             if tight.weaker_than_default() else " (mondeq.certify's default)"), flush=True)
    clean = float(tight.correct.double().mean())
    print(f"Lipschitz bound {tight.lipschitz:.4f} (pixel scale: ‖U‖₂/m / min σ), "
          f"{tight.lipschitz * tight.pixel_scale:.4f} (‖U‖₂/m, normalised input)")
    for name, cert, secs, tol in (("trained", loose, loose_time, layer.tol), ("tight", tight, tight_time, args.tol)):
        print(f"solve at tol {tol:g} ({name}): {cert.forward_iterations:.0f} iterations, {secs:.1f} s; "
              f"‖ẑ − z*‖ ≤ {float(cert.state_error.mean()):.3g} (mean), radius slack "
              f"{float(cert.slack.mean()):.3g} mean / {float(cert.slack.max()):.3g} max (pixel); "
              f"certified accuracy lost to slack: "
              + ", ".join(f"ε={e:g}: {100 * (float((cert.radius_unsound > e).double().mean()) - cert.certified[e]):.2f}pt"
                          for e in eps_list))

    # PGD in pixel scale. The attack runs at the model's own (cheap) tolerance; its final points are
    # then judged by the tightly solved network the certificates are about. Per ε, only images that
    # survived the smaller radii are attacked; every attacked image whose certified radius exceeds
    # ε is a soundness check (a misclassified PGD point there would be a counterexample).
    n_attack = len(x) if args.attack_limit is None else min(args.attack_limit, len(x))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    attack = dict(norm="l2", steps=args.steps, restarts=args.restarts, bounds=(0.0, 1.0),
                  generator=generator, tol=args.tol, dtype=dtype)  # verdicts at the certificate's solve
    # the steps in the trained precision (float32: half the time of float64), the verdicts not
    attacker = trained
    print(f"PGD on {n_attack} images: {args.steps} steps × {args.restarts} restarts per ε, in float32, "
          f"verdicts re-solved at tol {args.tol:g} in {args.dtype} (--steps, --restarts, --attack-limit "
          f"set the budget)", flush=True)
    robust_mask = tight.correct[:n_attack].clone()
    radius = tight.radius[:n_attack]
    robust, counterexamples, checked = {}, 0, 0
    pgd_fraction = torch.zeros(n_attack, dtype=dtype, device=device)  # largest ratio/K per image
    start = time.perf_counter()
    for eps in eps_list:
        # certified images are robust at ε (proven): attack only a few of them, as a soundness check
        proven = robust_mask & (radius > eps)
        spot = proven.nonzero().squeeze(1)
        if args.soundness_checks >= 0:
            proven[spot[:args.soundness_checks]] = False
        else:
            proven[:] = False
        idx = (robust_mask & ~proven).nonzero().squeeze(1)
        for s in range(0, len(idx), args.batch_size):
            chunk = idx[s:s + args.batch_size]
            result = pgd(attacker, x[chunk].to(next(attacker.parameters()).dtype), labels[chunk], eps, **attack)
            broken = result.success  # judged at the truth: re-solved at --tol, beyond the solver error
            robust_mask[chunk[broken]] = False
            pairs = pgd_pair_ratio(model, x[chunk], result.x_adv.to(dtype), labels[chunk], tol=args.tol,
                                   max_iter=args.max_iter, constants=gamma)
            pgd_fraction[chunk] = torch.maximum(pgd_fraction[chunk], pairs.fraction)
            certified = radius[chunk] > eps
            counterexamples += (broken & certified).sum()  # summed on the device, read once
            checked += certified.sum()
        robust[eps] = float(robust_mask.double().mean())
        spent, done = time.perf_counter() - start, eps_list.index(eps) + 1
        print(f"PGD ε={eps:g}: robust accuracy {100 * robust[eps]:.2f}% on {n_attack} images "
              f"({spent:.0f} s" + (f", at most about {spent / done * (len(eps_list) - done):.0f} s left)"
                                   if done < len(eps_list) else ")"), flush=True)
    attack_time = time.perf_counter() - start
    counterexamples, checked = int(counterexamples), int(checked)

    looseness = looseness_search(model, x, labels, pgd_fraction, args, gamma)
    attacked_certified = tight.accuracy_at(eps_list) if n_attack == len(x) else \
        certified_accuracy(radius, eps_list)  # the gap compares the same (attacked) images
    rows = [{"eps": e, "clean": clean, "certified": tight.certified[e], "certified_trained_tol": loose.certified[e],
             "pgd_robust": robust[e], "pgd_minus_certified": robust[e] - attacked_certified[e]} for e in eps_list]
    print(f"\n{'ε':>6} {'clean':>8} {'certified':>10} {'cert@tol':>9} {'PGD robust':>11} {'PGD − cert':>11}")
    for r in rows:
        print(f"{r['eps']:>6g} {100 * r['clean']:>7.2f}% {100 * r['certified']:>9.2f}% "
              f"{100 * r['certified_trained_tol']:>8.2f}% {100 * r['pgd_robust']:>10.2f}% "
              f"{100 * r['pgd_minus_certified']:>9.2f}pt")
    print(f"(certified: tol {args.tol:g}; cert@tol: the trained tol {layer.tol:g}; PGD − cert: on the {n_attack} "
          f"attacked images; PGD on {n_attack} images, "
          f"{args.steps} steps × {args.restarts} restarts, {attack_time:.0f} s)")
    print(f"PGD counterexamples inside certified radii: {counterexamples} of {checked} certified (image, ε) pairs attacked")
    constant = "Γ_yj (joint bound)" if bound == "joint" else "K_yj"
    print(f"largest Lipschitz ratio found / certified {constant}: {looseness['pgd_max_fraction']:.3f} (PGD pairs)"
          + (f", {looseness['ascent_max_fraction']:.3f} max / {looseness['ascent_median_fraction']:.3f} median "
             f"(ratio ascent, {looseness['ascent_images']} images, {looseness['ascent_time_s']:.0f} s)"
             if looseness["ascent_images"] else "") + " (≤ 1: the certificate is sound; 1 would be tight)")

    report = {"run": str(args.run), "epoch": state["epoch"], "config": state["config"], "table": rows,
              "lipschitz": tight.lipschitz, "counterexamples": counterexamples, "certified_pairs_attacked": checked,
              "slack": {"trained_tol": layer.tol, "tight_tol": args.tol,
                        "mean_radius_slack_trained_tol": float(loose.slack.mean()),
                        "mean_radius_slack_tight_tol": float(tight.slack.mean()),
                        "max_radius_slack_trained_tol": float(loose.slack.max()),
                        "max_radius_slack_tight_tol": float(tight.slack.max())},
              "certificate": {"bound": tight.bound, "multipliers": tight.multipliers, "tol": tight.tol,
                              "dtype": tight.dtype, "weaker_than_default": tight.weaker_than_default()},
              "radius": tight.radius.tolist(),
              "times_s": {"margin_constants": constants_time, "certify_trained_tol": loose_time,
                          "certify_tight_tol": tight_time, "pgd": attack_time},
              "pgd": {"images": n_attack, "steps": args.steps, "restarts": args.restarts},
              "looseness": looseness}
    replaced = (out / "certify.json").exists()
    (out / "certify.json").write_text(json.dumps(report, indent=2))
    plot_certified(out / "certify.png", {f"certified (tol {args.tol:g})": tight.radius,
                                         f"certified (tol {layer.tol:g})": loose.radius},
                   clean, robust, f"{state['config']['model']} monDEQ, {Path(args.run).name}",
                   pgd_images=n_attack)
    print(f"wrote {out / 'certify.json'}, {out / 'certify.png'}"
          + (" (replacing the previous report there)" if replaced else ""))
    return report


def output_folder(run: Path) -> Path:
    """Where ``mondeq certify RUN`` writes without ``--out``: a run folder itself, a checkpoint's
    folder, and for a pretrained model's name ``runs/pretrained/NAME`` (never the current folder,
    never the installed package)."""
    from ..pretrained.registry import pretrained_name

    if run.is_dir():
        return run
    name = pretrained_name(run)
    return run.parent if name is None else Path("runs") / "pretrained" / name


def looseness_search(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor,
                     pgd_fraction: torch.Tensor, args: argparse.Namespace, constants: torch.Tensor) -> dict:
    """The largest Lipschitz ratios found, as fractions of the certified ``constants`` (K_yj or Γ_yj)
    (:mod:`mondeq.robustness.looseness`): over the PGD pairs already attacked, and, when asked for
    (``--looseness-limit N``), by the ratio ascent on the first N images (correctly classified or
    not), in chunks of ``LOOSENESS_CHUNK`` with a progress line and an estimate of the time left."""
    out = {"pgd_max_fraction": float(pgd_fraction.max()) if len(pgd_fraction) else 0.0,
           "ascent_images": min(max(args.looseness_limit, 0), len(x))}
    n = out["ascent_images"]
    if n:
        print(f"looseness search: ratio ascent ({args.ascent_steps} steps, solves at tol {args.tol:g}) on {n} "
              f"images, in chunks of {LOOSENESS_CHUNK}", flush=True)
        start = time.perf_counter()
        fraction, ratio = [], []
        for s in range(0, n, LOOSENESS_CHUNK):
            stop = min(s + LOOSENESS_CHUNK, n)
            found = ascend_lipschitz_ratio(model, x[s:stop], labels[s:stop], steps=args.ascent_steps,
                                           tol=args.tol, max_iter=args.max_iter, constants=constants)
            fraction.append(found.fraction)
            ratio.append(found.ratio)
            spent = time.perf_counter() - start
            print(f"  looseness search: {stop}/{n} images, {spent:.0f} s, about {spent / stop * (n - stop):.0f} s "
                  "left", flush=True)
        fraction_t, ratio_t = torch.cat(fraction), torch.cat(ratio)
        out.update(ascent_max_fraction=float(fraction_t.max()), ascent_median_fraction=float(fraction_t.median()),
                   ascent_max_ratio=float(ratio_t.max()), ascent_time_s=time.perf_counter() - start)
    return out


def run(argv: list[str] | None = None) -> int:
    """:func:`main` as a command (``mondeq certify``): its exit status."""
    return 0 if main(argv) else 1


if __name__ == "__main__":  # python -m mondeq.cli.certify: the same program as experiments/certify.py
    from .main import run_command

    sys.exit(run_command("certify"))
