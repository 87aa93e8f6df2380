"""A classifier: its input normalisation, a MonDEQ layer, an affine readout of the equilibrium,
and a linear head."""
from __future__ import annotations

import math

from torch import Tensor, nn

from splitting import EquilibriumStats, State

from ..errors import InputShapeError, NonAffineReadoutError
from ..layer import MonDEQ
from .normalization import InputNormalization
from .readouts import FlattenState


class MonDEQClassifier(nn.Module):
    r"""``logits = head(readout(z*(normalization(x))))``, on pixel-scale inputs.

    The classifier owns its input normalisation (:class:`InputNormalization`, per channel
    :math:`(x - \mu_c)/\sigma_c`), so inputs, attack radii ε and certified radii are all in pixel
    scale; the layer alone sees normalised values. Without a normalisation the layer sees ``x``.

    Args:
        layer: the implicit layer.
        head: the final linear layer (an ``nn.Linear``, or a module declaring ``affine = True``).
        readout: a map from the equilibrium state to the head's input (default: concatenate the
            flattened tiers). Certificates (:func:`mondeq.certify`) need it affine and
            parameter-free and accept only modules that declare the class attribute
            ``affine = True`` (:class:`FlattenState`, :class:`AvgPoolState` do); any module works
            for plain training.
        normalization: the fixed input normalisation applied first (``None``: identity).
    """

    def __init__(self, layer: MonDEQ, head: nn.Linear, readout: nn.Module | None = None, *,
                 normalization: InputNormalization | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.head = head
        self.readout = readout if readout is not None else FlattenState()
        # registered last: its float64 buffers come after the weights in the state dict
        self.normalization = normalization

    @property
    def pixel_scale(self) -> float:
        r""":math:`\min_c \sigma_c` of the normalisation (1 without one): a pixel-scale distance
        is at least this times the distance the layer sees, so a Lipschitz constant of the layer's
        input map divided by it holds in pixel scale."""
        return 1.0 if self.normalization is None else self.normalization.pixel_scale

    def layer_input(self, x: Tensor) -> Tensor:
        """What the layer sees: ``x`` checked, normalised and shaped as the layer's input.

        Args:
            x: pixel-scale inputs, shape (batch, ...) with as many values per example as the
                layer takes (e.g. (batch, 1, 28, 28) or (batch, 784) for the MNIST FC model).

        Raises:
            InputShapeError: the examples do not have the layer's input size.
        """
        shape = tuple(self.layer.linear.input_shape)
        if x.ndim < 2 or math.prod(x.shape[1:]) != math.prod(shape):
            raise InputShapeError(
                f"the classifier takes inputs of shape (batch, {', '.join(map(str, shape))}) "
                f"({math.prod(shape)} values per example), got {tuple(x.shape)}"
                + (f" ({math.prod(x.shape[1:])} per example): was it built for another dataset?"
                   if x.ndim >= 2 else ": give a batch dimension first"))
        if self.normalization is not None:
            x = self.normalization(x)
        return x.reshape(x.shape[0], *shape)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape (batch, classes)."""
        return self.forward_with_stats(x)[0]

    def forward_with_stats(self, x: Tensor, *, z0: State | None = None) -> tuple[Tensor, EquilibriumStats]:
        """Logits and the layer's solver results, for pixel-scale ``x`` (:meth:`layer_input`)."""
        z, stats = self.layer.forward_with_stats(self.layer_input(x), z0=z0)
        return self.logits_from_state(z), stats

    def logits_from_state(self, z: State) -> Tensor:
        """Apply readout and head to an equilibrium state."""
        return self.head(self.readout(z))

    def head_matrix(self) -> Tensor:
        r"""The linear part :math:`H` of ``state ↦ logits`` on flattened states, shape (classes, n),
        detached (:func:`mondeq.robustness.lipschitz.head_matrix`, which also gives it with a graph).

        Raises:
            NonAffineReadoutError: the readout or the head does not declare itself affine.
        """
        from ..robustness.lipschitz import head_matrix  # robustness imports this module

        return head_matrix(self, differentiable=False)

    def check_affine(self) -> None:
        """Raise :class:`NonAffineReadoutError` unless readout and head are known to be affine."""
        for name, module in (("readout", self.readout), ("head", self.head)):
            if not (getattr(module, "affine", False) or (name == "head" and type(module) is nn.Linear)):
                raise NonAffineReadoutError(
                    f"the classifier's {name} {type(module).__name__} is not known to be affine, so "
                    f"logits = H z + c does not hold and Lipschitz certificates would be unsound; use "
                    f"an affine, parameter-free readout (FlattenState, AvgPoolState) and an nn.Linear "
                    f"head, or declare `affine = True` on a module that truly is affine")
