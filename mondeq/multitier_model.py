"""The multi-tier convolutional monDEQ classifier and its pooling readouts."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from splitting import Prox, State
from splitting.errors import InvalidSettingError

from .layer import MonDEQ
from .models import MonDEQClassifier
from .multitier import MonotoneMultiConv


class TierPool(nn.Module):
    """Average-pool tiers of a multi-tier state to ``output_size × output_size`` and concatenate.

    A parameter-free linear map of the state (adaptive average pooling is a fixed averaging
    matrix), so certification and Lipschitz margins apply unchanged.

    Args:
        tiers: ``"last"`` (the paper's readout) or ``"all"``.
        output_size: pooled grid side per tier (1: global average, one feature per channel).
    """

    affine = True

    def __init__(self, tiers: str = "last", *, output_size: int = 1) -> None:
        super().__init__()
        if tiers not in ("last", "all"):
            raise InvalidSettingError(f"tiers must be 'last' or 'all', got {tiers!r}")
        if int(output_size) != output_size or output_size < 1:
            raise InvalidSettingError(f"output_size must be a positive integer, got {output_size}")
        self.tiers = tiers
        self.output_size = int(output_size)

    def forward(self, z: State) -> Tensor:
        chosen = z[-1:] if self.tiers == "last" else z
        parts = [nnf.adaptive_avg_pool2d(t, self.output_size).flatten(1) for t in chosen]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def features(self, channels: Sequence[int]) -> int:
        """Output width for tiers with ``channels``."""
        chosen = channels[-1:] if self.tiers == "last" else channels
        return sum(chosen) * self.output_size ** 2

    def extra_repr(self) -> str:
        return f"tiers={self.tiers!r}, output_size={self.output_size}"


def multitier_conv_mondeq(in_channels: int = 1, image_size: int | tuple[int, int] = 28,
                          channels: Sequence[int] = (16, 32, 32), num_classes: int = 10, *,
                          kernel_size: int = 3, padding: int = 0, m: float = 1.0,
                          nonlinearity: Prox | None = None, solver: str | Callable = "pr",
                          alpha: float = 1.0, tol: float = 1e-2, max_iter: int = 50,
                          backward_tol: float | None = None, backward_max_iter: int | None = None,
                          pool_all_tiers: bool = False, pool_size: int = 4) -> MonDEQClassifier:
    """The paper's multi-tier convolutional monDEQ classifier (MNIST: channels (16, 32, 32)).

    Tiers have grids ``(image_size + 2·padding) / 2^i``: 28 → 28, 14, 7 on MNIST and 32 → 32, 16,
    8 on CIFAR-10/SVHN, both unpadded (the paper pads MNIST to 30, which cannot halve twice on
    an exact circular grid). The readout average-pools the last tier (every tier with
    ``pool_all_tiers``) to ``pool_size × pool_size`` (4 × 4, as the paper's code: 8 × 8 pooled by
    2) and a linear head maps it to logits: 60,650 parameters on MNIST with the defaults.

    Args:
        in_channels, image_size: input shape (one int for square images).
        channels: channels of each tier.
        num_classes: logits.
        kernel_size, padding, m: see :class:`~mondeq.multitier.MonotoneMultiConv`.
        nonlinearity, solver, alpha, tol, max_iter, backward_tol, backward_max_iter: see
            :class:`~mondeq.layer.MonDEQ`.
        pool_all_tiers: pool and concatenate every tier instead of the last.
        pool_size: pooled grid side per tier (adaptive average pooling; 7 × 7 → 4 × 4 uses
            overlapping windows, still a fixed linear map).
    """
    linear = MonotoneMultiConv(in_channels, channels, image_size, kernel_size=kernel_size,
                               padding=padding, m=m)
    layer = MonDEQ(linear, nonlinearity, solver=solver, alpha=alpha, tol=tol, max_iter=max_iter,
                   backward_tol=backward_tol, backward_max_iter=backward_max_iter)
    readout = TierPool("all" if pool_all_tiers else "last", output_size=pool_size)
    if min(linear.sizes[-1]) < readout.output_size:  # the last tier is the smallest
        raise InvalidSettingError(f"pool_size {pool_size} exceeds the last tier's grid {linear.sizes[-1]}")
    head = nn.Linear(readout.features(linear.channels), num_classes)
    return MonDEQClassifier(layer, head, readout=readout)
