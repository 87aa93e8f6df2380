"""Robustness from the Lipschitz bound: the bound, certificates, attacks and certified training.

* :mod:`.lipschitz`: ‖U‖₂/m, the head matrix H and the margin constants ‖H_y − H_j‖·‖U‖₂/m,
  computed once for certificates and loss (``differentiable=`` chooses);
* :mod:`.certification`: sound certified radii (margins minus the solver's error);
* :mod:`.attacks`: PGD, the empirical upper bound the certificates are checked against;
* :mod:`.losses`: the Lipschitz-margin loss for certified training.
"""
from .attacks import AttackResult, pgd, robust_accuracy
from .certification import (Certificate, certified_accuracy, certified_radius, certify,
                            equilibrium_error_bound)
from .lipschitz import (head_matrix, lipschitz_bound, margin_lipschitz, margin_lipschitz_matrix,
                        pairwise_margin_norms)
from .losses import LipschitzMarginLoss

__all__ = ["AttackResult", "Certificate", "LipschitzMarginLoss", "certified_accuracy",
           "certified_radius", "certify", "equilibrium_error_bound", "head_matrix", "lipschitz_bound",
           "margin_lipschitz", "margin_lipschitz_matrix", "pairwise_margin_norms", "pgd",
           "robust_accuracy"]
