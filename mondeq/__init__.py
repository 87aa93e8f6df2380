"""monDEQ: monotone operator equilibrium networks in PyTorch.

Layers whose equilibrium z* = σ(Wz* + Ux + b) provably exists and is unique, trained with exact
implicit gradients, with Lipschitz bounds and certified robustness. Solvers live in
:mod:`splitting`.
"""
from .base import MonotoneParametrisation
from .attacks import AttackResult, pgd, robust_accuracy
from .conv import ConvOperator, ConvResolvent, MonotoneConv
from .certification import (Certificate, certified_accuracy, certified_radius, certify,
                            equilibrium_error_bound, solver_settings)
from .dense import MonotoneLinear
from .layer import MonDEQ
from .lipschitz import lipschitz_bound, margin_lipschitz, pairwise_margin_norms
from .losses import LipschitzMarginLoss, margin_lipschitz_matrix
from .models import FlattenState, MonDEQClassifier, NonAffineReadoutError, fc_mondeq
from .models import AvgPoolState, single_conv_mondeq

__version__ = "0.1.0"

__all__ = [
    "FlattenState", "MonDEQ", "MonDEQClassifier", "MonotoneLinear", "MonotoneParametrisation",
    "certified_accuracy", "certified_radius", "fc_mondeq", "lipschitz_bound", "margin_lipschitz",
    "pairwise_margin_norms",
    "AttackResult", "Certificate", "certify", "NonAffineReadoutError", "LipschitzMarginLoss", "equilibrium_error_bound",
    "margin_lipschitz_matrix", "pgd", "robust_accuracy", "solver_settings",
    "AvgPoolState", "ConvOperator", "ConvResolvent", "MonotoneConv", "single_conv_mondeq",
]

from .multitier import MonotoneMultiConv, MultiConvOperator
from .multitier_model import TierPool, multitier_conv_mondeq
from .tier_coupling import MultiTierResolvent

__all__ += ["MonotoneMultiConv", "MultiConvOperator", "MultiTierResolvent", "TierPool",
            "multitier_conv_mondeq"]
