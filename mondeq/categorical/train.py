"""Training and evaluating a completion DBM: one epoch, one test pass, the inference-cost table.

Each training step draws a fresh mask (every pixel observed with probability ``fraction``; the
label never), clamps the observed pixels, solves mean field, and descends the implicit gradient of
cross-entropy on the hidden pixels plus ``label_weight`` × cross-entropy on the label
(:meth:`~mondeq.categorical.model.CompletionDBM.loss`). The sample order is
:func:`mondeq.training.data_order.epoch_order` and the masks a function of (seed, epoch, step), so
a run resumed at an epoch boundary repeats the uninterrupted run exactly.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import Tensor

from ..training.data_order import epoch_order
from ..training.progress import ProgressBar
from .metrics import Scores, batch_masks
from .model import CompletionDBM, to_bins


def train_epoch(model: CompletionDBM, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor, *,
                epoch: int, seed: int, batch_size: int, fraction: float, label_weight: float = 1.0,
                scheduler=None, progress: bool = True) -> dict[str, float]:
    """One pass over ``images`` ``(N, H, W)`` in [0, 1]; returns mean loss, training label
    accuracy, forward and backward iterations per step, the number of steps skipped because the
    loss or a gradient was not finite (the weights are left as they were), and the epoch's seconds."""
    device = next(model.parameters()).device
    model.train()
    order = epoch_order(images.shape[0], seed=seed, epoch=epoch)
    steps = (len(order) + batch_size - 1) // batch_size
    bar = ProgressBar(steps, f"epoch {epoch + 1}") if progress else None
    start = time.perf_counter()
    totals = {"loss": 0.0, "correct": 0, "forward_iterations": 0, "backward_iterations": 0, "seen": 0,
              "skipped": 0}
    for step in range(steps):
        index = order[step * batch_size:(step + 1) * batch_size]
        x = images[index].to(device, model.dtype, non_blocking=True)
        y = labels[index].to(device, non_blocking=True)
        observed = batch_masks(len(index), model.image_shape, fraction, seed=seed, epoch=epoch, step=step).to(device)
        bins = to_bins(x, model.bins)
        out = model(bins, observed)
        loss = model.loss(out, bins, observed, y, label_weight=label_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if _finite(loss, model):
            optimizer.step()
        else:  # a diverged solve (e.g. FB outside its step range) must not poison the weights
            totals["skipped"] += 1
        if scheduler is not None:
            scheduler.step()
        totals["loss"] += float(loss.detach().nan_to_num(nan=0.0, posinf=0.0)) * len(index)
        totals["correct"] += int((out.label.argmax(1) == y).sum())
        totals["forward_iterations"] += out.stats.forward.iterations
        totals["backward_iterations"] += out.stats.backward.iterations if out.stats.backward else 0
        totals["seen"] += len(index)
        if bar is not None:
            bar.update(loss=totals["loss"] / totals["seen"], acc=totals["correct"] / totals["seen"],
                       it=out.stats.forward.iterations)
    if bar is not None:
        bar.close()
    return {"loss": totals["loss"] / totals["seen"], "train_label_accuracy": totals["correct"] / totals["seen"],
            "forward_iterations": totals["forward_iterations"] / steps,
            "backward_iterations": totals["backward_iterations"] / steps,
            "skipped_steps": totals["skipped"], "seconds": time.perf_counter() - start}


def _finite(loss: Tensor, model: torch.nn.Module) -> bool:
    """Whether the loss and every parameter gradient are finite (else the step is skipped)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)


@torch.no_grad()
def evaluate(model: CompletionDBM, images: Tensor, labels: Tensor, masks: Tensor, *,
             batch_size: int = 500, progress: bool = False) -> dict[str, float]:
    """Label accuracy and imputation scores (:class:`~mondeq.categorical.metrics.Scores`) on a
    test set with fixed ``masks``, plus mean iterations and the fraction of converged solves."""
    device = next(model.parameters()).device
    model.eval()
    scores, iterations, converged, batches = Scores(), 0, 0, 0
    bar = ProgressBar((len(images) + batch_size - 1) // batch_size, "test") if progress else None
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device, model.dtype)
        observed = masks[start:start + batch_size].to(device)
        bins = to_bins(x, model.bins)
        out = model(bins, observed)
        scores.add(images=x, observed=observed, bins=bins, predicted_bins=out.pixels.argmax(-1),
                   intensity=out.expected_intensity(), labels=labels[start:start + batch_size].to(device),
                   predicted_labels=out.label.argmax(1))
        iterations += out.stats.forward.iterations
        converged += int(out.stats.forward.converged)
        batches += 1
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return {**scores.result(), "iterations": iterations / batches, "converged": converged / batches}


@torch.no_grad()
def inference_cost(model: CompletionDBM, images: Tensor, masks: Tensor, *,
                   methods: dict[str, float], tols: tuple[float, ...] = (1e-2, 1e-4),
                   max_iter: int = 2000, repeats: int = 1,
                   clock: Callable[[], float] = time.perf_counter) -> list[dict[str, float | str]]:
    """Iterations and milliseconds per batch of each method (name → α) at each tolerance, on one
    batch; every row says whether the solve met its tolerance."""
    device = next(model.parameters()).device
    x = images.to(device, model.dtype)
    observed = masks.to(device)
    bins = to_bins(x, model.bins)
    clamp = model.clamp(bins, observed)
    rows = []
    saved = model.max_iter
    model.max_iter = max_iter
    try:
        for tol in tols:
            for name, alpha in methods.items():
                best, result = float("inf"), None
                for _ in range(repeats):
                    begin = clock()
                    _, stats = model.solve(clamp, len(x), solver=name, alpha=alpha, tol=tol)
                    best = min(best, clock() - begin)
                    result = stats.forward
                rows.append({"method": name, "alpha": alpha, "tol": tol, "iterations": result.iterations,
                             "ms_per_batch": 1e3 * best, "converged": bool(result.converged),
                             "batch": len(x)})
    finally:
        model.max_iter = saved
    return rows
