"""Monotone deep Boltzmann machines: mean-field inference over categorical variables as a monotone
equilibrium (Feng, Winston & Kolter, TMLR 2023).

* :mod:`~mondeq.categorical.simplex`: the simplex-entropy prox (softmax and its step-α form) and
  its Jacobian;
* :mod:`~mondeq.categorical.prox`: the nonlinearity on a state of variables, clamping;
* :mod:`~mondeq.categorical.dense`, :mod:`~mondeq.categorical.conv`: hollow monotone couplings
  :math:`W = D - A^\\top A`, dense and multi-tier convolutional with groups;
* :mod:`~mondeq.categorical.implicit`: the equilibrium with implicit gradients;
* :mod:`~mondeq.categorical.model`, :mod:`~mondeq.categorical.build`: the completion-and-
  classification model, building it from settings, loading a run;
* :mod:`~mondeq.categorical.train`, :mod:`~mondeq.categorical.baselines`: training, scoring, baselines.
"""
from .build import build_dbm, load_dbm, model_config
from .conv import HollowConvOperator, HollowMultiTier
from .dense import HollowDense, HollowDenseOperator
from .implicit import categorical_equilibrium
from .model import Completion, CompletionDBM, to_bins
from .prox import Clamp, LinearisedSimplex, SimplexEntropy
from .simplex import simplex_prox

__all__ = ["Clamp", "Completion", "CompletionDBM", "HollowConvOperator", "HollowDense", "HollowDenseOperator",
           "HollowMultiTier", "LinearisedSimplex", "SimplexEntropy", "build_dbm", "categorical_equilibrium",
           "load_dbm", "model_config", "simplex_prox", "to_bins"]
