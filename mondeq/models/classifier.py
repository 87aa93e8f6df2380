"""A classifier: its input normalisation, a MonDEQ layer, an affine readout of the equilibrium,
and a linear head."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from splitting import EquilibriumStats, State

from ..errors import InputShapeError, NonAffineReadoutError
from ..layer import MonDEQ
from .normalization import InputNormalization, as_pixels
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
                layer takes (e.g. (batch, 1, 28, 28) or (batch, 784) for the MNIST FC model):
                floating pixels in [0, 1] of any dtype (computed in the model's), or ``uint8``
                0..255 (divided by 255; :func:`~mondeq.models.normalization.as_pixels`).

        Raises:
            InputShapeError: the examples do not have the layer's input size.
            InputDTypeError: another integer dtype, ``bool`` or complex.
        """
        x = as_pixels(x, self.layer.linear.dtype)  # uint8 0..255 → [0, 1]; floats in the model's dtype
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

    def head_matrix(self, *, differentiable: bool = False) -> Tensor:
        r"""The linear part :math:`H` of ``state ↦ logits`` on flattened states, shape (classes, n).

        Readout and head are affine (``logits = H z + c``), so :math:`H` is the Jacobian of
        :meth:`logits_from_state` at any state; it is taken at zero, tier by tier, and the tiers'
        columns are concatenated in the order of :class:`FlattenState`. With the default readout
        and an ``nn.Linear`` head, :math:`H` is the head's weight.

        Args:
            differentiable: keep the graph to the head's parameters (for a training loss);
                ``False`` (default) returns a detached tensor (for certificates).

        Raises:
            NonAffineReadoutError: the readout or the head does not declare itself affine.
        """
        self.check_affine()  # the margin constants assume logits = H z + c
        if isinstance(self.readout, FlattenState) and type(self.head) is nn.Linear:
            weight = self.head.weight
            return weight if differentiable else weight.detach()
        zero = tuple(t.detach() for t in self.layer.linear.operator().zeros(1))

        def logits_of(*tiers: Tensor) -> Tensor:
            return self.logits_from_state(tuple(tiers))[0]

        with torch.enable_grad():  # certify runs under no_grad
            jac = torch.autograd.functional.jacobian(logits_of, zero, create_graph=differentiable)
        head = torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1)
        return head if differentiable else head.detach()

    def check_affine(self) -> None:
        """Raise :class:`NonAffineReadoutError` unless readout and head are known to be affine."""
        for name, module in (("readout", self.readout), ("head", self.head)):
            if not (getattr(module, "affine", False) or (name == "head" and type(module) is nn.Linear)):
                raise NonAffineReadoutError(
                    f"the classifier's {name} {type(module).__name__} is not known to be affine, so "
                    f"logits = H z + c does not hold and Lipschitz certificates would be unsound; use "
                    f"an affine, parameter-free readout (FlattenState, AvgPoolState) and an nn.Linear "
                    f"head, or declare `affine = True` on a module that truly is affine")
