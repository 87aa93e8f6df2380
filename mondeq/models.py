"""Classifiers: a MonDEQ layer, an affine readout of the equilibrium, and a linear head."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from splitting import EquilibriumStats, Prox, State

from .conv import MonotoneConv
from .dense import MonotoneLinear
from .layer import MonDEQ


class NonAffineReadoutError(TypeError):
    """Certificates and Lipschitz margins need ``logits = H z + c``; the readout or head of this
    classifier is not known to be affine."""


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
        r"""The linear part :math:`H` of ``state ↦ logits`` on flattened states, shape (classes, n).

        Readout and head are affine, so :math:`H` is the Jacobian at any point (taken at zero).

        Raises:
            NonAffineReadoutError: the readout or the head does not declare itself affine.
        """
        self.check_affine()
        op = self.layer.linear.operator()
        zero = tuple(t.detach() for t in op.zeros(1))

        def logits_of(*flat_tiers: Tensor) -> Tensor:
            return self.logits_from_state(tuple(flat_tiers))[0]

        with torch.enable_grad():
            jac = torch.autograd.functional.jacobian(logits_of, zero)
        return torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1).detach()


    def check_affine(self) -> None:
        """Raise :class:`NonAffineReadoutError` unless readout and head are known to be affine."""
        for name, module in (("readout", self.readout), ("head", self.head)):
            if not (getattr(module, "affine", False) or (name == "head" and type(module) is nn.Linear)):
                raise NonAffineReadoutError(
                    f"the classifier's {name} {type(module).__name__} is not known to be affine, so "
                    f"logits = H z + c does not hold and Lipschitz certificates would be unsound; use "
                    f"an affine, parameter-free readout (FlattenState, AvgPoolState) and an nn.Linear "
                    f"head, or declare `affine = True` on a module that truly is affine")


class FlattenState(nn.Module):
    """Concatenate the flattened tiers of a state into one (batch, n) matrix."""

    affine = True

    def forward(self, z: State) -> Tensor:
        return torch.cat([t.reshape(t.shape[0], -1) for t in z], dim=1)


class AvgPoolState(nn.Module):
    """Average-pool a single-tier image state ``(B, C, H, W)`` and flatten it (linear, no parameters).

    Args:
        pool: square pooling window and stride; trailing rows/columns that do not fill a window
            are dropped (``avg_pool2d`` semantics).
    """

    affine = True

    def __init__(self, pool: int) -> None:
        super().__init__()
        self.pool = int(pool)

    def forward(self, z: State) -> Tensor:
        (x,) = z
        return nn.functional.avg_pool2d(x, self.pool).flatten(1)

    def extra_repr(self) -> str:
        return f"pool={self.pool}"


def fc_mondeq(in_features: int = 784, hidden: int = 87, num_classes: int = 10, *, m: float = 1.0,
              nonlinearity: Prox | None = None, solver: str | Callable = "pr", alpha: float = 1.0,
              tol: float = 1e-2, max_iter: int = 50, backward_tol: float | None = None,
              backward_max_iter: int | None = None) -> MonDEQClassifier:
    """The paper's fully connected monDEQ classifier (87 hidden units on MNIST)."""
    layer = MonDEQ(MonotoneLinear(in_features, hidden, m=m), nonlinearity, solver=solver, alpha=alpha,
                   tol=tol, max_iter=max_iter, backward_tol=backward_tol,
                   backward_max_iter=backward_max_iter)
    return MonDEQClassifier(layer, nn.Linear(hidden, num_classes))


def single_conv_mondeq(in_channels: int = 1, image_size: int = 28, channels: int = 54,
                       num_classes: int = 10, *, kernel_size: int = 3, padding: int = 1, pool: int = 4,
                       m: float = 1.0, nonlinearity: Prox | None = None, solver: str | Callable = "pr",
                       alpha: float = 1.0, tol: float = 1e-2, max_iter: int = 50,
                       backward_tol: float | None = None,
                       backward_max_iter: int | None = None) -> MonDEQClassifier:
    """The paper's single-convolution monDEQ classifier (MNIST: 54 channels, 3 × 3 kernels, m = 1).

    The input is zero-padded by ``padding`` (28 → 30 on MNIST, as in the paper's code), the state
    is ``(channels, 30, 30)``, the readout averages 4 × 4 windows (30 → 7, the last two rows and
    columns fall outside every window) and a linear head maps the ``54·7·7`` features to logits:
    79,498 parameters with the defaults (the paper quotes about 84K).
    """
    linear = MonotoneConv(in_channels, channels, image_size, kernel_size=kernel_size, padding=padding, m=m)
    layer = MonDEQ(linear, nonlinearity, solver=solver, alpha=alpha, tol=tol, max_iter=max_iter,
                   backward_tol=backward_tol, backward_max_iter=backward_max_iter)
    features = channels * (linear.size[0] // pool) * (linear.size[1] // pool)
    return MonDEQClassifier(layer, nn.Linear(features, num_classes), readout=AvgPoolState(pool))
