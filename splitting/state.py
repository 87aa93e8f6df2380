"""States of a splitting method: tuples of tensors, one per tier, batch first.

Every solver works on tuples so that single-tier (dense, conv) and multi-tier operators share
one code path. These helpers keep the arithmetic on tuples readable.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

State = tuple[Tensor, ...]


def as_state(z: Tensor | State) -> State:
    """Wrap a single tensor into a 1-tuple; leave tuples alone."""
    return (z,) if isinstance(z, Tensor) else tuple(z)


def tmap(fn: Callable[..., Tensor], *states: State) -> State:
    """Apply ``fn`` tier by tier: ``tmap(f, a, b)[i] = f(a[i], b[i])``."""
    return tuple(fn(*parts) for parts in zip(*states))


def batch_norm(z: State) -> Tensor:
    """Per-sample Euclidean norm over all tiers, shape (batch,)."""
    # one pass a tier, reducing over every non-batch dimension in place (no reshape call)
    norms = [torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim))) if t.ndim > 1 else t.abs()
             for t in z]
    return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms), dim=0)


def batch_dot(a: State, b: State) -> Tensor:
    """Per-sample inner product ⟨a, b⟩ over all tiers, shape (batch,)."""
    return sum((x.reshape(x.shape[0], -1) * y.reshape(y.shape[0], -1)).sum(dim=1) for x, y in zip(a, b))


def zeros_like_state(z: State) -> State:
    """A state of zeros with the shapes, dtype and device of ``z``."""
    return tuple(torch.zeros_like(t) for t in z)


def flatten(z: State) -> Tensor:
    """Concatenate all tiers into one (batch, n) matrix (for dense reference checks)."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in z], dim=1)


def unflatten(flat: Tensor, like: State) -> State:
    """Inverse of :func:`flatten` with the tier shapes of ``like``."""
    parts, start = [], 0
    for t in like:
        size = t[0].numel()
        parts.append(flat[:, start : start + size].reshape(flat.shape[0], *t.shape[1:]))
        start += size
    return tuple(parts)
