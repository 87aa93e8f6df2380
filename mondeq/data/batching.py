"""Minibatches from in-memory tensors (plain indexing; no DataLoader)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..errors import InvalidSettingError

__all__ = ["batches", "num_batches"]


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Returns how many batches :func:`batches` yields for ``n`` samples.

    Args:
        n: Number of samples.
        batch_size: Samples per batch.
        drop_last: Whether a final, smaller batch is dropped.

    Raises:
        ValueError: If ``n`` is negative or ``batch_size`` is not positive.
    """
    if n < 0:
        raise InvalidSettingError(f"n must be non-negative, got {n}")
    if batch_size < 1:
        raise InvalidSettingError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields ``(x, y)`` minibatches from in-memory tensors.

    Plain tensor indexing; much cheaper than a ``DataLoader`` for data that
    already sits in memory.  Every sample appears exactly once per pass
    (unless ``drop_last`` drops the tail).  The number of batches is
    ``num_batches(len(images), batch_size, drop_last=drop_last)``.

    Args:
        images: Inputs, first dimension indexing samples.
        labels: Targets with the same first dimension as ``images``.
        batch_size: Samples per batch (the last batch may be smaller).
        shuffle: Draw a fresh random permutation for this pass.
        generator: Random generator for the permutation (for reproducibility).
        drop_last: Drop a final batch smaller than ``batch_size``.

    Yields:
        ``(x, y)`` slices (views when not shuffled, copies when shuffled).

    Raises:
        ValueError: If the lengths differ or ``batch_size`` is not positive.
    """
    n = images.shape[0]
    if labels.shape[0] != n:
        raise InvalidSettingError(
            f"images and labels differ in length: {n} vs {labels.shape[0]}"
        )
    count = num_batches(n, batch_size, drop_last=drop_last)
    if shuffle:
        perm_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=perm_device)
        image_order = order.to(images.device)
        label_order = order.to(labels.device)
        for i in range(count):
            window = slice(i * batch_size, (i + 1) * batch_size)
            yield images[image_order[window]], labels[label_order[window]]
    else:
        for i in range(count):
            start = i * batch_size
            yield images[start : start + batch_size], labels[start : start + batch_size]
