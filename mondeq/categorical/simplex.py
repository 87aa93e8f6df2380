r"""The simplex-entropy prox: mean-field's softmax as a proximal operator, for every step α.

On the probability simplex :math:`\Delta_k` let

.. math:: f(q) = \sum_i q_i \log q_i - \tfrac12\|q\|^2 + \iota_{\Delta_k}(q),

convex because its Hessian :math:`\mathrm{diag}(1/q) - I \succeq 0` on :math:`q \le 1`. Then
:math:`\mathrm{prox}_f = \mathrm{softmax}` (the stationarity condition
:math:`\log q + 1 - q + q - v + \nu = 0` gives :math:`q \propto e^v`), and for :math:`\alpha \in (0, 1)`
:math:`q = \mathrm{prox}_{\alpha f}(v)` solves, entry by entry,

.. math:: (1 - \alpha) q_i + \alpha \log q_i = v_i - \nu,\qquad \textstyle\sum_i q_i = 1

(constants absorbed into ν; each :math:`q_i` is a Lambert-W expression in :math:`v_i - \nu`). We solve
it in log space, :math:`x_i = \log q_i`: the map :math:`h(x) = (1 - \alpha)e^x + \alpha x - c` is
convex and increasing, so Newton from an upper bound of the root decreases monotonically onto it
(never overshooting, never overflowing). The outer equation :math:`\phi(\nu) = \sum_i q_i(\nu) - 1`
is convex and decreasing in ν (:math:`dq_i/dc = g_i > 0` increases with :math:`q_i`), so Newton
from the lower bound :math:`\nu_0 = \max v - (1 - \alpha)` (where the largest :math:`q_i = 1`) is
monotone too; each outer step lowers every :math:`c_i`, so the last inner root is a valid upper
bound and warm-starts the next inner solve.

Differentiating the optimality conditions gives the closed-form Jacobian

.. math:: \frac{\partial q}{\partial v} = \mathrm{diag}(g) - \frac{g g^\top}{\mathbf 1^\top g},\qquad
          g_i = \frac{q_i}{\alpha + (1 - \alpha) q_i} \in [0, 1],

symmetric, positive semidefinite, eigenvalues in [0, 1]; α = 1 gives softmax's
:math:`\mathrm{diag}(q) - qq^\top`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidSettingError


def check_step(alpha: float) -> float:
    """Validate a prox step α ∈ (0, 1] and return it as a float."""
    if isinstance(alpha, bool) or not 0.0 < alpha <= 1.0:
        raise InvalidSettingError(f"the simplex-entropy prox needs a step alpha in (0, 1], got {alpha}; "
                                  f"use a splitting step alpha <= 1 (PR and DR converge for any alpha > 0)")
    return float(alpha)


def simplex_prox(v: Tensor, alpha: float = 1.0, *, dim: int = -1, max_iter: int = 100) -> Tensor:
    r""":math:`\mathrm{prox}_{\alpha f}(v)` along ``dim`` (softmax for α = 1), module docstring.

    Args:
        v: any shape; every slice along ``dim`` is one categorical variable.
        alpha: the step, in (0, 1].
        dim: the category dimension.
        max_iter: cap on the outer (and each inner) Newton iteration.

    Returns:
        a tensor like ``v`` whose slices along ``dim`` lie on the simplex (sum exactly ~1).
    """
    alpha = check_step(alpha)
    if alpha == 1.0:
        return torch.softmax(v, dim=dim)
    v = v.movedim(dim, -1)
    c0 = v - v.amax(dim=-1, keepdim=True)  # prox is invariant to adding a constant along dim
    eps = torch.finfo(v.dtype).eps
    k = v.shape[-1]
    beta = 1.0 - alpha
    nu = torch.full_like(c0[..., :1], -beta)  # lower bound of the root: the largest q is 1 there
    x = _upper_bound(c0 - nu, alpha)
    for _ in range(max_iter):
        x = _log_root(c0 - nu, alpha, x, max_iter)
        q = torch.exp(x)
        phi = q.sum(dim=-1, keepdim=True) - 1.0
        g = q / (alpha + beta * q)
        step = phi / g.sum(dim=-1, keepdim=True)
        nu = nu + step
        if bool((phi.abs() <= 4 * k * eps).all()):
            break
    x = _log_root(c0 - nu, alpha, x, max_iter)
    q = torch.exp(x)
    return (q / q.sum(dim=-1, keepdim=True)).movedim(-1, dim)


def _upper_bound(c: Tensor, alpha: float) -> Tensor:
    r"""An upper bound of the root of :math:`(1-\alpha)e^x + \alpha x = c`: :math:`c/\alpha` (where
    the exponential term is ≥ 0), and :math:`\log(\max(c, 1-\alpha)/(1-\alpha)) \ge 0` (where the
    exponential term alone reaches c, or x = 0 overshoots when c < 1 − α)."""
    beta = 1.0 - alpha
    return torch.minimum(c / alpha, torch.log(torch.clamp(c, min=beta) / beta))


def _log_root(c: Tensor, alpha: float, x: Tensor, max_iter: int) -> Tensor:
    """Newton on the convex increasing h(x) = (1 − α)eˣ + αx − c from an upper bound ``x``."""
    beta = 1.0 - alpha
    eps = torch.finfo(c.dtype).eps
    for _ in range(max_iter):
        e = torch.exp(x)
        h = beta * e + alpha * x - c
        dx = h / (beta * e + alpha)
        x = x - dx
        if bool((dx.abs() <= 4 * eps * (1.0 + x.abs())).all()):
            break
    return x


def jacobian_weights(q: Tensor, alpha: float = 1.0) -> Tensor:
    r""":math:`g = q / (\alpha + (1 - \alpha) q)`: the Jacobian of :math:`\mathrm{prox}_{\alpha f}`
    is :math:`\mathrm{diag}(g) - gg^\top / \mathbf 1^\top g` at the output ``q``."""
    return q / (alpha + (1.0 - alpha) * q)


def jacobian_apply(g: Tensor, r: Tensor, *, dim: int = -1) -> Tensor:
    r""":math:`(\mathrm{diag}(g) - gg^\top/\mathbf 1^\top g)\, r` along ``dim`` (symmetric, so also
    the transposed product)."""
    gr = (g * r).sum(dim=dim, keepdim=True)
    return g * r - g * gr / g.sum(dim=dim, keepdim=True)


def linearised_prox(g: Tensor, r: Tensor, beta: float = 1.0, *, dim: int = -1) -> Tensor:
    r"""The prox of the backward problem's monotone part at step β: :math:`J(\beta I + (1-\beta)J)^{-1}r`.

    With the (symmetric, PSD, eigenvalues in [0, 1]) Jacobian :math:`J = \mathrm{diag}(g) -
    gg^\top/s`, :math:`s = \mathbf 1^\top g`, the backward inclusion
    :math:`0 \in (I - W^\top)u - \bar g + Du` has :math:`D = J^{+} - I` on the range of J (∞ off it),
    whose prox is :math:`\lambda \mapsto \lambda / (\beta + (1 - \beta)\lambda)` on J's eigenvalues
    (the elementwise :class:`~splitting.prox.DiagonalQuadratic` formula, per block). The inner
    solve is Sherman-Morrison on the diagonal-plus-rank-one
    :math:`\beta I + (1-\beta)J = \mathrm{diag}(d) - (1-\beta)gg^\top/s`, :math:`d = \beta + (1-\beta)g`.
    """
    if beta == 1.0:
        return jacobian_apply(g, r, dim=dim)
    s = g.sum(dim=dim, keepdim=True)
    d = beta + (1.0 - beta) * g
    gd = g / d
    rd = r / d
    coef = (1.0 - beta) / s
    denom = 1.0 - coef * (g * gd).sum(dim=dim, keepdim=True)
    y = rd + gd * (coef * (g * rd).sum(dim=dim, keepdim=True) / denom)
    return jacobian_apply(g, y, dim=dim)
