"""monDEQ: monotone operator equilibrium networks in PyTorch.

Layers whose equilibrium z* = σ(Wz* + Ux + b) provably exists and is unique, trained with exact
implicit gradients, with Lipschitz bounds and certified robustness. Solvers live in
:mod:`splitting`.
"""
from .base import MonotoneParametrisation
from .certify import certified_accuracy, certified_radius
from .dense import MonotoneLinear
from .layer import MonDEQ
from .lipschitz import lipschitz_bound, margin_lipschitz, pairwise_margin_norms
from .models import FlattenState, MonDEQClassifier, fc_mondeq

__version__ = "0.1.0"

__all__ = [
    "FlattenState", "MonDEQ", "MonDEQClassifier", "MonotoneLinear", "MonotoneParametrisation",
    "certified_accuracy", "certified_radius", "fc_mondeq", "lipschitz_bound", "margin_lipschitz",
    "pairwise_margin_norms",
]
