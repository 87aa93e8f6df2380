"""Robustness from the Lipschitz bound: the bound, certificates, attacks and certified training.

* :mod:`.lipschitz`: ‖U‖₂/m, the head matrix H and the margin constants ‖H_y − H_j‖·‖U‖₂/m,
  computed once for certificates and loss (``differentiable=`` chooses);
* :mod:`.certification`: sound certified radii (margins minus the solver's error);
* :mod:`.joint_bound`: tighter margin constants bounding x ↦ h_y − h_j jointly (a quadratic
  constraint on σ), never above the product bound (``certify(..., bound="joint")``);
* :mod:`.attacks`: PGD, the empirical upper bound the certificates are checked against;
* :mod:`.losses`: the Lipschitz-margin loss for certified training;
* :mod:`.certified_losses`: EMMA, offset cross entropy and logit annealing (``--loss``);
* :mod:`.looseness`: Lipschitz ratios attained on actual pairs, beside the certified constants;
* :mod:`.weight_lipschitz`: how far z* moves when the weights move (‖W − W′‖, ‖U − U′‖, ‖b − b′‖ over m).
"""
from .attacks import AttackResult, pgd, robust_accuracy
from .certification import (Certificate, certified_accuracy, certified_radius, certify,
                            equilibrium_error_bound)
from .joint_bound import pairwise_lipschitz
from .lipschitz import (head_matrix, lipschitz_bound, margin_lipschitz, margin_lipschitz_matrix,
                        pairwise_margin_norms)
from .losses import LipschitzMarginLoss
from .certified_losses import (CERTIFIED_LOSSES, EMMALoss, LogitAnnealingLoss, OffsetCrossEntropyLoss,
                               make_certified_loss)
from .looseness import Looseness, ascend_lipschitz_ratio, measure_looseness, pgd_pair_ratio
from .weight_lipschitz import WeightPerturbationBound, weight_lipschitz_bound

__all__ = ["CERTIFIED_LOSSES", "EMMALoss", "LogitAnnealingLoss", "Looseness", "OffsetCrossEntropyLoss",
           "ascend_lipschitz_ratio", "make_certified_loss", "measure_looseness", "pgd_pair_ratio",
           "AttackResult", "Certificate", "LipschitzMarginLoss", "certified_accuracy",
           "certified_radius", "certify", "equilibrium_error_bound", "head_matrix", "lipschitz_bound",
           "margin_lipschitz", "margin_lipschitz_matrix", "pairwise_lipschitz", "pairwise_margin_norms",
           "pgd",
           "robust_accuracy", "WeightPerturbationBound", "weight_lipschitz_bound"]
