r"""Proximal nonlinearities :math:`\sigma = \mathrm{prox}_f` for closed convex :math:`f`.

A splitting method with step :math:`\alpha` needs :math:`\mathrm{prox}_{\alpha f}`, which differs
from :math:`\sigma = \mathrm{prox}_{f}` for every :math:`f` except indicators. The implicit
backward pass needs the elementwise derivative of :math:`\sigma` at the pre-activation.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from .errors import InvalidSettingError
from .state import State


class Prox(ABC):
    """An elementwise proximal operator, applied tier by tier to a state."""

    @abstractmethod
    def prox(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        r""":math:`\mathrm{prox}_{\alpha f}(v) = \arg\min_z \tfrac12\|z - v\|^2 + \alpha f(z)`."""

    @abstractmethod
    def derivative(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        r"""Elementwise derivative of :math:`\mathrm{prox}_{\alpha f}` at ``v``, values in [0, 1]."""

    def __call__(self, v: Tensor) -> Tensor:
        """The nonlinearity σ = prox_f."""
        return self.prox(v, 1.0)

    def apply(self, v: State, alpha: float = 1.0) -> State:
        """:meth:`prox` on every tier of a state."""
        return tuple(self.prox(t, alpha) for t in v)


class ReLU(Prox):
    r"""ReLU = prox of the indicator of :math:`z \ge 0`; the same for every α."""

    def prox(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        return torch.relu(v)

    def derivative(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        return (v > 0).to(v.dtype)

    def __repr__(self) -> str:
        return "ReLU()"


class SoftThreshold(Prox):
    r"""Soft-thresholding = prox of :math:`\lambda\|z\|_1`: shrink towards 0 by :math:`\alpha\lambda`.

    .. math:: \mathrm{prox}_{\alpha\lambda\|\cdot\|_1}(v) = \mathrm{sign}(v)\max(|v| - \alpha\lambda, 0)
    """

    def __init__(self, lam: float = 0.1) -> None:
        if not lam >= 0:
            raise InvalidSettingError(f"soft-threshold level lam must be >= 0, got {lam}")
        self.lam = float(lam)

    def prox(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        return torch.nn.functional.softshrink(v, alpha * self.lam) if self.lam > 0 else v

    def derivative(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        return (v.abs() > alpha * self.lam).to(v.dtype)

    def __repr__(self) -> str:
        return f"SoftThreshold(lam={self.lam})"


class DiagonalQuadratic(Prox):
    r"""Prox of :math:`\tfrac12 u^\top D u` with :math:`D = J^{-1} - I`, :math:`J \in [0, 1]`.

    This is the nonlinearity of the implicit backward problem
    :math:`0 \in (I - W^\top)u - \bar g + D u`:

    .. math:: \mathrm{prox}_{\alpha D}(v) = \frac{J v}{J + \alpha (1 - J)}

    (``D = ∞`` where ``J = 0`` forces ``u = 0`` there). For α = 1 it is ``J v``.
    """

    def __init__(self, jacobian: State) -> None:
        self.jacobian = jacobian
        self._scales: dict[float, State] = {}

    def scale(self, alpha: float = 1.0) -> State:
        r"""The diagonal :math:`J / (J + \alpha(1 - J))` per tier, computed once per α (it is
        :math:`J` itself for α = 1, and for a 0/1 Jacobian such as ReLU's)."""
        if alpha not in self._scales:
            self._scales[alpha] = self.jacobian if alpha == 1.0 else tuple(
                j / (j + alpha * (1 - j)) for j in self.jacobian)
        return self._scales[alpha]

    def apply(self, v: State, alpha: float = 1.0) -> State:
        return tuple(s * t for s, t in zip(self.scale(alpha), v))

    def prox(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        if len(self.jacobian) != 1:
            raise InvalidSettingError("DiagonalQuadratic.prox on a single tensor needs a single-tier Jacobian")
        return self.scale(alpha)[0] * v

    def derivative(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        return self.scale(alpha)[0].expand_as(v)
