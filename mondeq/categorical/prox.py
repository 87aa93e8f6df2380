r"""The mean-field nonlinearity on a state of categorical variables, with clamping.

A state is a tuple of tiers, batch first. Tier t has shape ``(B, C_t, *grid)`` with
:math:`C_t = G_t k_t`: channels ``[g k_t, (g + 1) k_t)`` at one grid position are the marginal of one
variable with :math:`k_t` values (a dense tier has no grid: ``(B, V k)``). The nonlinearity acts
on every variable separately: :math:`\sigma = \mathrm{softmax}` and its step-α form
:math:`\mathrm{prox}_{\alpha f}` (:mod:`mondeq.categorical.simplex`).

**Clamping.** An observed variable i is fixed to its one-hot value :math:`e_{o_i}`. That is the
prox of :math:`f_i + \iota_{\{e_{o_i}\}}` (the indicator of one point, convex), which returns
:math:`e_{o_i}` for every input and every α. So a clamped problem is the same monotone inclusion
with a different convex f: it has a unique solution, every splitting method solves it unchanged,
and its Jacobian is 0 on the clamped blocks, so the implicit backward leaves them alone.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from splitting import Prox, State
from ..errors import InvalidSettingError, StateShapeError, UnsupportedDerivativeError
from .simplex import check_step, jacobian_weights, linearised_prox, simplex_prox


def grouped(t: Tensor, k: int) -> Tensor:
    """The view ``(B, G, k, *grid)`` of a tier ``(B, G k, *grid)``."""
    return t.view(t.shape[0], t.shape[1] // k, k, *t.shape[2:])


class Clamp:
    """Observed variables and their values, per tier.

    Args:
        masks: per tier, a bool tensor ``(B, G_t, *grid)`` (True: observed) or ``None`` (no
            variable of the tier is observed).
        values: per tier, the clamped marginals ``(B, C_t, *grid)`` (one-hot where observed;
            ignored elsewhere) or ``None``.
    """

    def __init__(self, masks: Sequence[Tensor | None], values: Sequence[Tensor | None]) -> None:
        if len(masks) != len(values):
            raise InvalidSettingError(f"clamp: {len(masks)} masks but {len(values)} value tensors")
        self.masks = tuple(masks)
        self.values = tuple(values)

    def restrict(self, t: Tensor, tier: int, k: int) -> Tensor:
        """``t`` with the observed variables of ``tier`` replaced by their values."""
        mask = self.masks[tier]
        if mask is None:
            return t
        return torch.where(mask.unsqueeze(2), grouped(self.values[tier], k), grouped(t, k)).reshape(t.shape)

    def free(self, t: Tensor, tier: int, k: int) -> Tensor:
        """``t`` with zeros on the observed variables of ``tier``."""
        mask = self.masks[tier]
        if mask is None:
            return t
        return grouped(t, k).masked_fill(mask.unsqueeze(2), 0.0).reshape(t.shape)


class SimplexEntropy(Prox):
    r"""Per-variable :math:`\mathrm{prox}_{\alpha f}` (softmax at α = 1), clamped variables fixed.

    Args:
        sizes: the number of values :math:`k_t` of the variables of each tier.
        clamp: observed variables (:class:`Clamp`), or ``None``.
    """

    def __init__(self, sizes: Sequence[int], *, clamp: Clamp | None = None) -> None:
        self.sizes = tuple(int(k) for k in sizes)
        if any(k < 2 for k in self.sizes):
            raise InvalidSettingError(f"every categorical variable needs k >= 2 values, got {self.sizes}")
        if clamp is not None and len(clamp.masks) != len(self.sizes):
            raise InvalidSettingError(f"clamp has {len(clamp.masks)} tiers, the state {len(self.sizes)}")
        self.clamp = clamp

    def prox(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        if len(self.sizes) != 1:
            raise InvalidSettingError("SimplexEntropy.prox on one tensor needs a single-tier state; use apply")
        return self.apply((v,), alpha)[0]

    def apply(self, v: State, alpha: float = 1.0) -> State:
        check_step(alpha)
        if len(v) != len(self.sizes):
            raise StateShapeError(f"state has {len(v)} tiers, the nonlinearity {len(self.sizes)}")
        out = []
        for tier, (t, k) in enumerate(zip(v, self.sizes)):
            if t.shape[1] % k:
                raise StateShapeError(f"tier {tier} has {t.shape[1]} channels, not a multiple of k={k}")
            q = simplex_prox(grouped(t, k), alpha, dim=2).reshape(t.shape)
            out.append(q if self.clamp is None else self.clamp.restrict(q, tier, k))
        return tuple(out)

    def restrict(self, z: State) -> State:
        """``z`` with its clamped variables set exactly to their values (a copy where changed)."""
        if self.clamp is None:
            return z
        return tuple(self.clamp.restrict(t, tier, k) for tier, (t, k) in enumerate(zip(z, self.sizes)))

    def derivative(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        raise UnsupportedDerivativeError(
            "the simplex-entropy prox has a block (not elementwise) Jacobian diag(g) − ggᵀ/Σg; "
            "use mondeq.categorical.categorical_equilibrium (implicit gradients) and a splitting "
            "method that needs no elementwise derivative (fb, pr, dr, anderson-pr, anderson-fb)")

    def linearisation(self, v: State) -> "LinearisedSimplex":
        r"""The backward problem's nonlinearity at the pre-activation ``v`` (:math:`J = \sigma'(v)`)."""
        return LinearisedSimplex(self.apply(v, 1.0), self.sizes, clamp=self.clamp)

    def __repr__(self) -> str:
        return f"SimplexEntropy(sizes={self.sizes}, clamped={self.clamp is not None})"


class LinearisedSimplex(Prox):
    r"""The backward (and tangent) problem's nonlinearity :math:`J(\beta I + (1-\beta)J)^{-1}`, with
    :math:`J = \mathrm{diag}(q) - qq^\top` per free variable and 0 on clamped ones
    (:func:`~mondeq.categorical.simplex.linearised_prox`). At β = 1 it is J itself.

    Args:
        q: the solution's marginals :math:`\sigma(v)` (a state).
        sizes, clamp: as for :class:`SimplexEntropy`.
    """

    def __init__(self, q: State, sizes: Sequence[int], *, clamp: Clamp | None = None) -> None:
        self.g = tuple(grouped(t.detach(), k) for t, k in zip(q, sizes))  # α = 1: g = q
        self.sizes = tuple(sizes)
        self.clamp = clamp

    def apply(self, v: State, alpha: float = 1.0) -> State:
        out = []
        for tier, (t, g, k) in enumerate(zip(v, self.g, self.sizes)):
            y = linearised_prox(g, grouped(t, k), alpha, dim=2).reshape(t.shape)
            out.append(y if self.clamp is None else self.clamp.free(y, tier, k))
        return tuple(out)

    def prox(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        if len(self.sizes) != 1:
            raise InvalidSettingError("LinearisedSimplex.prox on one tensor needs a single-tier state; use apply")
        return self.apply((v,), alpha)[0]

    def derivative(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        raise UnsupportedDerivativeError("the linearised simplex prox is linear with a block matrix; "
                                         "it has no elementwise derivative (second order is not supported)")


def one_hot_state(labels: Tensor, k: int) -> Tensor:
    """``(B, G, *grid)`` integer values → the one-hot tier ``(B, G k, *grid)``."""
    hot = torch.nn.functional.one_hot(labels.long(), k).movedim(-1, 2)
    return hot.reshape(labels.shape[0], labels.shape[1] * k, *labels.shape[2:])


__all__ = ["Clamp", "LinearisedSimplex", "SimplexEntropy", "grouped", "jacobian_weights", "one_hot_state"]
