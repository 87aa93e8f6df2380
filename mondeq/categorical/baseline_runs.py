"""Training and scoring the baselines (:mod:`mondeq.categorical.baselines`) on the DBM's masks.

Training masks come from :func:`~mondeq.categorical.metrics.batch_masks` and test masks are the
ones the DBM is scored on, so every row of the comparison sees the same observed pixels.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from ..training.data_order import epoch_order
from ..training.optimizer import adam
from ..training.progress import ProgressBar
from .baselines import MaskedClassifier, MeanFieldRBM, MeanFill
from .metrics import Scores, batch_masks
from .model import to_bins


def _batches(n: int, batch_size: int, *, seed: int, epoch: int):
    order = epoch_order(n, seed=seed, epoch=epoch)
    for step in range(0, n, batch_size):
        yield step // batch_size, order[step:step + batch_size]


def mean_fill_scores(train: Tensor, test: Tensor, masks: Tensor, *, bins: int) -> dict[str, float]:
    """Per-position mean fill on the test set (no label: its label accuracy is not reported)."""
    fill = MeanFill(train, bins)
    intensity, predicted = fill.predict(len(test))
    scores = Scores()
    scores.add(images=test, observed=masks, bins=to_bins(test, bins), predicted_bins=predicted, intensity=intensity)
    result = scores.result()
    result.pop("label_accuracy")
    return result


def _fit(model: torch.nn.Module, loss_of, images: Tensor, labels: Tensor, *, name: str, epochs: int,
         fraction: float, seed: int, batch_size: int, lr: float, device: torch.device | str,
         progress: bool) -> float:
    """Adam on ``loss_of(model, x, observed, y)`` over the epochs (the DBM's masks per step);
    returns the seconds spent."""
    shape = tuple(images.shape[1:])
    optimizer = adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    for epoch in range(epochs):
        bar = ProgressBar((len(images) + batch_size - 1) // batch_size, f"{name} {epoch + 1}") if progress else None
        for step, index in _batches(len(images), batch_size, seed=seed, epoch=epoch):
            observed = batch_masks(len(index), shape, fraction, seed=seed, epoch=epoch, step=step).to(device)
            loss = loss_of(model, images[index].to(device), observed, labels[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if bar is not None:
                bar.update(loss=float(loss.detach()))
        if bar is not None:
            bar.close()
    return time.perf_counter() - start


def train_classifier(images: Tensor, labels: Tensor, *, epochs: int, fraction: float, seed: int,
                     batch_size: int = 128, lr: float = 1e-3, device: torch.device | str = "cpu",
                     progress: bool = True) -> tuple[MaskedClassifier, float]:
    """The masked-image MLP trained with cross-entropy; returns it and the seconds spent."""
    torch.manual_seed(seed)
    model = MaskedClassifier(images.shape[1] * images.shape[2]).to(device, torch.float32)

    def loss_of(model, x, observed, y):
        return torch.nn.functional.cross_entropy(model(x, observed), y)

    seconds = _fit(model, loss_of, images, labels, name="classifier", epochs=epochs, fraction=fraction,
                   seed=seed, batch_size=batch_size, lr=lr, device=device, progress=progress)
    return model, seconds


@torch.no_grad()
def classifier_accuracy(model: MaskedClassifier, images: Tensor, labels: Tensor, masks: Tensor) -> float:
    device = next(model.parameters()).device
    logits = model(images.to(device), masks.to(device))
    return float((logits.argmax(1).cpu() == labels).float().mean())


def rbm_loss(model: MeanFieldRBM, bins: Tensor, observed: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    pixels, label, change = model(bins, observed)
    tiny = torch.finfo(pixels.dtype).tiny
    picked = pixels.gather(-1, bins.unsqueeze(-1)).squeeze(-1).clamp_min(tiny).log()
    hidden = ~observed
    loss = -(picked * hidden).sum() / hidden.sum().clamp_min(1)
    loss = loss - label.gather(1, labels.view(-1, 1)).clamp_min(tiny).log().mean()
    return loss, pixels, label, change


def train_rbm(images: Tensor, labels: Tensor, *, bins: int, hidden: int, epochs: int, fraction: float,
              seed: int, sweeps: int = 10, batch_size: int = 128, lr: float = 1e-3,
              device: torch.device | str = "cpu", progress: bool = True) -> tuple[MeanFieldRBM, float]:
    """The RBM trained through its unrolled classic mean-field sweeps; returns it and the seconds."""
    torch.manual_seed(seed)
    model = MeanFieldRBM(images.shape[1] * images.shape[2], bins, hidden, sweeps=sweeps).to(device, torch.float32)

    def loss_of(model, x, observed, y):
        return rbm_loss(model, to_bins(x, bins), observed, y)[0]

    seconds = _fit(model, loss_of, images, labels, name="rbm", epochs=epochs, fraction=fraction,
                   seed=seed, batch_size=batch_size, lr=lr, device=device, progress=progress)
    return model, seconds


@torch.no_grad()
def rbm_scores(model: MeanFieldRBM, images: Tensor, labels: Tensor, masks: Tensor, *,
               bin_values: Tensor | None = None, batch_size: int = 500) -> dict[str, float]:
    """The RBM's scores (expected intensities with ``bin_values``, default the bin centres), and
    the largest change of its last mean-field sweep over the test set (far from 0: classic mean
    field had not settled)."""
    device = next(model.parameters()).device
    scores, change = Scores(), 0.0
    centres = (torch.arange(model.bins, dtype=images.dtype) + 0.5) / model.bins if bin_values is None else \
        bin_values.to(images.dtype).cpu()
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        observed = masks[start:start + batch_size].to(device)
        bins = to_bins(x, model.bins)
        pixels, label, last = model(bins, observed)
        scores.add(images=x, observed=observed, bins=bins, predicted_bins=pixels.argmax(-1),
                   intensity=pixels @ centres.to(device), labels=labels[start:start + batch_size].to(device),
                   predicted_labels=label.argmax(1))
        change = max(change, float(last))
    return {**scores.result(), "last_sweep_change": change}
