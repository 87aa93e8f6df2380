"""The looseness line of the programs' reports: the certified constants beside the Lipschitz
ratios actually found and the PGD−certified gap (:mod:`mondeq.robustness.looseness`), on a few
test images, in float64."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from ..robustness.looseness import Looseness, measure_looseness

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
