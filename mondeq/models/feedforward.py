r"""The plain-network reference: a zoo architecture with its equilibrium coupling removed.

With :math:`F = G = 0` and :math:`m = 1` the parametrisation gives :math:`W = (1 - m)I - F^TF +
G^T - G = 0`, so the equilibrium is one feedforward layer,

.. math:: z^\star = \sigma(Ux + b),

and the classifier is a plain network of the same input layer, readout and head: for the
single-convolution model, a convolution, ReLU, average pooling and a linear head, i.e. a plain
one-hidden-layer CNN. :func:`feedforward` zeroes F and G and freezes them, so the same training
command, solver, certificates and checkpoints serve it unchanged (the solve converges in one or
two iterations), and a comparison against it isolates what the equilibrium adds. It is registered
in the zoo as ``"cnn"`` (:func:`~mondeq.models.zoo.build_model`).
"""
from __future__ import annotations

import torch

from .classifier import MonDEQClassifier

__all__ = ["COUPLING", "feedforward"]

COUPLING = ("F", "G")
"""The parameters of W's coupling (``layer.linear.F``, ``layer.linear.G``), zero in the reference."""


def feedforward(model: MonDEQClassifier) -> MonDEQClassifier:
    """``model`` with W's coupling parameters set to zero and frozen (``requires_grad=False``),
    in place; with the margin m = 1 this makes W = 0 (module docstring).

    Raises:
        AttributeError: the layer has no ``F`` and ``G`` parameters.
    """
    linear = model.layer.linear
    with torch.no_grad():
        for name in COUPLING:
            parameter = getattr(linear, name)
            parameter.zero_()
            parameter.requires_grad_(False)
    return model
