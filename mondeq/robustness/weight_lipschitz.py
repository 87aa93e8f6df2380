r"""How far the equilibrium moves when the weights move (Pabbaraju, Winston & Kolter, ICLR 2021:
a monDEQ is Lipschitz in its weights as well as in its input, with constants over m).

Let :math:`\theta = (W, U, b)` and :math:`\theta' = (W', U', b')` be two monDEQs with the same
:math:`\sigma = \mathrm{prox}_f` (any closed convex f), margins :math:`m, m'` (the symmetric part of
:math:`I - W` is :math:`\succeq mI`), and equilibria :math:`z = z^\star(\theta; x)`,
:math:`z' = z^\star(\theta'; x)`, with :math:`c = Ux + b`, :math:`c' = U'x + b'`:

.. math:: c - (I - W)z \in \partial f(z), \qquad c' - (I - W')z' \in \partial f(z').

**Bound.** ∂f is monotone, so the two subgradients, paired with :math:`z - z'`, give
:math:`\langle c - c' - (I - W)z + (I - W')z',\, z - z'\rangle \ge 0`. Write
:math:`(I - W)z - (I - W')z' = (I - W)(z - z') - (W - W')z'`; the monotonicity of the FIRST
network then bounds the left side of

.. math:: m\,\|z - z'\|^2 \le \langle (I - W)(z - z'), z - z'\rangle
          \le \langle (W - W')z' + (U - U')x + (b - b'),\, z - z'\rangle,

and Cauchy–Schwarz gives

.. math:: \|z - z'\| \le \frac{\|W - W'\|_2\,\|z'\| + \|U - U'\|_2\,\|x\| + \|b - b'\|}{m}:

the margin of θ multiplies :math:`z - z'`, so it is :math:`m`, and the weight change acts on the
OTHER network's equilibrium :math:`z'`. Exchanging the roles gives the same with
:math:`m', \|z\|`; both hold, so the smaller is returned.

**The state's norm, a priori.** With :math:`p = \sigma(0)` (elementwise; :math:`-p \in \partial
f(p)` because :math:`p = \mathrm{prox}_f(0)`), the same argument between :math:`z'` and the point
:math:`p` gives :math:`m'\|z' - p\|^2 \le \langle c' + W'p,\, z' - p\rangle`, so

.. math:: \|z'\| \le \|p\| + \frac{\|U'x + b' + W'p\|}{m'}
          \qquad (= \|U'x + b'\|/m' \text{ for ReLU, tanh, … with } \sigma(0) = 0).

No equilibrium is solved: the bound needs two operator norms, one input-map norm and one
application of W. It is attained, e.g., by σ = identity, F = G = 0 and a change of b alone
(:math:`z = (Ux + b)/m`); it is loose by the triangle inequalities otherwise (a random weight
change is poorly aligned with x and z′: measured/bound ≈ 0.05 on a trained MNIST FC model).

**A posteriori.** Given a computed state :math:`\hat z'` of θ′ (any accuracy), stop before the
triangle inequalities: with :math:`\delta' = (1 + L')\|\hat z' - \sigma(W'\hat z' + c')\|/m'
\ge \|\hat z' - z'\|` (the certificate's error bound, :math:`L' \ge \|I - W'\|_2`),

.. math:: \|z - z'\| \le \frac{\|(W - W')\hat z' + (U - U')x + (b - b')\| + \|W - W'\|_2\,\delta'}{m},

sound whatever the solver reached, and several times tighter.

Norms are exact, read from both layers' block structures
(:meth:`~mondeq.parametrisation.MonotoneParametrisation.block_structure`, one basis for one
architecture): :math:`\|W - W'\|_2` and :math:`\|U - U'\|_2` are the largest singular values
over the blocks of :math:`X' - X` and :math:`V - V'` (dense: one block; conv: the frequencies;
multi-tier: the alias groups; any other layer: its probed dense block). All in float64.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from splitting import State
from splitting.state import batch_norm

from ..errors import InvalidSettingError
from ..layer import MonDEQ
from ..operators.structure import float64_structure

__all__ = ["WeightPerturbationBound", "weight_lipschitz_bound"]


@dataclass(frozen=True)
class WeightPerturbationBound:
    r"""A bound on :math:`\|z^\star(\theta; x) - z^\star(\theta'; x)\|` for each sample.

    Attributes:
        bound: shape (batch,), the smaller of the two orientations (module docstring).
        operator_change: :math:`\|W - W'\|_2`.
        input_change: :math:`\|U - U'\|_2` (an upper bound for padded convolutions).
        bias_change: :math:`\|b - b'\|`, over the whole state (a conv bias counts once a pixel).
        state_bounds: shape (2, batch): a priori bounds on :math:`\|z\|` and :math:`\|z'\|`.
        margins: :math:`(m, m')`.
        a_posteriori: shape (batch,), the a posteriori bound when a state was given (``bound``
            is then the smaller of the two), else ``None``.
    """

    bound: Tensor
    operator_change: float
    input_change: float
    bias_change: float
    state_bounds: Tensor
    margins: tuple[float, float]
    a_posteriori: Tensor | None = None


def _layer(model: nn.Module) -> MonDEQ:
    layer = getattr(model, "layer", model)
    if not isinstance(layer, MonDEQ):
        raise InvalidSettingError(f"weight_lipschitz_bound needs MonDEQ layers or classifiers of them, "
                                  f"got {type(model).__name__}")
    return layer


@torch.no_grad()
def weight_lipschitz_bound(model: nn.Module, perturbed: nn.Module, x: Tensor, *,
                           perturbed_state: State | None = None) -> WeightPerturbationBound:
    r"""Bound how far each sample's equilibrium moves between two weight settings (module docstring).

    .. math:: \|z^\star(\theta; x) - z^\star(\theta'; x)\| \le
              \min\Big(\frac{\|W - W'\|_2\,\zeta' + \|U - U'\|_2\|x\| + \|b - b'\|}{m},\
              \frac{\|W - W'\|_2\,\zeta + \|U - U'\|_2\|x\| + \|b - b'\|}{m'}\Big)

    with :math:`\zeta \ge \|z\|`, :math:`\zeta' \ge \|z'\|` the a priori state bounds.

    Args:
        model, perturbed: two :class:`~mondeq.layer.MonDEQ` layers of the same architecture and
            nonlinearity (any family), or classifiers holding them (then ``x`` is in pixel
            scale and goes through the first classifier's input normalisation, which both must
            share: it is not a weight here).
        x: inputs, shape (batch, ...) as the layer (or classifier) takes them.
        perturbed_state: a computed equilibrium state of ``perturbed`` for ``x`` (a tuple, as
            the layer returns it; any accuracy): adds the a posteriori bound.

    Returns:
        The bound per sample and its ingredients, in float64.

    Raises:
        InvalidSettingError: different architectures, shapes or nonlinearities, or a layer
            without its own block structure that is too large to probe
            (:class:`~mondeq.errors.StructureTooLargeError`).
    """
    first, second = _layer(model), _layer(perturbed)
    if repr(first.nonlinearity) != repr(second.nonlinearity):
        raise InvalidSettingError(f"the bound compares two weight settings of ONE network: the "
                                  f"nonlinearities differ ({first.nonlinearity!r} vs {second.nonlinearity!r})")
    if type(first.linear) is not type(second.linear) or any(
            p.shape != q.shape for p, q in zip(first.linear.parameters(), second.linear.parameters())):
        raise InvalidSettingError("the two layers have different architectures or parameter shapes")
    if first is not model:
        norms = [getattr(m, "normalization", None) for m in (model, perturbed)]
        if norms[1] is not None and (norms[0] is None or any(
                not torch.equal(s, t) for s, t in zip(norms[0].state_dict().values(),
                                                     norms[1].state_dict().values()))):
            raise InvalidSettingError("the two classifiers normalise their inputs differently")
        x = model.layer_input(x)
    a, b = (copy.deepcopy(layer.linear).to(torch.float64) for layer in (first, second))
    x = x.to(torch.float64)
    blocks_a, blocks_b = float64_structure(a), float64_structure(b)
    w_change = float(blocks_a.operator_change_norm(blocks_b))  # ‖W − W′‖₂
    u_change = float(blocks_a.input_change_norm(blocks_b))     # ‖U − U′‖₂
    zero = torch.zeros(1, *a.input_shape, dtype=torch.float64, device=x.device)
    bias_a, bias_b = a.bias(zero), b.bias(zero)
    b_change = float(batch_norm(tuple(s - t for s, t in zip(bias_a, bias_b)))[0])
    x_norm = torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)
    sigma = first.nonlinearity
    states = []
    for lin in (a, b):  # ζ ≥ ‖z*‖: ‖p‖ + ‖Ux + b + Wp‖/m with p = σ(0)
        c = lin.bias(x)
        p = tuple(sigma(torch.zeros_like(t[:1])) for t in c)
        wp = lin.operator().mv(p)
        states.append(batch_norm(p)[0] + batch_norm(tuple(ci + wi for ci, wi in zip(c, wp))) / lin.m)
    rest = u_change * x_norm + b_change
    bound = torch.minimum((w_change * states[1] + rest) / a.m, (w_change * states[0] + rest) / b.m)
    after = None
    if perturbed_state is not None:
        z = tuple(t.to(torch.float64) for t in perturbed_state)
        c_a, c_b = a.bias(x), b.bias(x)
        w_a, w_b = a.operator().mv(z), b.operator().mv(z)
        op_b = b.operator()
        error = batch_norm(tuple(t - s for t, s in zip(z, sigma.apply(tuple(u + v for u, v in zip(w_b, c_b))))))
        delta = (1.0 + op_b.lipschitz()) * error / b.m  # ≥ ‖ẑ′ − z′‖
        gap = batch_norm(tuple(ca - cb + wa - wb for ca, cb, wa, wb in zip(c_a, c_b, w_a, w_b)))
        after = (gap + w_change * delta) / a.m
        bound = torch.minimum(bound, after)
    return WeightPerturbationBound(bound=bound, operator_change=w_change, input_change=u_change,
                                   bias_change=b_change, state_bounds=torch.stack(states),
                                   margins=(a.m, b.m), a_posteriori=after)
