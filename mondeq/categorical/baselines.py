r"""Baselines on the same masks as the monotone DBM, so that its numbers mean something.

* :class:`MeanFill`: every hidden pixel gets its per-position training mean intensity (ℓ2) and its
  per-position most frequent bin (bin accuracy); no label.
* :class:`MaskedClassifier`: an MLP on the masked image and its mask (label only).
* :class:`MeanFieldRBM`: a restricted Boltzmann machine (visible: pixels with K bins and the label;
  hidden: binary units) inferred by **classic** parallel mean field,
  :math:`h \leftarrow \mathrm{sigmoid}(W^\top v + c)`, :math:`v_{\text{free}} \leftarrow
  \mathrm{softmax}(Wh + b)`, for a fixed number of sweeps from the uniform start, and trained by
  backpropagation through those sweeps with the DBM's loss. Nothing guarantees these sweeps
  converge; :meth:`MeanFieldRBM.forward` reports the last sweep's change.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .model import to_bins


class MeanFill:
    """Per-position training statistics (module docstring)."""

    def __init__(self, images: Tensor, bins: int) -> None:
        self.mean = images.mean(0)
        counts = torch.nn.functional.one_hot(to_bins(images, bins), bins).sum(0)
        self.mode = counts.argmax(-1)

    def predict(self, n: int) -> tuple[Tensor, Tensor]:
        """``(intensity, bins)`` for ``n`` images, each ``(n, H, W)``."""
        return self.mean.expand(n, *self.mean.shape), self.mode.expand(n, *self.mode.shape)


class MaskedClassifier(nn.Module):
    """An MLP ``[x ⊙ mask, mask] → logits`` (two hidden layers)."""

    def __init__(self, pixels: int, classes: int = 10, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * pixels, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, images: Tensor, observed: Tensor) -> Tensor:
        mask = observed.flatten(1).to(images.dtype)
        return self.net(torch.cat([images.flatten(1) * mask, mask], dim=1))


class MeanFieldRBM(nn.Module):
    """An RBM over K-bin pixels and the label with ``hidden`` binary units (module docstring)."""

    def __init__(self, pixels: int, bins: int, hidden: int, classes: int = 10, *, sweeps: int = 10) -> None:
        super().__init__()
        self.pixels, self.bins, self.classes, self.sweeps = pixels, bins, classes, int(sweeps)
        visible = pixels * bins + classes
        self.weight = nn.Parameter(torch.randn(visible, hidden) / visible ** 0.5)
        self.visible_bias = nn.Parameter(torch.zeros(visible))
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))

    def forward(self, bins: Tensor, observed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(pixel marginals (B, H, W, K), label marginals (B, classes), last sweep's max change)``."""
        b = bins.shape[0]
        dtype = self.weight.dtype
        hot = torch.nn.functional.one_hot(bins.flatten(1), self.bins).to(dtype)
        obs = observed.flatten(1).unsqueeze(-1)
        pixels = torch.where(obs, hot, torch.full_like(hot, 1.0 / self.bins))
        label = torch.full((b, self.classes), 1.0 / self.classes, dtype=dtype, device=bins.device)
        change = torch.zeros((), dtype=dtype)
        for _ in range(self.sweeps):
            v = torch.cat([pixels.flatten(1), label], dim=1)
            h = torch.sigmoid(v @ self.weight + self.hidden_bias)
            field = h @ self.weight.T + self.visible_bias
            new_pixels = torch.softmax(field[:, :-self.classes].view(b, -1, self.bins), dim=-1)
            new_pixels = torch.where(obs, hot, new_pixels)
            new_label = torch.softmax(field[:, -self.classes:], dim=-1)
            change = torch.maximum((new_pixels - pixels).abs().amax(), (new_label - label).abs().amax()).detach()
            pixels, label = new_pixels, new_label
        side = int(round(self.pixels ** 0.5))
        return pixels.view(b, side, side, self.bins), label, change
