"""The comparison's outputs: ``comparison.csv`` (every run), the Markdown tables and checks, and
the plots."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from .measurement import THRESHOLDS, Run, best_alpha


def alpha_label(a: float) -> str:
    """α as a power of two when it is one (``1/8``), else ``%g``."""
    k = -math.log2(a)
    return "1" if a == 1 else (f"1/{2 ** round(k)}" if abs(k - round(k)) < 1e-9 and k > 0 else f"{a:g}")


def cell(run: Run, eps: float) -> str:
    """Iterations to ``eps`` for a table: a count, ``div`` (diverged) or ``–`` (not reached)."""
    k = run.iterations[eps]
    if k is not None:
        return str(k)
    return "div" if run.status == "diverged" else "–"


def write_csv(runs: list[Run], path: Path) -> None:
    """Every run at every threshold, one row each."""
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
    """The report: per direction, iterations to 1e-4 for each α and each method at its best α,
    then :func:`checks`. ``info`` describes the model, batch and machine."""
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
                  "| method | best α | " + " | ".join(f"it. to {sci(e)}" for e in THRESHOLDS) + " | "
                  + " | ".join(f"ms to {sci(e)}" for e in THRESHOLDS) + " |",
                  "|---|---:|" + "---:|" * (2 * len(THRESHOLDS))]
        for m in methods:
            b = best_alpha(runs, direction, m)
            if b is None:
                lines.append(f"| {m} | – | " + " | ".join("–" for _ in range(2 * len(THRESHOLDS))) + " |")
                continue
            its = " | ".join(cell(b, e) for e in THRESHOLDS)
            ms = " | ".join(f"{1000 * b.times[e]:.2f}" if b.times[e] is not None else "–" for e in THRESHOLDS)
            lines.append(f"| {m} | {alpha_label(b.alpha)} | {its} | {ms} |")
        lines.append("")
    lines += ["## Checks", ""] + [f"- {c}" for c in checks(runs, methods, alphas, info)] + [""]
    return "\n".join(lines)


def sci(threshold: float) -> str:
    """``1e-4`` for 0.0001 (Python's ``1e-04`` without the zero)."""
    mantissa, exponent = f"{threshold:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def checks(runs: list[Run], methods: list[str], alphas: list[float], info: dict) -> list[str]:
    """The claims the comparison tests, each as a sentence with its verdict."""
    out = []
    fwd = [r for r in runs if r.direction == "forward"]
    if "pr" in methods:
        pr_ok = all(r.status == "converged" for r in fwd if r.method == "pr")
        out.append(f"PR converges (to {sci(min(THRESHOLDS))}) for every α in the grid: {'yes' if pr_ok else 'no'}.")
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
                       f"({pr.iterations[1e-4]}).")
    return out


def plot(runs: list[Run], methods: list[str], alphas: list[float], out: Path) -> list[Path]:
    """``residual_vs_iteration.png``, ``residual_vs_time.png`` (each method at its best α) and
    ``iterations_vs_alpha.png`` in ``out``; returns their paths (needs matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

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
            if kind == "iteration":
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
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
            if div:  # one row per method above the curves, so markers at a shared α stay apart
                row = top * 1.25 ** methods.index(m)
                ax.scatter(div, [row] * len(div), marker="x", s=60, color=line.get_color())
        if any(r.status == "diverged" for m in methods for r in rows[m]):
            ax.scatter([], [], marker="x", color="black", label="diverged (a row per method)")
        grid = sorted({r.alpha for m in methods for r in rows[m]})
        ax.set(xscale="log", yscale="log", title=f"{direction}: iterations to 1e-4", xlabel="α",
               ylabel="iterations")
        if grid:
            ax.set_xticks(grid, [alpha_label(a) for a in grid])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "iterations_vs_alpha.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths + [path]
