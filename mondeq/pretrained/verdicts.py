"""Per-image certificate verdicts, stored compactly: one bit per image, as a hexadecimal string.

Image ``i`` is bit ``i`` of the integer the string spells (least significant first), so
``"5"`` marks images 0 and 2. A model's manifest records, for the first ``images`` test images
certified in one batch with its recorded settings, whether each is classified correctly by the
tightly solved network and, for every ε, whether its certified radius exceeds ε; a test
re-certifies those images and must find the same bits.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

__all__ = ["decode", "encode", "record_verdicts", "verdicts_of"]


def encode(bits: Tensor) -> str:
    """The hexadecimal string of a boolean vector (bit ``i`` = element ``i``)."""
    value = 0
    for i in bits.to(torch.bool).cpu().nonzero().flatten().tolist():
        value |= 1 << i
    return format(value, "x")


def decode(text: str, n: int) -> Tensor:
    """The boolean vector of length ``n`` that :func:`encode` wrote as ``text``."""
    value = int(text, 16)
    if value >> n:
        raise ValueError(f"the verdict string sets bits beyond the {n} images it is for")
    return torch.tensor([bool(value >> i & 1) for i in range(n)], dtype=torch.bool)


def verdicts_of(certificate: Any, epsilons: Iterable[float]) -> dict[str, Any]:
    """The verdicts of a :class:`~mondeq.robustness.Certificate`: ``correct`` and, per ε,
    ``certified`` (radius > ε), each encoded."""
    return {"correct": encode(certificate.correct),
            "certified": {f"{float(e):g}": encode(certificate.radius > e) for e in epsilons}}


def record_verdicts(model, x: Tensor, y: Tensor, settings: Mapping[str, Any],
                    epsilons: Iterable[float]) -> dict[str, Any]:
    """Certifies ``x`` in one batch with ``settings`` (``bound``, ``multipliers``, ``tol``,
    ``max_iter``; the model already in its dtype) and returns the manifest's ``verdicts`` entry:
    ``images``, ``epsilons`` and the encoded bits."""
    from ..robustness.certification import certify

    epsilons = [float(e) for e in epsilons]
    cert = certify(model, x, y, epsilons=epsilons, batch_size=len(x), dtype=None,  # the model's
                   **{k: settings[k] for k in ("bound", "multipliers", "tol", "max_iter")})
    return {"images": len(x), "epsilons": epsilons, **verdicts_of(cert, epsilons)}
