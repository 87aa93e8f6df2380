"""Checks on what users pass to certificates and attacks, so that a wrong label reads as one."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import LabelError


def check_labels(y: object, batch: int, classes: int | None = None, *, what: str = "labels") -> Tensor:
    """``y`` as it is, after checking it holds one integer class per example.

    Args:
        y: the labels given.
        batch: the number of examples they go with.
        classes: the number of classes (checked when given).
        what: how messages name them.

    Raises:
        LabelError: not an integer tensor, not of shape (batch,), or a class outside
            ``0..classes−1`` (reads the extremes: a host synchronisation on CUDA).
    """
    if not isinstance(y, Tensor):
        raise LabelError(f"{what} must be a tensor of class indices, got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise LabelError(f"{what} must be integer class indices, got dtype {y.dtype}; "
                         "convert with .long() if they hold whole numbers")
    if tuple(y.shape) != (batch,):
        raise LabelError(f"{what} must have shape ({batch},), one per example, got {tuple(y.shape)}")
    if classes is not None and batch:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            raise LabelError(f"{what} must lie in 0..{classes - 1} (the model has {classes} classes), "
                             f"got values from {lo} to {hi}")
    return y
