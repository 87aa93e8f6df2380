"""A classifier: a MonDEQ layer, an affine readout of the equilibrium, and a linear head."""
from __future__ import annotations

from torch import Tensor, nn

from splitting import EquilibriumStats, State

from ..errors import NonAffineReadoutError
from ..layer import MonDEQ
from .readouts import FlattenState


class MonDEQClassifier(nn.Module):
    """``logits = head(readout(z*(x)))``.

    Args:
        layer: the implicit layer.
        head: the final linear layer (an ``nn.Linear``, or a module declaring ``affine = True``).
        readout: a map from the equilibrium state to the head's input (default: concatenate the
            flattened tiers). Certificates (:func:`mondeq.certify`) need it affine and
            parameter-free and accept only modules that declare the class attribute
            ``affine = True`` (:class:`FlattenState`, :class:`AvgPoolState` do); any module works
            for plain training.
    """

    def __init__(self, layer: MonDEQ, head: nn.Linear, readout: nn.Module | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.head = head
        self.readout = readout if readout is not None else FlattenState()

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape (batch, classes)."""
        return self.forward_with_stats(x)[0]

    def forward_with_stats(self, x: Tensor, *, z0: State | None = None) -> tuple[Tensor, EquilibriumStats]:
        """Logits and the layer's solver results."""
        x = x.reshape(x.shape[0], *self.layer.linear.input_shape)
        z, stats = self.layer.forward_with_stats(x, z0=z0)
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
