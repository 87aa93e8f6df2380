r"""Training regularisers on the layer's operator: the ‖I − W‖ penalty.

A DEQ's Jacobian regulariser (Bai, Koltun & Kolter, "Stabilizing equilibrium models by Jacobian
regularization", ICML 2021) keeps the fixed-point map well conditioned. A monDEQ's
conditioning is the ratio of the operator's Lipschitz constant to its margin,

.. math:: \kappa = \frac{L}{m},\qquad L = \|I - W\|_2,\quad
          I - W = mI + F^\top F + (G - G^\top) \succeq mI,

which sets the splitting methods' rates (FB's step limit :math:`2m/L^2`, PR's contraction at the
best α) and the certificate's solver-error slack :math:`(1 + L)\|e\|/m`. With m fixed, the
monotone analogue of Jacobian regularisation is therefore

.. math:: \ell \mathrel{+}= \lambda\,\|I - W\|_2 .

:class:`OperatorNormPenalty` computes it differentiably in F and G:

* exact: the largest singular value over the blocks of I − W in the layer's
  :meth:`~mondeq.parametrisation.MonotoneParametrisation.block_structure` (dense: the n × n
  matrix, gradient :math:`u_1 v_1^\top`; conv: the C × C frequency blocks; multi-tier: the
  alias groups; any other layer: its probed dense block), a batched SVD with its backward per
  step (about 0.1 s for 16 channels on 30 × 30, 1.4 s for the paper's 54 on a shared 2-core CPU:
  there 2 power steps, 0.4 s, are the cheaper choice). The default where the blocks are small
  (:data:`EXACT_COST_LIMIT` on blocks·d³: every dense and conv layer of the zoo, small
  multi-tier layers);
* otherwise (large multi-tier layers, or any layer with ``iterations > 0``): a power-iteration estimate
  :math:`\|(I - W)v\|` with a persistent unit vector v, refined by ``iterations`` power steps on
  :math:`(I - W)^\top(I - W)` per call (a warm start: W moves little per step). It approaches
  the norm from below and its gradient, with v held fixed, is that of the top singular value at
  convergence. A penalty need not be an upper bound; the certificates keep using the exact
  ``operator().lipschitz()``.

The power vector is the regulariser's only state (:meth:`OperatorNormPenalty.state_dict`): it is
checkpointed, so a resumed run continues bit for bit. Its start is drawn from a private
generator, never from the global RNG.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from splitting import State

from ..errors import InvalidSettingError, StructureTooLargeError
from ..layer import MonDEQ
from ..parametrisation import MonotoneParametrisation

__all__ = ["OperatorNormPenalty", "make_operator_penalty", "operator_norm", "operator_norm_bound"]

#: ``iterations=0`` takes the exact norm when the structure's blocks·d³ is at most this (a batched
#: SVD with its backward per step); above it, 2 power steps.
EXACT_COST_LIMIT = 1.5e9


def _parametrisation(model: nn.Module) -> MonotoneParametrisation:
    """The parametrisation of a classifier, a layer, or the parametrisation itself."""
    layer = getattr(model, "layer", model)
    linear = layer.linear if isinstance(layer, MonDEQ) else layer
    if not isinstance(linear, MonotoneParametrisation):
        raise InvalidSettingError(f"the operator penalty needs a classifier, a MonDEQ or a "
                                  f"MonotoneParametrisation, got {type(model).__name__}")
    return linear


def operator_norm(model: nn.Module) -> Tensor:
    r"""Exact :math:`\|I - W\|_2`, differentiable in the parameters: the largest singular value
    over the blocks of the layer's ``block_structure()``, in the parameters' dtype.

    Args:
        model: a classifier, a :class:`~mondeq.layer.MonDEQ`, or a parametrisation.

    Raises:
        StructureTooLargeError: a layer without its own block structure, too large to probe (use
            :class:`OperatorNormPenalty`'s power iteration).
    """
    with torch.enable_grad():
        return _parametrisation(model).block_structure().operator_norm()


def _exact_is_cheap(linear: MonotoneParametrisation) -> bool:
    """Whether the exact norm's SVD is within :data:`EXACT_COST_LIMIT` (and the structure exists)."""
    try:
        with torch.no_grad():
            structure = linear.block_structure()
    except StructureTooLargeError:
        return False
    return structure.blocks * structure.size ** 3 <= EXACT_COST_LIMIT


class OperatorNormPenalty:
    r""":math:`\lambda\,\|I - W\|_2` of a model's layer, differentiable (module docstring).

    Call it with no argument before each optimizer step and add the result to the loss.

    Args:
        model: the classifier (or its layer, or the parametrisation); its parameters are read at
            every call.
        weight: λ ≥ 0.
        iterations: power steps per call; 0 (default) uses the exact norm where its blocks are
            small (:data:`EXACT_COST_LIMIT`: dense, conv, small multi-tier layers) and 2 power
            steps otherwise.

    Raises:
        InvalidSettingError: a negative or non-finite ``weight``, or negative ``iterations``.
    """

    def __init__(self, model: nn.Module, weight: float, *, iterations: int = 0) -> None:
        if isinstance(weight, bool) or not 0 <= weight < float("inf"):
            raise InvalidSettingError(f"operator penalty weight must be ≥ 0 and finite, got {weight}")
        if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 0:
            raise InvalidSettingError(f"power iterations must be an integer ≥ 0, got {iterations}")
        self.linear = _parametrisation(model)
        self.weight = float(weight)
        self.iterations = int(iterations) if iterations or _exact_is_cheap(self.linear) else 2
        self.v: State | None = None  # the power vector, a unit state of batch 1

    @property
    def exact(self) -> bool:
        """Whether :meth:`norm` is the exact norm (no power iteration)."""
        return self.iterations == 0

    def __call__(self) -> Tensor:
        """λ‖I − W‖₂ as a 0-d tensor with a graph to the layer's parameters."""
        return self.weight * self.norm()

    def norm(self) -> Tensor:
        r""":math:`\|I - W\|_2` (exact) or its power-iteration estimate :math:`\|(I - W)v\|`,
        with a graph; computed outside any autocast region, in the parameters' dtype."""
        p = next(self.linear.parameters())
        with torch.autocast(p.device.type, enabled=False):
            if self.exact:
                return operator_norm(self.linear)
            op = self.linear.operator()
            v = self._start(op) if self.v is None else tuple(t.to(p.device, p.dtype) for t in self.v)
            with torch.no_grad():
                for _ in range(self.iterations):  # v ← (I − W)ᵀ(I − W)v, normalised
                    u = _minus(op.mv(v), v)
                    v = _unit(_minus(op.rmv(u), u))
            self.v = v
            return _state_norm(_minus(op.mv(v), v))

    def _start(self, op) -> State:
        generator = torch.Generator().manual_seed(0)
        v = tuple(torch.randn(1, *s, generator=generator, dtype=torch.float64) for s in op.state_shape)
        return tuple(t.to(op.device, op.dtype) for t in _unit(v))

    def state_dict(self) -> dict:
        """The power vector (``None`` before the first call, and always for the exact norm)."""
        return {"v": None if self.v is None else [t.detach().clone() for t in self.v]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (moved to the layer's device and dtype at the next call)."""
        self.v = None if state.get("v") is None else tuple(state["v"])


def _minus(wz: State, z: State) -> State:
    """(I − W)z from Wz and z."""
    return tuple(a - b for b, a in zip(wz, z))


def _state_norm(z: State) -> Tensor:
    return torch.sqrt(sum(t.square().sum() for t in z))


def _unit(z: State) -> State:
    n = _state_norm(z).clamp(min=torch.finfo(z[0].dtype).tiny)
    return tuple(t / n for t in z)


def operator_norm_bound(model: nn.Module) -> float:
    r"""The layer's upper bound on :math:`\|I - W\|_2` (``operator().lipschitz()``: exact for dense
    and conv, exact or a block bound for multi-tier; the family's own, used by the solvers), cached until a parameter changes; the figure
    a run logs as ``operator_norm``."""
    linear = _parametrisation(model)
    return float(linear.cached("operator_lipschitz", lambda: linear.operator().lipschitz()))


def make_operator_penalty(model: nn.Module, weight: float, *,
                          iterations: int = 0) -> OperatorNormPenalty | None:
    """:class:`OperatorNormPenalty` for ``weight`` > 0, ``None`` for 0 (no penalty, no state)."""
    return OperatorNormPenalty(model, weight, iterations=iterations) if weight else None
