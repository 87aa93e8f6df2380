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


class NormalizedLinear(nn.Linear):
    r"""A linear head whose rows have unit ℓ2 norm: last-layer normalisation (Singla, Singla &
    Feizi, "Improved deterministic ℓ2 robustness on CIFAR-10 and CIFAR-100", ICLR 2022).

    .. math:: h_j = \frac{\langle w_j, z\rangle}{\|w_j\|_2} + c_j ,\qquad
              \hat H_{j\cdot} = w_j / \|w_j\|_2 .

    The free parameters are the raw rows :math:`w_j` (``weight``, so the state dict keeps the
    keys of an ``nn.Linear``) and the bias; the map applied, and the matrix the certificates read
    (:func:`~mondeq.robustness.lipschitz.head_matrix`, which differentiates the head as an affine
    map), is :math:`\hat H`. So the margin constants :math:`\|\hat H_y - \hat H_j\|_2 \le 2` are
    those of exactly the logits the model outputs. Declares ``affine = True`` (it is linear in
    its input for any fixed parameters).
    """

    affine = True

    def normalized_weight(self) -> Tensor:
        r""":math:`\hat H`: the rows of ``weight`` divided by their norms, shape (out, in)."""
        return self.weight / self.weight.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        return nnf.linear(x, self.normalized_weight(), self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "NormalizedLinear":
        """The normalised head with ``linear``'s raw weights and bias (same shapes, dtype, device)."""
        with torch.random.fork_rng(devices=[]):  # the throwaway initialisation draws nothing
            head = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                       device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            head.weight.copy_(linear.weight)
            if linear.bias is not None:
                head.bias.copy_(linear.bias)
        return head
