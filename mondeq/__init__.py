"""monDEQ: monotone operator equilibrium networks in PyTorch.

Layers whose equilibrium z* = σ(Wz* + Ux + b) provably exists and is unique, trained with exact
implicit gradients, with Lipschitz bounds and certified robustness. Solvers live in
:mod:`splitting`. One folder per concept:

* :mod:`mondeq.operators`: the parametrisations of W (dense, conv, multi-tier) and their operators;
* :mod:`mondeq.layer`, :mod:`mondeq.parametrisation`: the MonDEQ module and the protocol it needs;
* :mod:`mondeq.models`: classifiers, readouts and the model zoo;
* :mod:`mondeq.robustness`: Lipschitz bounds, certificates, attacks, certified-training losses;
* :mod:`mondeq.training`: epoch loop, checkpoints, resume, schedules, α tuning, distributed;
* :mod:`mondeq.data`: MNIST, Fashion-MNIST, CIFAR-10, SVHN, augmentation, batching;
* :mod:`mondeq.pretrained`: verified trained models shipped with the package
  (``mondeq.pretrained(name)``; ``mondeq.pretrained()`` lists them with their figures);
* :mod:`mondeq.errors`: every typed error (root :class:`MonDEQError`).
"""
from splitting.errors import attribute_warnings_past

from .errors import MonDEQError, NonAffineReadoutError
from .layer import MonDEQ, solver_settings
from .models import (AvgPoolState, FlattenState, MonDEQClassifier, TierPool, build_model, fc_mondeq,
                     load_run, multitier_mondeq, single_conv_mondeq)
from .operators import (ConvOperator, ConvResolvent, MonotoneConv, MonotoneLinear,
                        MonotoneMultiTier, MultiTierOperator, MultiTierResolvent)
from .parametrisation import MonotoneParametrisation
from . import pretrained  # callable: mondeq.pretrained(name); cheap to import (JSON manifests)
from .robustness import (AttackResult, Certificate, LipschitzMarginLoss, certified_accuracy,
                         certified_radius, certify, equilibrium_error_bound, lipschitz_bound,
                         margin_lipschitz, margin_lipschitz_matrix, pairwise_lipschitz,
                         pairwise_margin_norms, pgd,
                         robust_accuracy, WeightPerturbationBound, weight_lipschitz_bound)

__version__ = "0.1.0"

attribute_warnings_past(__file__)  # warnings name the caller's line, not a mondeq frame

__all__ = [
    "AttackResult", "AvgPoolState", "Certificate", "ConvOperator", "ConvResolvent", "FlattenState",
    "LipschitzMarginLoss", "MonDEQ", "MonDEQClassifier", "MonDEQError", "MonotoneConv",
    "MonotoneLinear", "MonotoneMultiTier", "MonotoneParametrisation", "MultiTierOperator",
    "MultiTierResolvent", "NonAffineReadoutError", "TierPool", "build_model", "certified_accuracy",
    "certified_radius", "certify", "equilibrium_error_bound", "fc_mondeq", "lipschitz_bound", "load_run",
    "margin_lipschitz", "margin_lipschitz_matrix", "multitier_mondeq", "pairwise_lipschitz",
    "pairwise_margin_norms",
    "pgd", "pretrained", "robust_accuracy", "single_conv_mondeq", "solver_settings",
    "WeightPerturbationBound", "weight_lipschitz_bound",
]
