r"""Certified ℓ2 robustness from the Lipschitz bound.

.. math:: r(x) = \min_{j \ne y} \frac{h_y - h_j}{\|H_y - H_j\|_2\,\|U\|_2/m}

is the radius within which no perturbation can change the prediction (for the exact z*).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


def certified_radius(logits: Tensor, labels: Tensor, margin_lip: Tensor, *,
                     input_scale: float = 1.0) -> Tensor:
    """Per-example certified ℓ2 radius; 0 for misclassified examples.

    Args:
        logits: shape (batch, K).
        labels: true classes, shape (batch,).
        margin_lip: (K, K) Lipschitz constants of the margins h_i − h_j with respect to the
            model's input, e.g. :func:`mondeq.lipschitz.margin_lipschitz`.
        input_scale: multiply radii by this to express them in another input scale. For a model
            fed ``(x − mean)/std``, pass ``std`` to get radii in the raw (pixel) scale.

    Returns:
        radii, shape (batch,).
    """
    true = logits.gather(1, labels[:, None])
    ratio = (true - logits) / margin_lip[labels]
    ratio.scatter_(1, labels[:, None], float("inf"))
    return ratio.min(dim=1).values.clamp(min=0) * input_scale


def certified_accuracy(radius: Tensor, epsilons: Iterable[float]) -> dict[float, float]:
    """Fraction of examples whose certified radius strictly exceeds each ε."""
    return {float(eps): float((radius > eps).to(torch.float64).mean()) for eps in epsilons}
