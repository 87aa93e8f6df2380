"""Pieces users reuse when training monDEQs: one epoch, evaluation, checkpoints."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from .certify import certify
from .lipschitz import lipschitz_bound
from .models import MonDEQClassifier
from .progress import ProgressBar


@dataclass
class EpochStats:
    """Averages over one training epoch."""

    loss: float
    accuracy: float
    forward_iterations: float
    backward_iterations: float
    step_time: float
    steps: int


@dataclass
class Evaluation:
    """Test-set figures for a classifier.

    Attributes:
        accuracy: clean accuracy.
        forward_iterations: mean solver iterations per batch.
        lipschitz: ‖U‖₂/m of the layer.
        radii: per-example sound certified ℓ2 radius, in the scale given by ``input_scale``.
        slack: per-example radius paid for the solver error (same scale).
    """

    accuracy: float
    forward_iterations: float
    lipschitz: float
    radii: Tensor = field(repr=False)
    slack: Tensor = field(default_factory=lambda: torch.zeros(0), repr=False)


def train_epoch(model: MonDEQClassifier, optimizer: torch.optim.Optimizer,
                data: Iterable[tuple[Tensor, Tensor]], *, steps: int,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                desc: str = "train",
                loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                on_batch: Callable[[MonDEQClassifier, Tensor, Tensor], None] | None = None) -> EpochStats:
    """One pass of training (cross entropy by default) with a progress bar.

    Args:
        model: the classifier.
        optimizer: its optimizer.
        data: (x, y) minibatches.
        steps: number of minibatches (for the progress bar).
        scheduler: stepped once per minibatch when given.
        desc: progress-bar label.
        loss_fn: ``loss_fn(logits, y) -> scalar`` replacing cross entropy, e.g.
            :class:`mondeq.losses.LipschitzMarginLoss` for certified training.
        on_batch: ``on_batch(model, x, y)`` called before each step, outside the step timing,
            e.g. :class:`mondeq.tuning.AlphaTuner` to re-tune α every N steps.
    """
    model.train()
    bar = ProgressBar(steps, desc)
    totals = dict(loss=0.0, correct=0, seen=0, fw=0, bw=0, time=0.0, steps=0)
    for x, y in data:
        if on_batch is not None:
            on_batch(model, x, y)
        start = time.perf_counter()
        logits, stats = model.forward_with_stats(x)
        loss = nn.functional.cross_entropy(logits, y) if loss_fn is None else loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        totals["time"] += time.perf_counter() - start
        totals["steps"] += 1
        totals["loss"] += float(loss.detach()) * len(y)
        totals["correct"] += int((logits.argmax(1) == y).sum())
        totals["seen"] += len(y)
        totals["fw"] += stats.forward.iterations
        totals["bw"] += stats.backward.iterations if stats.backward is not None else 0
        bar.update(loss=totals["loss"] / totals["seen"], fw=stats.forward.iterations,
                   bw=stats.backward.iterations if stats.backward is not None else 0)
    bar.close()
    n = max(totals["steps"], 1)
    return EpochStats(loss=totals["loss"] / max(totals["seen"], 1),
                      accuracy=totals["correct"] / max(totals["seen"], 1),
                      forward_iterations=totals["fw"] / n, backward_iterations=totals["bw"] / n,
                      step_time=totals["time"] / n, steps=totals["steps"])


@torch.no_grad()
def evaluate(model: MonDEQClassifier, data: Iterable[tuple[Tensor, Tensor]], *,
             input_scale: float = 1.0, certify_tol: float | None = None) -> Evaluation:
    """Clean accuracy, mean iterations, the Lipschitz bound and sound certified radii.

    Radii come from :func:`mondeq.certify.certify`: they account for the solver's error, so they
    hold for the exact network at any tolerance.

    Args:
        model: the classifier.
        data: (x, y) minibatches.
        input_scale: factor from the model's input scale to the reporting scale (the
            normalisation std for radii in pixel scale).
        certify_tol: re-solve at this tolerance before certifying (``None``: the layer's own).
            Accuracy and iterations are always those of the layer's own settings.
    """
    correct, seen, iterations, batches_seen, radii, slack = 0, 0, 0.0, 0, [], []
    lipschitz = lipschitz_bound(model.layer)
    for x, y in data:
        cert = certify(model, x, y, input_scale=input_scale, batch_size=None)
        correct += int(cert.correct.sum())
        seen += len(y)
        iterations += cert.forward_iterations
        batches_seen += 1
        if certify_tol is not None:
            cert = certify(model, x, y, input_scale=input_scale, tol=certify_tol, batch_size=None)
        radii.append(cert.radius)
        slack.append(cert.slack)
    return Evaluation(accuracy=correct / max(seen, 1), forward_iterations=iterations / max(batches_seen, 1),
                      lipschitz=lipschitz, radii=torch.cat(radii) if radii else torch.zeros(0),
                      slack=torch.cat(slack) if slack else torch.zeros(0))


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int, history: list[dict], config: dict,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """Write everything needed to resume after ``epoch`` (atomically: temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
             "history": history, "config": config,
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "rng": torch.get_rng_state()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, *, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> dict:
    """Restore model (and optimizer, scheduler, RNG) from :func:`save_checkpoint`; returns the dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train without --resume first")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state
