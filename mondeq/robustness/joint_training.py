r"""The joint margin constants with their graph, for certified training (``bound="joint"``).

The certificate's joint bound (:mod:`.joint_bound`) is, for a margin direction
:math:`c = H_y - H_j`,

.. math:: \Gamma_{yj}^2 = \min_{0 < \tau < 1/\theta_{\max}} \gamma^2(\tau),\qquad
          \gamma^2(\tau) = \frac{c^\top (S - \tau P)^{-1} c}{\tau},

with :math:`S = (I - W) + (I - W)^\top = 2mI + 2F^\top F` (G drops out of the symmetric part)
and :math:`P = (UD)(UD)^\top`. Every τ in the interval gives a valid constant, so the loss takes
the certificate's minimiser :math:`\tau^\star` (found without a graph, :func:`~.joint_bound.minimise_gamma_squared`)
and differentiates :math:`\gamma^2(\tau^\star)` in F, U and the head at fixed :math:`\tau^\star`;
where :math:`\tau^\star` is interior, :math:`\partial\gamma^2/\partial\tau = 0` there, so this is
the gradient of the minimised constant itself (envelope theorem). The value is the certificate's
scalar-multiplier constant (up to its rounding pad); the loss uses :math:`\min(\Gamma_{yj},
K_{yj})` like the certificate.

**No differentiated factorisation.** With :math:`A = S - \tau P \succ 0`,

.. math:: c^\top A^{-1} c = \max_a\ 2a^\top c - a^\top A a,
          \qquad a^\top A a = 2m\|a\|^2 + 2\|Fa\|^2 - \tau\|(UD)^\top a\|^2,

attained at :math:`a = A^{-1}c`. The solve runs without a graph, from the certificate's own
spectrum (:class:`~.joint_bound.JointSpectrum`, computed anyway for τ*): with
:math:`S = LL^H`, :math:`L^{-1}PL^{-H} = V\Theta V^H`, :math:`A^{-1} = L^{-H}V(I - \tau\Theta)^{-1}V^HL^{-1}`,
so no second factorisation is made. The right-hand side, evaluated
at that detached :math:`a` with F, U and c carrying the graph, has the exact value and the exact
first derivatives (:math:`2A^{-1}c` in c, :math:`-A^{-1}cc^\top A^{-1}` in A), for a few matrix
products instead of a differentiated Cholesky factorisation (a training step at 256 hidden units
took 0.6 s with the latter, 0.15 s with this). Second derivatives of the loss are not those of the bound.

Blocks: the layer's :meth:`~mondeq.parametrisation.MonotoneParametrisation.block_structure`,
the certificate's (:mod:`mondeq.operators.structure`), here with its graph in float64 (from
float64 casts of the parameters): :math:`a^HSa = 2m\|a\|^2 + 2\|Fa\|^2` per block from the factor
F where the family gives one (no :math:`F^HF` is formed), :math:`2\,\mathrm{Re}\,a^HXa` from the
blocks of I − W otherwise, and :math:`a^HPa = \|V^Ha\|^2`. Every family has it: dense, conv,
multi-tier, and any parametrisation small enough for the probed fallback.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidSettingError
from ..operators.structure import structure_available, structure_in_dtype
from .joint_bound import GAMMA_PAD, joint_spectrum, minimise_gamma_squared, pair_weights, whitened
from .lipschitz import head_matrix, input_scale

__all__ = ["TRAINING_BOUNDS", "check_joint_training", "differentiable_joint_constants", "training_bound"]

TRAINING_BOUNDS = ("auto", "product", "joint")
"""Choices of the training command's ``--certified-bound`` ("auto": :func:`training_bound`)."""


def training_bound(model, requested: str) -> str:
    """The bound a certified-training loss uses: ``requested``, with ``"auto"`` meaning the joint
    bound wherever the layer has a block structure (every family; a layer relying on the probed
    fallback only up to its size limit) and the product bound otherwise."""
    if requested not in TRAINING_BOUNDS:
        raise InvalidSettingError(f"bound must be one of {TRAINING_BOUNDS}, got {requested!r}")
    if requested != "auto":
        return requested
    return "joint" if structure_available(model.layer.linear) else "product"


def check_joint_training(model) -> None:
    """Raise :class:`~mondeq.errors.StructureTooLargeError` (an
    :class:`~mondeq.errors.InvalidSettingError`) when ``model``'s layer has no block structure
    of its own and is too large for the probed fallback (train with the product bound then)."""
    structure_available(model.layer.linear, raise_error=True)


def differentiable_joint_constants(model) -> Tensor:
    r"""The joint constants :math:`\Gamma_{yj}` (pixel scale, scalar multiplier) with the graph to
    the layer's parameters (F and U; not G, which the symmetric part drops) and the head, shape
    (K, K), zero diagonal, in the head's dtype and device.

    Raises:
        StructureTooLargeError: the layer has no block structure and is too large to probe.
    """
    check_joint_training(model)
    linear = model.layer.linear
    head = head_matrix(model)
    k = head.shape[0]
    rows, cols = torch.triu_indices(k, k, offset=1, device=head.device)
    c = (head[rows] - head[cols]).to(torch.float64)
    with torch.no_grad():  # τ* and a = A⁻¹c from the certificate's own float64 spectrum
        spectrum = joint_spectrum(model)
        b = whitened(spectrum, c.detach().cpu())
        theta = spectrum.theta.reshape(1, -1)
        _, tau = minimise_gamma_squared(pair_weights(spectrum, b), theta)
        if not bool(torch.isfinite(tau).all()):  # P = 0 (U = 0): no margin depends on x, Γ = 0
            return torch.zeros(k, k, dtype=head.dtype, device=head.device)
        # A = L(I − τΘ')Lᴴ in each block's whitened basis: A⁻¹c = whitenᴴ (1 − τθ)⁻¹ b
        scaled = b / (1 - tau.view(-1, 1, 1) * spectrum.theta.to(b.dtype))
        a = torch.einsum("gji,pgj->pgi", spectrum.whiten.to(b.dtype).conj(), scaled).to(c.device)
    tau = tau.to(c.device)
    structure = structure_in_dtype(linear, torch.float64, input_scale=input_scale(model))
    coords = structure.to_blocks(c).to(a.dtype)                                   # (pairs, blocks, d)
    value = _stationary_value(a, coords, structure.symmetric_form(a), structure.input_form(a), tau)
    quad = (value * structure.weights.to(value.device, value.dtype)).sum(-1)
    gamma = (quad / tau * (1.0 + GAMMA_PAD)).clamp(min=0).sqrt()
    with torch.no_grad():  # the symmetric placement as a constant tensor (no index_put backward)
        place = torch.zeros(len(rows), k, k, dtype=torch.float64, device=head.device)
        pair = torch.arange(len(rows), device=head.device)
        place[pair, rows, cols] = 1.0
        place[pair, cols, rows] = 1.0
    return torch.einsum("p,pij->ij", gamma, place).to(head.dtype)


def _stationary_value(a: Tensor, c: Tensor, a_s_a: Tensor, a_p_a: Tensor, tau: Tensor) -> Tensor:
    r""":math:`2\,\mathrm{Re}\,a^H c - a^H(S - \tau P)a` per block, from :math:`a^HSa` and
    :math:`a^HPa` (``(pairs, blocks)``; ``a``, ``c``: ``(pairs, blocks, d)``).

    :math:`c^H A^{-1} c = \max_a\, 2\,\mathrm{Re}\,a^H c - a^H A a` for :math:`A \succ 0`, attained at
    :math:`a = A^{-1}c`: with that (detached) ``a`` the value is exact and its first derivatives in
    c and A are those of :math:`c^H A^{-1} c` (:math:`2A^{-1}c` and :math:`-A^{-1}cc^HA^{-1}`), at
    the cost of a few products instead of a differentiated factorisation.
    """
    return 2 * (a.conj() * c).real.sum(-1) - (a_s_a - tau.view(-1, 1) * a_p_a)
