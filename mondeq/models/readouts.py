"""Readouts: fixed, parameter-free linear maps from an equilibrium state to the head's input.

Each declares ``affine = True``, which certification (:func:`mondeq.certify`) and the Lipschitz
margins require: logits then stay an affine function :math:`Hz + c` of the state.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from splitting import State

from ..errors import InvalidSettingError


class FlattenState(nn.Module):
    """Concatenate the flattened tiers of a state into one (batch, n) matrix."""

    affine = True

    def forward(self, z: State) -> Tensor:
        return torch.cat([t.reshape(t.shape[0], -1) for t in z], dim=1)


class AvgPoolState(nn.Module):
    """Average-pool a single-tier image state ``(B, C, H, W)`` and flatten it (linear, no parameters).

    Args:
        pool: square pooling window and stride; trailing rows/columns that do not fill a window
            are dropped (``avg_pool2d`` semantics).
    """

    affine = True

    def __init__(self, pool: int) -> None:
        super().__init__()
        self.pool = int(pool)

    def forward(self, z: State) -> Tensor:
        (x,) = z
        return nn.functional.avg_pool2d(x, self.pool).flatten(1)

    def extra_repr(self) -> str:
        return f"pool={self.pool}"


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
