"""Recording a trained run as a pretrained model, and re-checking a recorded one.

:func:`record` writes ``NAME.pt`` (the run's checkpoint reduced to what evaluation needs, float32
weights) and ``NAME.json`` (its manifest, :class:`~mondeq.pretrained.registry.PretrainedEntry`)
after measuring, on the model exactly as users will load it: certified accuracy on the whole test
split with explicit settings, PGD robust accuracy with the count of counterexamples inside
certified radii (there must be none), the largest Lipschitz ratio found as a fraction of the
certified constant, and the per-image verdicts on the first test images.

:func:`check` re-measures a registered model's whole-test-set figures and compares them with the
recorded ones (``experiments/check_pretrained.py``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .registry import WEIGHTS, PretrainedEntry, entry, sha256, weights_path
from .verdicts import record_verdicts

__all__ = ["DEFAULT_SETTINGS", "check", "export_checkpoint", "measure", "record"]

DEFAULT_SETTINGS = {"bound": "auto", "multipliers": "auto", "tol": 1e-6, "max_iter": 2000,
                    "dtype": "float64", "batch_size": 1000}
"""The certificate the figures are recorded with unless told otherwise: :func:`mondeq.certify`'s
own rule (the joint bound; diagonal multipliers where that search is cheap, as on an 87-unit
layer, one scalar multiplier where it is not, as on a 256-unit or conv layer), re-solved to 1e-6,
in float64, 1,000 images a solve. The manifest stores the bound and multipliers that rule chose,
so the recorded figures are what ``mondeq.certify(mondeq.pretrained(name), x, y)`` gives."""

_MACHINE_KEYS = ("out", "data_root", "device")
"""Config keys that describe the machine a run was trained on, not the model."""


def export_checkpoint(run: str | Path, path: Path) -> dict:
    """Writes the evaluation part of ``run``'s checkpoint to ``path``: float32 weights (the input
    normalisation stays float64), config without machine paths, epoch, history, tuned α, and an
    empty optimizer state. Returns the checkpoint's config."""
    from ..training.checkpoint import read_checkpoint

    state = read_checkpoint(run, map_location="cpu")
    weights = {k: (v.float() if v.is_floating_point() and not k.startswith("normalization.") else v)
               for k, v in state["model"].items()}
    config = {k: v for k, v in state["config"].items() if k not in _MACHINE_KEYS}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": weights, "config": config, "epoch": state["epoch"],
                "history": state["history"], "alpha": state.get("alpha"), "optimizer": {}}, path)
    return config


def measure(model, x: torch.Tensor, y: torch.Tensor, settings: Mapping[str, Any], epsilons: list[float], *,
            attack_images: int = 1000, steps: int = 50, restarts: int = 2, looseness_images: int = 100,
            seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The manifest's ``figures`` for ``model`` (already in ``settings["dtype"]``) on ``(x, y)``."""
    from ..layer import solver_settings
    from ..robustness.attacks import pgd
    from ..robustness.certification import certify
    from ..robustness.looseness import measure_looseness

    kwargs = {k: settings[k] for k in ("bound", "multipliers", "tol", "max_iter")}
    start = time.perf_counter()
    cert = certify(model, x, y, epsilons=epsilons, batch_size=settings["batch_size"], dtype=None, **kwargs)
    seconds = time.perf_counter() - start
    figures: dict[str, Any] = {
        "test_images": len(x), "clean": float(cert.correct.double().mean()),
        "certified": {f"{e:g}": cert.certified[e] for e in epsilons}, "certify_seconds": seconds}
    log(f"  certified on {len(x)} images in {seconds:.0f} s: clean {100 * figures['clean']:.2f} %, "
        + ", ".join(f"ε={e}: {100 * v:.2f} %" for e, v in figures["certified"].items()))
    n = min(attack_images, len(x))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    robust, counterexamples, checked = cert.correct[:n].clone(), 0, 0
    pgd_robust = {}
    for eps in epsilons if n else ():
        idx = robust.nonzero().flatten()
        for s in range(0, len(idx), settings["batch_size"]):
            chunk = idx[s:s + settings["batch_size"]]
            adv = pgd(model, x[chunk], y[chunk], eps, norm="l2", steps=steps, restarts=restarts,
                      bounds=(0.0, 1.0), generator=generator).x_adv
            with torch.no_grad(), solver_settings(model.layer, tol=settings["tol"],
                                                  max_iter=settings["max_iter"]):
                broken = model(adv).argmax(1) != y[chunk]
            robust[chunk[broken]] = False
            inside = cert.radius[chunk] > eps
            counterexamples += int((broken & inside).sum())
            checked += int(inside.sum())
        pgd_robust[f"{eps:g}"] = float(robust.double().mean())
    figures["pgd"] = {"images": n, "steps": steps, "restarts": restarts, "robust": pgd_robust,
                      "counterexamples": counterexamples, "checked": checked}
    log(f"  PGD on {n} images ({steps} steps × {restarts}): {counterexamples} counterexamples in "
        f"{checked} certified (image, ε) pairs; robust " + ", ".join(f"ε={e}: {100 * v:.1f} %"
                                                                    for e, v in pgd_robust.items()))
    if looseness_images:
        m = min(looseness_images, len(x))
        loose = measure_looseness(model, x[:m], y[:m], epsilons=epsilons, ascent_steps=20, pgd_steps=10,
                                  tol=min(settings["tol"], 1e-8), dtype=None, generator=generator,
                                  bound=cert.bound, multipliers=cert.multipliers or "scalar").summary()
        figures["looseness"] = {"images": m, "max_fraction": max(loose["ascent"]["max_fraction"],
                                                                 loose["pgd"]["max_fraction"])}
        log(f"  largest Lipschitz ratio found: {figures['looseness']['max_fraction']:.3f} of the "
            f"certified constant ({m} images)")
    return figures


def _test_set(dataset: str, data_root, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import load_dataset

    x, y = load_dataset(dataset, data_root, train=False)
    return x.to(device=device, dtype=dtype), y.to(device)


def record(run: str | Path, name: str, *, description: str, command: str, training: Mapping[str, Any],
           epsilons: list[float], settings: Mapping[str, Any] | None = None, verdict_images: int = 500,
           attack_images: int = 1000, looseness_images: int = 100, data_root=None,
           folder: Path = WEIGHTS, device: str = "cpu",
           log: Callable[[str], None] = print) -> PretrainedEntry:
    """Records the run folder ``run`` as the pretrained model ``name`` in ``folder`` (weights and
    manifest; see the module docstring) and returns its entry."""
    from ..models.run import load_run
    from ..robustness.certification import certificate_constants

    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    folder = Path(folder)
    weights = folder / f"{name}.pt"
    config = export_checkpoint(run, weights)
    dtype = getattr(torch, settings["dtype"])
    model = load_run(weights, map_location=device).to(dtype)  # exactly what users load
    x, y = _test_set(config.get("dataset") or "mnist", data_root, dtype, device)
    log(f"{name}: {description}")
    figures = measure(model, x, y, settings, epsilons, attack_images=attack_images,
                      looseness_images=looseness_images, log=log)
    n = min(verdict_images, len(x))
    verdicts = record_verdicts(model, x[:n], y[:n], settings, epsilons)
    _, (bound, multipliers), _ = certificate_constants(model, settings["bound"], settings["multipliers"])  # cached
    item = PretrainedEntry(name=name, description=description, config=config, command=command,
                           training=dict(training), weights=weights.name, sha256=sha256(weights),
                           certify={**settings, "bound": bound, "multipliers": multipliers},  # what the rule chose
                           figures=figures, verdicts=verdicts)
    (folder / f"{name}.json").write_text(json.dumps(item.to_json(), indent=1) + "\n")
    return item


def check(name: str, *, data_root=None, device: str = "cpu", attack_images: int = 0,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Re-measures the registered model ``name`` on its whole test split with its recorded
    settings; returns ``{"recorded", "measured", "same", "seconds"}`` (``same``: clean and every
    certified accuracy equal to the recorded ones)."""
    from ..models.run import load_run

    item = entry(name)
    dtype = getattr(torch, item.certify["dtype"])
    model = load_run(weights_path(name), map_location=device).to(dtype)
    x, y = _test_set(item.dataset, data_root, dtype, device)
    epsilons = [float(e) for e in item.figures["certified"]]
    start = time.perf_counter()
    measured = measure(model, x, y, item.certify, epsilons, attack_images=attack_images,
                       looseness_images=0, log=log)
    keys = ("clean", "certified")
    same = all(measured[k] == item.figures[k] for k in keys)
    return {"recorded": {k: item.figures[k] for k in keys}, "measured": {k: measured[k] for k in keys},
            "same": same, "seconds": time.perf_counter() - start,
            "counterexamples": measured["pgd"]["counterexamples"]}
