"""Operator splitting for monotone inclusions 0 ∈ (I − W)z − b + ∂f(z).

Knows nothing about neural-network layers: an operator W (the protocol in
:mod:`splitting.operator`), a proximal nonlinearity, a bias, and a method.
"""
from .anderson import anderson, anderson_fb, anderson_pr
from .douglas_rachford import douglas_rachford
from .errors import (ConvergenceWarning, InvalidSettingError, NonFiniteInputError, StateShapeError,
                     StepSizeWarning, UnsupportedDerivativeError)
from .forward_backward import forward_backward, max_stable_alpha
from .implicit import BackwardProblem, EquilibriumStats, equilibrium
from .loop import natural_residual, relative_residual
from .operator import DenseOperator, LinearOperator, Resolvent, TransposedOperator
from .peaceman_rachford import peaceman_rachford
from .prox import DiagonalQuadratic, Prox, ReLU, SoftThreshold
from .result import SolverResult
from .state import State, as_state

SOLVERS = {"fb": forward_backward, "pr": peaceman_rachford, "dr": douglas_rachford,
           "anderson-pr": anderson_pr, "anderson-fb": anderson_fb}
"""Splitting methods by short name (the CLI's ``--solver``)."""

__all__ = [
    "BackwardProblem", "ConvergenceWarning", "DenseOperator", "DiagonalQuadratic", "EquilibriumStats",
    "InvalidSettingError", "LinearOperator", "NonFiniteInputError", "Prox", "ReLU", "Resolvent",
    "SOLVERS", "SoftThreshold", "SolverResult", "State", "StateShapeError", "StepSizeWarning",
    "TransposedOperator", "anderson", "anderson_fb", "anderson_pr", "as_state",
    "douglas_rachford", "equilibrium", "forward_backward", "max_stable_alpha",
    "natural_residual", "peaceman_rachford", "relative_residual", "UnsupportedDerivativeError",
]
