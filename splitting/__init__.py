"""Operator splitting for monotone inclusions 0 ∈ (I − W)z − b + ∂f(z).

Knows nothing about neural-network layers: an operator W (the protocol in
:mod:`splitting.operator`), a proximal nonlinearity, a bias, and a method.
"""
from .anderson import anderson, anderson_fb, anderson_pr
from .baselines import anderson_plain, broyden
from .douglas_rachford import douglas_rachford
from .errors import (ConvergenceWarning, InvalidSettingError, NonFiniteInputError, StateShapeError,
                     StepSizeWarning, UnsupportedDerivativeError)
from .forward_backward import forward_backward, max_stable_alpha
from .forward_backward_forward import forward_backward_forward, max_stable_alpha_fbf
from .implicit import BackwardProblem, EquilibriumStats, equilibrium
from .loop import natural_residual, relative_residual
from .newton import newton
from .operator import DenseOperator, LinearOperator, Resolvent, TransposedOperator
from .peaceman_rachford import peaceman_rachford
from .prox import DiagonalQuadratic, Prox, ReLU, SoftThreshold
from .proxes import HardTanh, LeakyReLU, ScalarProx, Sigmoid, Softplus, Tanh
from .result import SolverResult
from .state import State, as_state

SOLVERS = {"fb": forward_backward, "pr": peaceman_rachford, "dr": douglas_rachford,
           "anderson-pr": anderson_pr, "anderson-fb": anderson_fb, "fbf": forward_backward_forward,
           "newton": newton}
"""Splitting methods by short name (the CLI's ``--solver``); ``"newton"`` is semismooth Newton
safeguarded by Peaceman-Rachford steps (:mod:`splitting.newton`)."""

BASELINES = {"broyden": broyden, "anderson-plain": anderson_plain}
"""Comparison baselines on the plain map z ↦ σ(Wz + b) (:mod:`splitting.baselines`), same
signature and stopping rule as :data:`SOLVERS` but **no convergence guarantee** for a monDEQ;
kept out of :data:`SOLVERS` (whose tests assume a guarantee) so no layer uses them by default.
A layer can still take one as a callable: ``MonDEQ(..., solver=splitting.BASELINES["broyden"])``."""

STEP_LIMITS = {"fb": max_stable_alpha, "anderson-fb": max_stable_alpha, "fbf": max_stable_alpha_fbf}
"""For the methods of :data:`SOLVERS` that converge only for 0 < α < limit(op): that limit, by
name (FB: 2m/L²; forward-backward-forward: 1/L). The methods not listed converge for every α > 0."""

__all__ = [
    "BASELINES", "BackwardProblem", "ConvergenceWarning", "DenseOperator", "DiagonalQuadratic",
    "EquilibriumStats", "HardTanh", "InvalidSettingError", "LeakyReLU", "LinearOperator",
    "NonFiniteInputError", "Prox", "ReLU", "Resolvent", "SOLVERS", "STEP_LIMITS", "ScalarProx",
    "Sigmoid", "SoftThreshold", "Softplus", "SolverResult", "State", "StateShapeError",
    "StepSizeWarning", "Tanh", "TransposedOperator", "UnsupportedDerivativeError", "anderson",
    "anderson_fb", "anderson_plain", "anderson_pr", "as_state", "broyden", "douglas_rachford",
    "equilibrium", "forward_backward", "forward_backward_forward", "max_stable_alpha",
    "max_stable_alpha_fbf", "natural_residual", "newton", "peaceman_rachford", "relative_residual",
]
