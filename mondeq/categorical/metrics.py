"""Completion and classification scores on the hidden pixels, shared by the DBM and its baselines."""
from __future__ import annotations

import torch
from torch import Tensor


class Scores:
    """Running sums over a test set.

    ``bin_accuracy``: fraction of hidden pixels whose predicted bin is the true bin floor(x·K);
    ``l2``: mean over images of ‖x̂ − x‖₂ over the image's hidden pixels (x̂ the predicted
    intensity, x the true one in [0, 1]); ``rmse``: root mean square of x̂ − x per hidden pixel;
    ``label_accuracy``: fraction of images whose predicted label is right.
    """

    def __init__(self) -> None:
        self.images = self.hidden = self.correct_bins = self.correct_labels = 0
        self.l2_sum = self.sq_sum = 0.0

    def add(self, *, images: Tensor, observed: Tensor, bins: Tensor, predicted_bins: Tensor,
            intensity: Tensor, labels: Tensor | None = None, predicted_labels: Tensor | None = None) -> None:
        hidden = ~observed
        self.images += images.shape[0]
        self.hidden += int(hidden.sum())
        self.correct_bins += int(((predicted_bins == bins) & hidden).sum())
        err = (intensity - images) * hidden
        self.sq_sum += float((err ** 2).sum())
        self.l2_sum += float(err.flatten(1).norm(dim=1).sum())
        if labels is not None and predicted_labels is not None:
            self.correct_labels += int((predicted_labels == labels).sum())

    def result(self) -> dict[str, float]:
        hidden = max(self.hidden, 1)
        return {"label_accuracy": self.correct_labels / max(self.images, 1),
                "bin_accuracy": self.correct_bins / hidden,
                "l2": self.l2_sum / max(self.images, 1),
                "rmse": (self.sq_sum / hidden) ** 0.5}


def fixed_masks(n: int, shape: tuple[int, int], fraction: float, *, seed: int) -> Tensor:
    """``(n, H, W)`` bool: each pixel observed with probability ``fraction``, a pure function of
    the arguments (the same masks for the model and every baseline)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(n, *shape, generator=gen, dtype=torch.float32) < fraction


def batch_masks(batch: int, shape: tuple[int, int], fraction: float, *, seed: int, epoch: int,
                step: int) -> Tensor:
    """Training masks of one step: a pure function of (seed, epoch, step), so a resumed run draws
    the same ones."""
    return fixed_masks(batch, shape, fraction, seed=(int(seed) * 1_000_003 + epoch * 100_003 + step) % 2 ** 62)
