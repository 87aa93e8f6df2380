r"""The joint margin constants with their graph, for certified training (``bound="joint"``).

The certificate's joint bound (:mod:`.joint_bound`) is, for a margin direction
:math:`c = H_y - H_j`,

.. math:: \Gamma_{yj}^2 = \min_{0 < \tau < 1/\theta_{\max}} \gamma^2(\tau),\qquad
          \gamma^2(\tau) = \frac{c^\top (S - \tau P)^{-1} c}{\tau},

with :math:`S = (I - W) + (I - W)^\top = 2mI + 2F^\top F` (G drops out of the symmetric part)
and :math:`P = (UD)(UD)^\top`. Every τ in the interval gives a valid constant, so the loss takes
the certificate's minimiser :math:`\tau^\star` (found without a graph, :func:`joint_gamma_squared`)
and differentiates :math:`\gamma^2(\tau^\star)` in F, U and the head at fixed :math:`\tau^\star`;
where :math:`\tau^\star` is interior, :math:`\partial\gamma^2/\partial\tau = 0` there, so this is
the gradient of the minimised constant itself (envelope theorem). The value is the certificate's
scalar-multiplier constant (up to its rounding pad); the loss uses :math:`\min(\Gamma_{yj},
K_{yj})` like the certificate.

**No differentiated factorisation.** With :math:`A = S - \tau P \succ 0`,

.. math:: c^\top A^{-1} c = \max_a\ 2a^\top c - a^\top A a,
          \qquad a^\top A a = 2m\|a\|^2 + 2\|Fa\|^2 - \tau\|(UD)^\top a\|^2,

attained at :math:`a = A^{-1}c`. The solve runs without a graph; the right-hand side, evaluated
at that detached :math:`a` with F, U and c carrying the graph, has the exact value and the exact
first derivatives (:math:`2A^{-1}c` in c, :math:`-A^{-1}cc^\top A^{-1}` in A), for a few matrix
products instead of a differentiated Cholesky factorisation (a training step at 256 hidden units
took 0.6 s with the latter, 0.15 s with this). Second derivatives of the loss are not those of the bound.

Blocks (as :mod:`.joint_groups`, here in float64):

* dense: one block, :math:`A` factorised per pair (n × n);
* single convolution: per frequency :math:`S_\omega = 2mI + 2\hat F_\omega^H\hat F_\omega` and
  :math:`P_\omega = V_\omega V_\omega^H` with :math:`V_\omega = \hat U_\omega D` of rank
  :math:`C_{in}` (1 on MNIST); :math:`A_\omega^{-1}c` by Woodbury with one Cholesky factor of
  :math:`S_\omega` shared by every pair.

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
from .joint_bound import GAMMA_PAD, joint_gamma_squared, joint_spectrum
from .joint_groups import input_scale_vector, state_spectrum
from .lipschitz import head_matrix

__all__ = ["TRAINING_BOUNDS", "check_joint_training", "differentiable_joint_constants", "training_bound"]

TRAINING_BOUNDS = ("auto", "product", "joint")
"""Choices of the training command's ``--certified-bound`` ("auto": :func:`training_bound`)."""


def training_bound(model, requested: str) -> str:
    """The bound a certified-training loss uses: ``requested``, with ``"auto"`` meaning the joint
    bound where :func:`differentiable_joint_constants` has a path (dense, conv) and the product
    bound otherwise (multi-tier)."""
    if requested not in TRAINING_BOUNDS:
        raise InvalidSettingError(f"bound must be one of {TRAINING_BOUNDS}, got {requested!r}")
    if requested != "auto":
        return requested
    return "joint" if isinstance(model.layer.linear, (MonotoneLinear, MonotoneConv)) else "product"


def check_joint_training(model) -> None:
    """Raise :class:`~mondeq.errors.InvalidSettingError` unless :func:`differentiable_joint_constants`
    has a path for ``model``'s layer (dense or a single convolution)."""
    linear = model.layer.linear
    if not isinstance(linear, (MonotoneLinear, MonotoneConv)):
        raise InvalidSettingError(
            f"the joint bound in the training loss is built for dense and convolutional layers, not "
            f"{type(linear).__name__}; train with the product bound (certificates can still use the joint one)")


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
    with torch.no_grad():  # τ*: the certificate's minimiser, from its own float64 blocks
        _, tau = joint_gamma_squared(joint_spectrum(model), c.detach().cpu())
    if not bool(torch.isfinite(tau).all()):  # P = 0 (U = 0): no margin depends on x, Γ = 0
        return torch.zeros(k, k, dtype=head.dtype, device=head.device)
    tau = tau.to(c.device)
    d = input_scale_vector(model, linear).to(c.device)
    if isinstance(linear, MonotoneLinear):
        f = linear.F.to(torch.float64)
        v = linear.U.weight.to(torch.float64) * d
        with torch.no_grad():
            eye = torch.eye(f.shape[0], dtype=torch.float64, device=f.device)
            s = 2 * linear.m * eye + 2 * f.T @ f
            a = _direct_solve(s, v @ v.T, c.detach(), tau)
        quad = _stationary_value(a, c, a @ f.T, a @ v, linear.m, tau)
    else:
        size = linear.size
        f = kernel_blocks(linear.F.to(torch.float64), size)                     # (blocks, C, C)
        v = kernel_blocks(linear.U.weight.to(torch.float64), size) * d.to(f.dtype)  # (blocks, C, r)
        coords = state_spectrum(c, (linear.channels, *size))                          # (pairs, blocks, C)
        with torch.no_grad():
            eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
            a = _woodbury_solve(2 * linear.m * eye + 2 * f.mH @ f, v, coords, tau)
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


def _direct_solve(s: Tensor, p: Tensor, c: Tensor, tau: Tensor) -> Tensor:
    r""":math:`(S - \tau P)^{-1} c` per pair (one dense block), ``(pairs, n)``."""
    chol = torch.linalg.cholesky(s - tau.view(-1, 1, 1) * p)
    return torch.cholesky_solve(c.unsqueeze(-1), chol).squeeze(-1)


def _woodbury_solve(s: Tensor, v: Tensor, c: Tensor, tau: Tensor) -> Tensor:
    r""":math:`(S - \tau VV^H)^{-1} c = S^{-1}c + \tau S^{-1}V(I - \tau V^H S^{-1} V)^{-1} V^H S^{-1} c`
    per pair and block, ``(pairs, blocks, d)``.

    Args:
        s: ``(blocks, d, d)`` Hermitian positive definite; v: ``(blocks, d, r)``;
        c: ``(pairs, blocks, d)``; tau: ``(pairs,)`` below every pole.
    """
    chol = torch.linalg.cholesky(s)
    s_inv_v = torch.cholesky_solve(v, chol)                       # (blocks, d, r)
    s_inv_c = torch.cholesky_solve(c.permute(1, 2, 0), chol)      # (blocks, d, pairs)
    y = (v.mH @ s_inv_c).permute(2, 0, 1)                         # (pairs, blocks, r)
    eye = torch.eye(v.shape[-1], dtype=v.dtype, device=v.device)
    inner = eye - tau.view(-1, 1, 1, 1).to(v.dtype) * (v.mH @ s_inv_v)
    z = torch.linalg.solve(inner, y.unsqueeze(-1))                # (pairs, blocks, r, 1)
    return s_inv_c.permute(2, 0, 1) + tau.view(-1, 1, 1) * (s_inv_v @ z).squeeze(-1)
