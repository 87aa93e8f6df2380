"""Compare splitting methods on a trained monDEQ: iterations and wall time to a true residual.

For every method in ``splitting.SOLVERS`` (FB, PR, DR, Anderson on PR and on FB) and every step
size α in a grid (default 1, 1/2, …, 1/64), on one MNIST test batch:

* forward: solve z* = σ(Wz* + Ux + b) from z = 0;
* backward: solve the implicit-gradient problem (I − Wᵀ)u + Du = ḡ (D = J⁻¹ − I) for the
  cross-entropy gradient ḡ = ∂ℓ/∂z*, reusing the forward factorisation as training does;

and record the iterations and wall time until the TRUE relative residual
‖z − σ(Wz + b)‖/‖z‖ (``splitting.natural_residual``; the worst sample of the batch) first falls
below 1e-2, 1e-4 and 1e-6. Each threshold is one solve with ``tol`` set to it: the solvers stop
only once every sample's true residual is confirmed below ``tol``, and report the first such
iteration, which is what training pays. Times are the same solves repeated (median of
``--repeats`` interleaved rounds; by default only for each method's best α, which is what the
tables and plots show). The residual traces plotted are the solvers' own per-iteration residuals
(exact for FB, the Rachford methods' cheap estimate otherwise) of the tightest solve. Runs that blow
up (FB beyond its step limit 2m/L²) are reported as diverged, not as errors.

Writes to ``--out``: ``comparison.csv`` (every run), ``comparison.md`` (tables), and
``residual_vs_iteration.png``, ``residual_vs_time.png`` (each method at its best α) and
``iterations_vs_alpha.png``.

Without ``--checkpoint`` a quick model is trained first (one epoch on ``--train-limit`` images).
Everything runs on ``--device`` (default: CUDA when available, else the CPU); on CUDA each timed
call is synchronised before the clock stops.

    python experiments/compare_splitting.py --checkpoint runs/mnist_fc/checkpoint.pt --out runs/compare_fc
    python experiments/compare_splitting.py --model conv --batch 64 --out runs/compare_conv
"""
from __future__ import annotations

import argparse
import csv
import functools
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mondeq import fc_mondeq, multitier_mondeq, single_conv_mondeq
from mondeq.data import batches, load_mnist, normalize, num_batches
from mondeq.cli import device_arg
from mondeq.training import train_epoch
from splitting import SOLVERS, DiagonalQuadratic, StepSizeWarning, max_stable_alpha, peaceman_rachford

THRESHOLDS = (1e-2, 1e-4, 1e-6)
ALPHAS = tuple(2.0 ** -k for k in range(7))


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (only around timed calls); nothing to wait for elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Run:
    """One (direction, method, α) measurement."""

    direction: str
    method: str
    alpha: float
    trace: list[float]                          # worst-sample solver residual per iteration
    iterations: dict[float, int | None]         # threshold -> first iteration below it
    times: dict[float, float | None]            # threshold -> median seconds to get there
    status: str                                 # converged | diverged | not reached
    step_warning: bool
    final_residual: float
    time_model: tuple[float, float] = field(default=(0.0, 0.0))  # t(k) ≈ a + b k
    call: object = field(default=None, repr=False)  # the solver call, settings bound
    fastest: dict[float, float] = field(default_factory=dict)  # threshold -> fastest repeat


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a checkpoint of experiments/train.py (keys 'config', 'model'); none: train a quick one")
    p.add_argument("--model", choices=("fc", "conv", "multitier"), default="fc",
                   help="model to train when no checkpoint")
    p.add_argument("--train-limit", type=int, default=10000, help="training images for the quick model")
    p.add_argument("--batch", type=int, default=128, help="test batch size")
    p.add_argument("--methods", nargs="+", default=list(SOLVERS), choices=sorted(SOLVERS))
    p.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    p.add_argument("--max-iter", type=int, default=400, help="iteration cap per solve")
    p.add_argument("--anderson-memory", type=int, default=5, help="Anderson memory (pairs kept)")
    p.add_argument("--repeats", type=int, default=7, help="timing repeats (median)")
    p.add_argument("--time", choices=("best", "all"), default="best",
                   help="time each method at its best α only (what the tables and plots show), or every run")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="float64 resolves 1e-6; float32 is what training uses")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model, the data and the solves live")
    p.add_argument("--out", type=Path, default=Path("runs/compare_splitting"))
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------- model

def build_model(config: dict) -> torch.nn.Module:
    """The classifier described by a train.py config (fc, or the MNIST single-conv or
    multi-tier model)."""
    if config.get("model", "fc") not in ("fc", "conv", "multitier"):
        raise SystemExit(f"compare_splitting handles fc, conv and multitier MNIST checkpoints, got {config['model']!r}")
    if config.get("dataset", "mnist") != "mnist":
        raise SystemExit(f"compare_splitting runs on MNIST; the checkpoint was trained on {config['dataset']!r}")
    if config.get("model") == "multitier":
        channels = tuple(int(c) for c in (config.get("channels") or (16, 32, 32)))
        return multitier_mondeq(1, 28, channels, 10, m=float(config.get("m", 1.0)))
    if config.get("model", "fc") == "conv":
        channels = config.get("channels") or 54  # train.py saves a list (or None: the default)
        channels = int(channels[0] if isinstance(channels, (list, tuple)) else channels)
        return single_conv_mondeq(1, 28, channels, 10, m=float(config.get("m", 1.0)))
    return fc_mondeq(784, int(config.get("hidden", 87)), 10, m=float(config.get("m", 1.0)))


def quick_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """Train one epoch on ``--train-limit`` images with PR α = 1, tol 1e-2 (the default settings)."""
    config = {"model": args.model, "m": 1.0, "hidden": 87,
              "channels": (16, 32, 32) if args.model == "multitier" else 54}
    model = build_model(config).to(args.device)
    x, y = load_mnist(train=True)
    x, y = normalize(x[: args.train_limit]).to(args.device), y[: args.train_limit].to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3 if args.model == "fc" else 1e-3)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    data = batches(x, y, 128, shuffle=True, generator=generator)
    stats = train_epoch(model, optimizer, data, steps=num_batches(len(x), 128), desc=f"quick {args.model}")
    print(f"trained a quick {args.model} model: loss {stats.loss:.3f}, train accuracy {100 * stats.accuracy:.1f}%")
    path = args.out / "quick_checkpoint.pt"
    torch.save({"config": config, "model": model.state_dict()}, path)
    return model, {**config, "trained": f"1 epoch on {len(x)} images, saved to {path}"}


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    if args.checkpoint is None:
        return quick_model(args)
    state = torch.load(args.checkpoint, map_location=args.device, weights_only=False)
    model = build_model(state["config"]).to(args.device)
    model.load_state_dict(state["model"])
    return model, {**state["config"], "trained": f"checkpoint {args.checkpoint}"}


# ---------------------------------------------------------------------------------- problems

@dataclass
class Problem:
    """Everything a solver call needs, for one direction."""

    op: object
    prox: object
    bias: tuple
    reference_norm: torch.Tensor   # ‖z*‖ per sample, to recognise blow-up


def problems(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Problem]:
    """The forward problem and the backward (implicit-gradient) problem of the batch."""
    layer = model.layer
    with torch.no_grad():
        op = layer.linear.operator()
        bias = tuple(b.detach() for b in layer.linear.bias(x))
        exact = peaceman_rachford(op, layer.nonlinearity, bias, alpha=0.5, tol=1e-13, max_iter=20_000).z
        v = tuple(w + b for w, b in zip(op.mv(exact), bias))
        jacobian = tuple(layer.nonlinearity.derivative(t) for t in v)
    z = tuple(t.clone().requires_grad_() for t in exact)
    loss = torch.nn.functional.cross_entropy(model.logits_from_state(z), y)
    # the readout may read only some tiers (multi-tier: the last); the others get a zero gradient
    grads = torch.autograd.grad(loss, z, allow_unused=True)
    grad = tuple(torch.zeros_like(t) if g is None else g.detach() for g, t in zip(grads, z))
    back_op, back_prox = op.transpose(), DiagonalQuadratic(jacobian)
    with torch.no_grad():
        back_exact = peaceman_rachford(back_op, back_prox, grad, alpha=0.5, tol=1e-13, max_iter=20_000).z
    norm = lambda s: torch.cat([t.reshape(t.shape[0], -1) for t in s], 1).norm(dim=1)  # noqa: E731
    return {"forward": Problem(op, layer.nonlinearity, bias, norm(exact)),
            "backward": Problem(back_op, back_prox, grad, norm(back_exact))}


# ------------------------------------------------------------------------------- measurement

def solver_for(name: str, memory: int):
    solver = SOLVERS[name]
    return functools.partial(solver, memory=memory) if name.startswith("anderson") else solver


def measure(direction: str, name: str, alpha: float, problem: Problem, args: argparse.Namespace,
            resolvents: dict) -> Run:
    solver = solver_for(name, args.anderson_memory)
    # The backward pass reuses the forward factorisation (transposed), exactly as training does.
    resolvent = None
    fb_based = name in ("fb", "anderson-fb")
    if direction == "backward" and not fb_based:
        if alpha not in resolvents:
            resolvents[alpha] = problem.op.transpose().resolvent(alpha)  # the forward operator's
        resolvent = resolvents[alpha].transpose()
    call = functools.partial(solver, problem.op, problem.prox, problem.bias, alpha=alpha,
                             resolvent=resolvent)
    iterations: dict[float, int | None] = {eps: None for eps in THRESHOLDS}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            if fb_based:  # FB's step-size rule, checked once before the solves
                solver(problem.op, problem.prox, problem.bias, alpha=alpha, tol=1.0, max_iter=1,
                       check_step="warn")
            for eps in sorted(THRESHOLDS, reverse=True):
                result = call(tol=eps, max_iter=args.max_iter)
                if not result.converged:
                    break
                iterations[eps] = result.iterations
    step_warning = any(issubclass(w.category, StepSizeWarning) for w in caught)
    trace = result.residuals.max(dim=1).values.cpu().tolist()  # one device-to-host copy
    z_norm = torch.cat([t.reshape(t.shape[0], -1) for t in result.z], 1).norm(dim=1)
    blew_up = (not bool(torch.isfinite(z_norm).all())
               or bool((z_norm > 100 * problem.reference_norm + 1e-8).any()))
    # No progress: the last residual is no better than the best of the first tenth of the run
    # (FB beyond its step limit oscillates with a bounded iterate when ReLU clips the unstable
    # direction; its residual never falls).
    # Only a method without a convergence guarantee at this α can fail to progress: FB-based
    # methods inside 0 < α < 2m/L² converge (slowly at small α: "not reached", never "div").
    early = trace[: max(10, len(trace) // 10)]
    unguaranteed = fb_based and alpha >= max_stable_alpha(problem.op)
    # (FB's first candidate is z0 = 0, whose relative residual is huge or inf: not divergence)
    grew = (any(math.isnan(r) for r in trace)
            or (unguaranteed and len(trace) > len(early) and trace[-1] >= min(early)))
    if iterations[min(THRESHOLDS)] is not None:
        status = "converged"
    elif blew_up or grew:
        status = "diverged"
    else:
        status = "not reached"
    return Run(direction, name, alpha, trace, iterations, {eps: None for eps in THRESHOLDS}, status,
               step_warning, final_residual=trace[-1] if trace else float("nan"), call=call)


def time_runs(runs: list[Run], repeats: int, device: torch.device = torch.device("cpu")) -> None:
    """Median wall time of each run's solve to each threshold it reached (and of one iteration).

    Rounds interleave all runs, so a change in the machine's load hits every method alike.
    """
    jobs = [(r, eps, eps) for r in runs for eps in THRESHOLDS
            if r.iterations[eps] is not None and r.status != "diverged"]
    jobs += [(r, None, min(THRESHOLDS)) for r in runs if r.status != "diverged" and r.trace]
    samples: dict[tuple[int, float | None], list[float]] = {(id(r), eps): [] for r, eps, _ in jobs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            for run, eps, tol in jobs:
                synchronize(device)
                start = time.perf_counter()
                # +1: on CUDA the stop is read one iteration late
                run.call(tol=tol, max_iter=run.iterations[eps] + 1 if eps is not None else 1)
                synchronize(device)
                samples[id(run), eps].append(time.perf_counter() - start)
    first = {}
    for run, eps, _ in jobs:
        if eps is None:
            first[id(run)] = statistics.median(samples[id(run), eps])
        else:
            run.times[eps] = statistics.median(samples[id(run), eps])
            run.fastest[eps] = min(samples[id(run), eps])
    for run in runs:
        run.time_model = _fit_time(run, first.get(id(run)))


def _fit_time(run: Run, one_iteration: float | None) -> tuple[float, float]:
    """t(k) ≈ a + b k through the one-iteration time and the longest timed run (for the plot)."""
    points = [(run.iterations[e], t) for e, t in run.times.items() if t is not None]
    if not points or one_iteration is None:
        return (0.0, 0.0)
    k, t = max(points)
    slope = (t - one_iteration) / (k - 1) if k > 1 else one_iteration
    return (one_iteration - slope, slope)


def best_alpha(runs: list[Run], direction: str, method: str, eps: float = 1e-4) -> Run | None:
    """The α with fewest iterations to ``eps`` (ties: less time, then larger α)."""
    candidates = [r for r in runs if r.direction == direction and r.method == method and r.iterations[eps]]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (r.iterations[eps], r.times[eps] or math.inf, -r.alpha))


# ----------------------------------------------------------------------------------- reports

def alpha_label(a: float) -> str:
    k = -math.log2(a)
    return "1" if a == 1 else (f"1/{2 ** round(k)}" if abs(k - round(k)) < 1e-9 and k > 0 else f"{a:g}")


def cell(run: Run, eps: float) -> str:
    k = run.iterations[eps]
    if k is not None:
        return str(k)
    return "div" if run.status == "diverged" else "–"


def write_csv(runs: list[Run], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["direction", "method", "alpha", "threshold", "iterations", "time_ms",
                    "time_ms_fastest", "status", "step_size_warning", "final_residual"])
        for r in runs:
            for eps in THRESHOLDS:
                t = r.times[eps]
                w.writerow([r.direction, r.method, r.alpha, eps, r.iterations[eps] or "",
                            f"{1000 * t:.3f}" if t is not None else "",
                            f"{1000 * r.fastest[eps]:.3f}" if eps in r.fastest else "", r.status, r.step_warning,
                            f"{r.final_residual:.3e}"])


def markdown(runs: list[Run], methods: list[str], alphas: list[float], info: dict) -> str:
    lines = [f"# Splitting methods compared ({info['model']})", "",
             f"Model: {info['describe']}. Batch: {info['batch']} MNIST test images, {info['dtype']}, "
             f"z0 = 0, max_iter {info['max_iter']}, Anderson memory {info['memory']}. "
             f"FB's guaranteed range is α < 2m/L² = {info['fb_limit']:.3g} (m = {info['m']:g}, "
             f"L = {info['L']:.3g}). Residual: worst sample's true relative residual "
             "‖z − σ(Wz + b)‖/‖z‖ (each solve stops once it is confirmed below tol). Times: median "
             f"of repeated solves at that tol; device {info['device']}, torch threads: "
             f"{info['threads']}, machine shared with other jobs.", ""]
    for direction in ("forward", "backward"):
        lines += [f"## {direction.capitalize()}: iterations to reach 1e-4, for each α", "",
                  "| method | " + " | ".join(f"α={alpha_label(a)}" for a in alphas) + " |",
                  "|---|" + "---:|" * len(alphas)]
        for m in methods:
            row = {r.alpha: r for r in runs if r.direction == direction and r.method == m}
            lines.append(f"| {m} | " + " | ".join(cell(row[a], 1e-4) for a in alphas) + " |")
        lines += ["", "`div`: diverged (non-finite, the iterate blew up, or no progress at all: "
                  "bounded oscillation); `–`: still converging, not reached within max_iter.", ""]
        lines += [f"## {direction.capitalize()}: each method at its best α (fewest iterations to 1e-4)", "",
                  "| method | best α | it. to 1e-2 | it. to 1e-4 | it. to 1e-6 | ms to 1e-2 | ms to 1e-4 | ms to 1e-6 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m in methods:
            b = best_alpha(runs, direction, m)
            if b is None:
                lines.append(f"| {m} | – | – | – | – | – | – | – |")
                continue
            its = " | ".join(cell(b, e) for e in THRESHOLDS)
            ms = " | ".join(f"{1000 * b.times[e]:.2f}" if b.times[e] is not None else "–" for e in THRESHOLDS)
            lines.append(f"| {m} | {alpha_label(b.alpha)} | {its} | {ms} |")
        lines.append("")
    lines += ["## Checks", ""] + [f"- {c}" for c in checks(runs, methods, alphas, info)] + [""]
    return "\n".join(lines)


def checks(runs: list[Run], methods: list[str], alphas: list[float], info: dict) -> list[str]:
    out = []
    fwd = [r for r in runs if r.direction == "forward"]
    if "pr" in methods:
        pr_ok = all(r.status == "converged" for r in fwd if r.method == "pr")
        out.append(f"PR converges (to 1e-6) for every α in the grid: {'yes' if pr_ok else 'no'}.")
    if "fb" in methods:
        div = sorted(alpha_label(r.alpha) for r in fwd if r.method == "fb" and r.status == "diverged")
        warned = sorted(alpha_label(r.alpha) for r in fwd if r.method == "fb" and r.step_warning)
        out.append(f"FB diverges for α ∈ {{{', '.join(div) or 'none'}}}; it warned (α ≥ 2m/L²) for "
                   f"α ∈ {{{', '.join(warned) or 'none'}}}.")
    if "pr" in methods and "fb" in methods:
        for direction in ("forward", "backward"):
            pr, fb = best_alpha(runs, direction, "pr"), best_alpha(runs, direction, "fb")
            if pr and fb:
                out.append(f"{direction}: PR at its best α needs {pr.iterations[1e-4]} iterations to 1e-4, "
                           f"FB at its best α {fb.iterations[1e-4]} ({fb.iterations[1e-4] / pr.iterations[1e-4]:.1f}×).")
    for direction in ("forward", "backward"):
        best = [b for m in methods if (b := best_alpha(runs, direction, m)) is not None]
        pr = best_alpha(runs, direction, "pr") if "pr" in methods else None
        if best and pr:
            top = min(best, key=lambda r: (r.iterations[1e-4], r.times[1e-4] or math.inf))
            ratio = top.iterations[1e-4] / pr.iterations[1e-4]
            out.append(f"{direction}: fewest iterations to 1e-4: {top.method} (α={alpha_label(top.alpha)}) "
                       f"with {top.iterations[1e-4]}, {ratio:.2f}× plain PR at its best α "
                       f"({pr.iterations[1e-4]}); target ≤ 0.5×: {'met' if ratio <= 0.5 else 'NOT met'}.")
    return out


def plot(runs: list[Run], methods: list[str], alphas: list[float], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for kind in ("iteration", "time"):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for ax, direction in zip(axes, ("forward", "backward")):
            for m in methods:
                b = best_alpha(runs, direction, m)
                if b is None:
                    continue
                k = range(1, len(b.trace) + 1)
                a0, slope = b.time_model
                xs = list(k) if kind == "iteration" else [1000 * (a0 + slope * i) for i in k]
                ax.plot(xs, b.trace, label=f"{m} (α={alpha_label(b.alpha)})")
            for eps in THRESHOLDS:
                ax.axhline(eps, color="grey", lw=0.6, ls=":")
            ax.set(yscale="log", title=f"{direction}: each method at its best α",
                   xlabel="iteration" if kind == "iteration" else "wall time (ms, fitted)",
                   ylabel="worst-sample residual (the solver's)")
            ax.set_ylim(1e-8, None)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"residual_vs_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, direction in zip(axes, ("forward", "backward")):
        rows = {m: sorted((r for r in runs if r.direction == direction and r.method == m), key=lambda r: r.alpha)
                for m in methods}
        top = max((r.iterations[1e-4] or 1 for m in methods for r in rows[m]), default=1) * 1.5
        for m in methods:
            line, = ax.plot([r.alpha for r in rows[m]], [r.iterations[1e-4] or math.nan for r in rows[m]],
                            marker="o", label=m)
            div = [r.alpha for r in rows[m] if r.status == "diverged"]
            if div:
                ax.scatter(div, [top] * len(div), marker="x", s=60, color=line.get_color())
        ax.set(xscale="log", yscale="log", title=f"{direction}: iterations to 1e-4 (× = diverged)",
               xlabel="α", ylabel="iterations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "iterations_vs_alpha.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths + [path]


def main(argv: list[str] | None = None) -> list[Run]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model, config = load_model(args)
    dtype = getattr(torch, args.dtype)
    model = model.to(device=args.device, dtype=dtype).eval()
    x, y = load_mnist(train=False)
    x, y = normalize(x[: args.batch]).to(device=args.device, dtype=dtype), y[: args.batch].to(args.device)
    x = x.reshape(len(x), *model.layer.linear.input_shape)
    probs = problems(model, x, y)
    op = probs["forward"].op
    info = {"model": config.get("model", "fc"), "describe": config["trained"], "batch": len(x),
            "dtype": args.dtype, "max_iter": args.max_iter, "memory": args.anderson_memory,
            "fb_limit": max_stable_alpha(op), "m": op.m, "L": op.lipschitz(),
            "threads": torch.get_num_threads(), "device": str(args.device)}
    runs: list[Run] = []
    for direction, problem in probs.items():
        resolvents: dict = {}
        for name in args.methods:
            for alpha in args.alphas:
                run = measure(direction, name, alpha, problem, args, resolvents)
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


if __name__ == "__main__":
    main()
    sys.exit(0)
