"""The robustness lines of the training report: its certificate (:func:`final_certificate`, by
:func:`mondeq.certify`'s rule, the same as the API's and ``mondeq certify``'s) and the looseness
line: the certified constants beside the Lipschitz ratios actually found and the PGD−certified
gap (:mod:`mondeq.robustness.looseness`), on a few test images, in float64."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from ..robustness.certification import (CERTIFY_BOUND, CERTIFY_DTYPE, CERTIFY_MULTIPLIERS, CERTIFY_TOL,
                                        certificate_constants)
from ..robustness.looseness import Looseness, measure_looseness
from ..training import evaluate


def final_certificate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                      epsilons: Iterable[float], *, run_folder: object = "RUN") -> tuple[dict, list[str]]:
    """The training report's certificate: :func:`mondeq.certify` with its defaults (the one rule:
    the strongest affordable bound, float64 solves at ``CERTIFY_TOL``) on the test ``batches``
    (each rank its shard under torch.distributed; counts summed over ranks).

    Returns:
        its summary for ``results.json`` (``certified_tight``: tol, dtype, bound, multipliers,
        mean slack, certified accuracy per ε) and the report's lines (with the command for a
        tighter solve, on ``run_folder``, when the slack is large next to the smallest ε).
    """
    epsilons = [float(e) for e in epsilons]
    ev = evaluate(model, batches, certify_tol=CERTIFY_TOL, epsilons=epsilons, bound=CERTIFY_BOUND,
                  multipliers=CERTIFY_MULTIPLIERS, dtype=CERTIFY_DTYPE)
    _, (bound, multipliers), _ = certificate_constants(getattr(model, "module", model))  # cached
    dtype = str(CERTIFY_DTYPE).removeprefix("torch.")
    summary = {"tol": CERTIFY_TOL, "dtype": dtype, "bound": bound, "multipliers": multipliers,
               "slack": ev.mean_slack, "certified": {str(k): v for k, v in ev.certified.items()}}
    kind = f"{bound} bound" + (f", {multipliers} multipliers" if multipliers else "")
    lines = ["  certified ℓ2 accuracy    " + ", ".join(f"ε={k:g}: {100 * v:.1f}%" for k, v in ev.certified.items())
             + f" (sound; {kind}, {dtype} solves at tol {CERTIFY_TOL:g}, slack {ev.mean_slack:.2g} "
               "pixel: mondeq.certify's and `mondeq certify`'s certificate)"]
    if epsilons and ev.mean_slack > 0.1 * min(epsilons):
        lines.append(f"                           the solver-error slack is large next to ε (a large ‖I − W‖₂): "
                     f"`python experiments/certify.py {run_folder} --tol 1e-9` certifies with a tighter solve")
    return summary, lines

LOOSENESS_IMAGES = 100
"""Test images the training report measures looseness on (PGD and the ratio ascent in float64;
about a minute for the small conv model on a CPU, seconds for FC)."""


def looseness(model: nn.Module, x: Tensor, y: Tensor, epsilons: Iterable[float], *,
              limit: int = LOOSENESS_IMAGES, ascent_steps: int = 5, pgd_steps: int = 10,
              tol: float = 1e-8, seed: int = 0, bound: str = "product") -> Looseness:
    """:func:`~mondeq.robustness.looseness.measure_looseness` on the first ``limit`` examples,
    on a float64 copy of ``model`` (which is left as it was), one restart from ``x``, against
    the constants of ``bound`` (the joint one with scalar multipliers, as training reports it)."""
    x, y = x[:limit], y[:limit]
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the run's generators are left untouched
        return measure_looseness(model, x, y, epsilons=[e for e in epsilons if e > 0],
                                 ascent_steps=ascent_steps, pgd_steps=pgd_steps, restarts=1, tol=tol,
                                 generator=generator, bound=bound, multipliers="scalar")


def looseness_lines(result: Looseness, images: int) -> list[str]:
    """The report's two lines (ratios; PGD−certified gap per ε)."""
    s = result.summary()
    gaps = ", ".join(f"ε={e:g}: {100 * result.pgd_robust[e]:.1f}% PGD vs {100 * result.certified[e]:.1f}% "
                     f"certified" for e in result.certified)
    constant = "Γ_yj (joint)" if result.bound == "joint" else "K_yj"
    return [f"largest Lipschitz ratio found / certified {constant} ({images} images): "
            f"{s['ascent']['max_fraction']:.3f} max, {s['ascent']['median_fraction']:.3f} median "
            f"(ratio ascent); {s['pgd']['max_fraction']:.3f} max (PGD pairs)",
            f"PGD-robust vs certified: {gaps}"]


def looseness_report(model: nn.Module, x: Tensor, y: Tensor, epsilons: Iterable[float], *,
                     limit: int = LOOSENESS_IMAGES, bound: str = "product") -> tuple[dict, list[str]]:
    """:func:`looseness` as the training report uses it: its summary (for ``results.json``) and
    its lines."""
    result = looseness(model, x, y, epsilons, limit=limit, bound=bound)
    return {"images": min(limit, len(x)), **result.summary()}, looseness_lines(result, min(limit, len(x)))
