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

Blocks (as :mod:`.joint_groups`; the graph's side in float64): dense, one block; single
convolution, one per frequency with :math:`\hat F_\omega` and :math:`V_\omega = \hat U_\omega D`.

Multi-tier layers certify with the joint bound but are refused here (their alias-group blocks
are built without a graph).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidSettingError
from ..operators.conv import MonotoneConv
from ..operators.dense import MonotoneLinear
from ..operators.fft import half_spectrum_weights, kernel_blocks
from .joint_bound import GAMMA_PAD, joint_spectrum, minimise_gamma_squared, pair_weights, whitened
from .joint_groups import input_scale_vector, state_spectrum
from .lipschitz import head_matrix

__all__ = ["TRAINING_BOUNDS", "check_joint_training", "differentiable_joint_constants", "training_bound"]

TRAINING_BOUNDS = ("auto", "product", "joint")
"""Choices of the training command's ``--certified-bound`` ("auto": :func:`training_bound`)."""


def _has_joint_training(model) -> bool:
    return isinstance(model.layer.linear, (MonotoneLinear, MonotoneConv))


def training_bound(model, requested: str) -> str:
    """The bound a certified-training loss uses: ``requested``, with ``"auto"`` meaning the joint
    bound where :func:`differentiable_joint_constants` has a path (dense, conv) and the product
    bound otherwise (multi-tier)."""
    if requested not in TRAINING_BOUNDS:
        raise InvalidSettingError(f"bound must be one of {TRAINING_BOUNDS}, got {requested!r}")
    if requested != "auto":
        return requested
    return "joint" if _has_joint_training(model) else "product"


def check_joint_training(model) -> None:
    """Raise :class:`~mondeq.errors.InvalidSettingError` unless :func:`differentiable_joint_constants`
    has a path for ``model``'s layer (dense or a single convolution)."""
    if not _has_joint_training(model):
        raise InvalidSettingError(
            f"the joint bound in the training loss is built for dense and convolutional layers, not "
            f"{type(model.layer.linear).__name__}; train with the product bound (certificates can still use the joint one)")


def differentiable_joint_constants(model) -> Tensor:
    r"""The joint constants :math:`\Gamma_{yj}` (pixel scale, scalar multiplier) with the graph to
    F, U and the head, shape (K, K), zero diagonal, in the head's dtype and device.

    Raises:
        InvalidSettingError: the layer is neither dense nor a single convolution.
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
    d = input_scale_vector(model, linear).to(c.device)
    if isinstance(linear, MonotoneLinear):
        f = linear.F.to(torch.float64)
        v = linear.U.weight.to(torch.float64) * d
        a = a[:, 0]  # the one dense block
        quad = _stationary_value(a, c, a @ f.T, a @ v, linear.m, tau)
    else:
        size = linear.size
        f = kernel_blocks(linear.F.to(torch.float64), size)                         # (blocks, C, C)
        v = kernel_blocks(linear.U.weight.to(torch.float64), size) * d.to(f.dtype)  # (blocks, C, r)
        coords = state_spectrum(c, (linear.channels, *size))                         # (pairs, blocks, C)
        fa = torch.einsum("bij,pbj->pbi", f, a)
        va = torch.einsum("bji,pbj->pbi", v.conj(), a)
        weights = half_spectrum_weights(size, f).reshape(-1)
        quad = (_stationary_value(a, coords, fa, va, linear.m, tau) * weights).sum(-1)
    gamma = (quad / tau * (1.0 + GAMMA_PAD)).clamp(min=0).sqrt()
    with torch.no_grad():  # the symmetric placement as a constant tensor (no index_put backward)
        place = torch.zeros(len(rows), k, k, dtype=torch.float64, device=head.device)
        pair = torch.arange(len(rows), device=head.device)
        place[pair, rows, cols] = 1.0
        place[pair, cols, rows] = 1.0
    return torch.einsum("p,pij->ij", gamma, place).to(head.dtype)


def _stationary_value(a: Tensor, c: Tensor, fa: Tensor, va: Tensor, m: float, tau: Tensor) -> Tensor:
    r""":math:`2\,\mathrm{Re}\,a^H c - a^H(S - \tau P)a` with :math:`a^H S a = 2m\|a\|^2 + 2\|Fa\|^2`,
    :math:`a^H P a = \|V^H a\|^2`, summed over the last axis (``fa``, ``va``: :math:`Fa` and
    :math:`V^H a` in the layout of ``a``, pairs first).

    :math:`c^H A^{-1} c = \max_a\, 2\,\mathrm{Re}\,a^H c - a^H A a` for :math:`A \succ 0`, attained at
    :math:`a = A^{-1}c`: with that (detached) ``a`` the value is exact and its first derivatives in
    c and A are those of :math:`c^H A^{-1} c` (:math:`2A^{-1}c` and :math:`-A^{-1}cc^HA^{-1}`), at
    the cost of a few products instead of a differentiated factorisation.
    """
    tau = tau.view(-1, *([1] * (a.ndim - 2)))
    sq = lambda t: (t.abs() ** 2).sum(-1)  # noqa: E731
    return 2 * (a.conj() * c).real.sum(-1) - (2 * m * sq(a) + 2 * sq(fa) - tau * sq(va))
