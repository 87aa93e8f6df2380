r"""Lipschitz bounds of a monDEQ (Pabbaraju, Winston & Kolter, ICLR 2021).

.. math:: \|z^\star(x) - z^\star(x')\|_2 \le \frac{\|U\|_2}{m}\,\|x - x'\|_2

and for logits :math:`h = Hz^\star + c` the margin :math:`h_y - h_j` moves by at most
:math:`\|H_y - H_j\|_2\,\|U\|_2/m\,\|x - x'\|_2`.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..parametrisation import MonotoneParametrisation
from ..layer import MonDEQ


def lipschitz_bound(model: nn.Module) -> float:
    r""":math:`\|U\|_2 / m`, the Lipschitz constant of :math:`x \mapsto z^\star(x)` in ℓ2.

    Args:
        model: a :class:`~mondeq.layer.MonDEQ`, its parametrisation, or a classifier holding
            one as ``.layer`` (:class:`~mondeq.models.MonDEQClassifier`).
    """
    linear = model.layer if isinstance(getattr(model, "layer", None), MonDEQ) else model
    linear = linear.linear if isinstance(linear, MonDEQ) else linear
    if not isinstance(linear, MonotoneParametrisation):
        raise TypeError(f"lipschitz_bound needs a MonDEQ, a MonotoneParametrisation or a classifier "
                        f"whose .layer is a MonDEQ, got {type(model).__name__}")
    return linear.cached("input_norm", lambda: _input_norm(linear)) / linear.m


def _input_norm(linear: MonotoneParametrisation) -> float:
    """‖U‖₂ computed in float64 (from a float64 copy of lower-precision parameters): a float32
    SVD can come out ~1e-7 below the norm, and certificates need it not below."""
    with torch.no_grad():
        if linear.dtype != torch.float64:
            linear = copy.deepcopy(linear).to(torch.float64)
        return float(linear.input_norm())


def pairwise_margin_norms(head: Tensor) -> Tensor:
    r"""Matrix :math:`N_{ij} = \|H_i - H_j\|_2` of a head's row differences, shape (K, K)."""
    return torch.cdist(head.unsqueeze(0), head.unsqueeze(0)).squeeze(0)


def margin_lipschitz(head: Tensor, lipschitz: float) -> Tensor:
    r"""Lipschitz constants of every margin :math:`h_i - h_j`: :math:`N_{ij}\,\|U\|_2/m`, (K, K)."""
    return pairwise_margin_norms(head) * lipschitz
