"""The last application of an operator, kept so that applying it again to the same state is free.

The implicit layer applies W twice to the solver's state in a row: once without a graph for the
solver's confirming residual, once for the layer's differentiable pre-activation. Operators whose
application is expensive (conv, multi-tier) keep the last input and result and hand the result
back while neither has changed. An input is recognised by its memory, shape, strides and dtype (so
a detached alias of the stored tensor matches) and by its version counter (so an in-place edit
does not); the stored tensors are held, so their memory cannot be reused by another tensor.
Inference tensors have no version counter and are never stored.
"""
from __future__ import annotations

from typing import Any, Hashable, Sequence

from torch import Tensor


def _same_memory(held: Tensor, t: Tensor) -> bool:
    return (held is t or (t.data_ptr() == held.data_ptr() and t.shape == held.shape
                          and t.stride() == held.stride() and t.dtype == held.dtype))


class LastApplication:
    """Per key (e.g. ``"mv"`` / ``"rmv"``), the last input state, its result and any payload."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple] = {}

    def get(self, key: Hashable, inputs: Sequence[Tensor]) -> Any | None:
        """The payload stored for ``inputs`` under ``key``, or ``None`` when ``inputs`` or the
        stored result has changed since (or nothing matching is stored)."""
        entry = self._entries.get(key)
        if entry is None or any(t.is_inference() for t in inputs):
            return None
        held, versions, results, result_versions, payload = entry
        if len(held) != len(inputs):
            return None
        if not all(_same_memory(h, t) and t._version == v for h, v, t in zip(held, versions, inputs)):
            return None
        if not all(r._version == v for r, v in zip(results, result_versions)):
            return None
        return payload

    def put(self, key: Hashable, inputs: Sequence[Tensor], results: Sequence[Tensor],
            payload: Any) -> None:
        """Store ``payload`` for ``inputs``; it stays valid while ``inputs`` and ``results`` are
        unmodified. Inference tensors (no version counter) are not stored."""
        if any(t.is_inference() for t in (*inputs, *results)):
            self._entries.pop(key, None)
            return
        self._entries[key] = (tuple(inputs), tuple(t._version for t in inputs), tuple(results),
                              tuple(t._version for t in results), payload)
