r"""Smooth and piecewise-linear activations as proximal operators, with exact :math:`\mathrm{prox}_{\alpha f}`.

Every nondecreasing 1-Lipschitz scalar map :math:`\sigma` is the proximal operator of a closed
convex :math:`f`, the one with :math:`\sigma^{-1}(y) = y + f'(y)` on the range of
:math:`\sigma` (:math:`f = +\infty` outside its closure): :math:`\sigma^{-1} - \mathrm{id}` is
then a monotone map, the subdifferential of a convex function (Combettes & Pesquet, "Deep neural
network structures solving variational inequalities", Set-Valued Var. Anal. 28, 2020, Sec. 2,
which lists the convex f of common activations; Winston & Kolter 2020 take σ = prox_f as the
monDEQ's standing assumption). A splitting method with step :math:`\alpha` needs

.. math::
    y = \mathrm{prox}_{\alpha f}(v) \iff y + \alpha f'(y) = v
    \iff (1 - \alpha)\, y + \alpha\, \sigma^{-1}(y) = v,

which equals :math:`\sigma(v)` only for :math:`\alpha = 1` (and for indicators, such as hard tanh).

**How the smooth ones are solved.** Substituting :math:`y = \sigma(u)` turns the equation into one
for the pre-image :math:`u`:

.. math:: h(u) = \alpha u + (1 - \alpha)\,\sigma(u) - v = 0,\qquad
          h'(u) = \alpha + (1 - \alpha)\,\sigma'(u) \in [\min(1, \alpha), \max(1, \alpha)],

since :math:`0 \le \sigma' \le 1`. So :math:`h` is increasing with a slope bounded on both sides
for every :math:`\alpha > 0`, on all of :math:`\mathbb R`, however saturated :math:`\sigma` is
(in :math:`y` the same equation has a slope :math:`1/\sigma'` that blows up where :math:`\sigma`
saturates). The root lies within :math:`|h(u_0)| / \min(1, \alpha)` of any start :math:`u_0`;
safeguarded Newton steps (bisection whenever a step leaves that shrinking bracket) reach it to
machine precision in a handful of steps, elementwise and vectorised, and :math:`y = \sigma(u)`
is evaluated in closed form. The derivative follows by the implicit function theorem:

.. math:: \frac{dy}{dv} = \frac{\sigma'(u)}{\alpha + (1 - \alpha)\,\sigma'(u)} \in [0, 1].
"""
from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from .errors import InvalidSettingError
from .prox import Prox

_NEWTON_CAP = 100    # bisection alone would be done by then: the start bracket halves every step
_CHECK_EVERY = 4     # steps between convergence checks (each one is a host read on CUDA)


class ScalarProx(Prox):
    r"""A smooth activation :math:`\sigma` (nondecreasing, :math:`0 \le \sigma' \le 1`) as
    :math:`\mathrm{prox}_f`; :math:`\mathrm{prox}_{\alpha f}` by safeguarded Newton on the
    pre-image (module docstring). Subclasses give :meth:`sigma` and :meth:`sigma_prime`."""

    @abstractmethod
    def sigma(self, u: Tensor) -> Tensor:
        """The activation σ(u), accurate over all of ℝ (saturated tails included)."""

    @abstractmethod
    def sigma_prime(self, u: Tensor) -> Tensor:
        """σ′(u) ∈ [0, 1]."""

    def prox(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        if alpha == 1.0:
            return self.sigma(v)
        with torch.no_grad():
            u = self.preimage(v.detach(), alpha)
            y = self.sigma(u)
        if not v.requires_grad:
            return y
        # the value of the root with its exact first derivative dy/dv attached
        slope = self._slope(u, alpha)
        return y + slope * (v - v.detach())

    def derivative(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        if alpha == 1.0:
            return self.sigma_prime(v)
        with torch.no_grad():
            return self._slope(self.preimage(v, alpha), alpha)

    def _slope(self, u: Tensor, alpha: float) -> Tensor:
        s = self.sigma_prime(u)
        return s / (alpha + (1.0 - alpha) * s)

    def preimage(self, v: Tensor, alpha: float) -> Tensor:
        r"""The root :math:`u` of :math:`\alpha u + (1 - \alpha)\sigma(u) = v`, elementwise
        (so that :math:`\mathrm{prox}_{\alpha f}(v) = \sigma(u)`); non-finite entries of ``v``
        are returned as they are (σ of them is then the limit, or NaN)."""
        finite = torch.isfinite(v)
        w = torch.where(finite, v, 0.0)
        beta = 1.0 - alpha

        def h(u: Tensor) -> Tensor:
            return alpha * u + beta * self.sigma(u) - w

        # rounding in h: below this |h| carries no information about the root (a few ulps of
        # its largest term); stopping there is machine precision, not a tolerance
        noise_scale = 4 * torch.finfo(v.dtype).eps

        # two starts, each exact in a regime: σ(u) ≈ u (u = v) and σ flat (one fixed-point step)
        start_a, start_b = w, (w - beta * self.sigma(w)) / alpha
        h_a, h_b = h(start_a), h(start_b)
        pick = h_a.abs() <= h_b.abs()
        u, hu = torch.where(pick, start_a, start_b), torch.where(pick, h_a, h_b)
        eps = torch.finfo(v.dtype).eps
        # |h′| ≥ min(1, α): the root is within |h(u)|/min(1, α); padded for rounding in h
        radius = hu.abs() / min(1.0, alpha) * (1 + 1e-6) + 4 * eps * (1 + u.abs())
        lo, hi = u - radius, u + radius
        for k in range(1, _NEWTON_CAP + 1):
            lo = torch.where(hu < 0, u, lo)
            hi = torch.where(hu > 0, u, hi)
            newton = u - hu / (alpha + beta * self.sigma_prime(u))
            inside = (newton > lo) & (newton < hi)
            new = torch.where(inside, newton, 0.5 * (lo + hi))
            scale = torch.clamp(u.abs(), min=1.0)
            small = ((new - u).abs() <= 2 * eps * scale) | (hi - lo <= 2 * eps * scale)
            settled = hu.abs() <= noise_scale * (alpha * u.abs() + abs(beta) * self.sigma(u).abs() + w.abs())
            done = small | settled
            u = torch.where(settled, u, new)
            hu = h(u)
            if k % _CHECK_EVERY == 0 and bool(done.all()):
                break
        # one last Newton step: the stop above is a few ulps of h's largest term, this one is
        # at rounding level of the root itself (quadratic convergence)
        newton = u - hu / (alpha + beta * self.sigma_prime(u))
        u = torch.where((newton >= lo) & (newton <= hi), newton, u)
        return torch.where(finite, u, v)


class Tanh(ScalarProx):
    r"""tanh as a proximal operator: :math:`\tanh = \mathrm{prox}_f` with

    .. math:: f(y) = y\,\mathrm{artanh}(y) + \tfrac12 \log(1 - y^2) - \tfrac12 y^2,\quad |y| < 1

    (:math:`+\infty` outside :math:`[-1, 1]`, finite limits at :math:`\pm 1`), so
    :math:`f'(y) = \mathrm{artanh}(y) - y`. ``prox(v, alpha)`` solves
    :math:`(1 - \alpha)y + \alpha\,\mathrm{artanh}(y) = v`.
    """

    def sigma(self, u: Tensor) -> Tensor:
        return torch.tanh(u)

    def sigma_prime(self, u: Tensor) -> Tensor:
        return torch.cosh(u).pow(-2)  # sech²: no cancellation in 1 − tanh² where tanh ≈ ±1

    def __repr__(self) -> str:
        return "Tanh()"


class Sigmoid(ScalarProx):
    r"""The logistic sigmoid :math:`\sigma(v) = 1 / (1 + e^{-g v})` with gain :math:`0 < g \le 4`.

    Its slope is at most :math:`g/4`, so it is 1-Lipschitz exactly when :math:`g \le 4`. The
    default :math:`g = 1` is ``torch.sigmoid`` (``nn.Sigmoid``) itself, already 1-Lipschitz;
    :math:`g = 4` is the steepest sigmoid that is a prox (slope 1 at 0). It is
    :math:`\mathrm{prox}_f` of

    .. math:: f(y) = \tfrac1g\big(y \log y + (1 - y)\log(1 - y)\big) - \tfrac12 y^2,\quad 0 < y < 1

    (:math:`+\infty` outside :math:`[0, 1]`), so :math:`f'(y) = \mathrm{logit}(y)/g - y`, convex
    because :math:`f'' = 1/(g\,y(1 - y)) - 1 \ge 4/g - 1 \ge 0`.
    """

    def __init__(self, gain: float = 1.0) -> None:
        if isinstance(gain, bool) or not 0 < gain <= 4:
            raise InvalidSettingError(
                f"sigmoid gain must be in (0, 4], got {gain}: sigmoid(gain·v) has slope gain/4 "
                f"at 0, and only a 1-Lipschitz activation is the prox of a convex function")
        self.gain = float(gain)

    def sigma(self, u: Tensor) -> Tensor:
        return torch.sigmoid(self.gain * u)

    def sigma_prime(self, u: Tensor) -> Tensor:
        s = torch.sigmoid(self.gain * u)
        return self.gain * s * torch.sigmoid(-self.gain * u)  # s(1 − s) without cancellation

    def __repr__(self) -> str:
        return f"Sigmoid(gain={self.gain:g})"


class Softplus(ScalarProx):
    r"""Softplus :math:`\sigma(v) = \tfrac1\beta \log(1 + e^{\beta v})`, :math:`\beta > 0`.

    It is :math:`\mathrm{prox}_f` of the dilogarithm

    .. math:: f(y) = \tfrac1\beta\,\mathrm{Li}_2\!\big(e^{-\beta y}\big),\quad y \ge 0

    (:math:`+\infty` for :math:`y < 0`), since :math:`\sigma^{-1}(y) = y + \tfrac1\beta\log(1 -
    e^{-\beta y})`, i.e. :math:`f'(y) = \tfrac1\beta\log(1 - e^{-\beta y})`. Evaluated as
    :math:`\max(v, 0) + \tfrac1\beta\log(1 + e^{-\beta|v|})` for every v: unlike
    ``nn.Softplus`` there is no linear cut-off above a threshold (which is off by up to
    :math:`e^{-20}`).
    """

    def __init__(self, beta: float = 1.0) -> None:
        if isinstance(beta, bool) or not 0 < beta < float("inf"):
            raise InvalidSettingError(f"softplus beta must be > 0 and finite, got {beta}")
        self.beta = float(beta)

    def sigma(self, u: Tensor) -> Tensor:
        bu = self.beta * u
        return (torch.clamp(bu, min=0) + torch.log1p(torch.exp(-bu.abs()))) / self.beta

    def sigma_prime(self, u: Tensor) -> Tensor:
        return torch.sigmoid(self.beta * u)

    def __repr__(self) -> str:
        return f"Softplus(beta={self.beta:g})"


class LeakyReLU(Prox):
    r"""Leaky ReLU :math:`\sigma(v) = \max(v, s v)` with slope :math:`0 \le s \le 1`.

    It is :math:`\mathrm{prox}_f` of :math:`f(y) = \tfrac12(1/s - 1)\min(y, 0)^2` (the indicator
    of :math:`y \ge 0` for :math:`s = 0`, ReLU), and in closed form

    .. math:: \mathrm{prox}_{\alpha f}(v) = v \ (v \ge 0),\qquad
              \frac{s\,v}{s + \alpha(1 - s)} \ (v < 0).
    """

    def __init__(self, slope: float = 0.01) -> None:
        if isinstance(slope, bool) or not 0 <= slope <= 1:
            raise InvalidSettingError(
                f"leaky ReLU slope must be in [0, 1], got {slope}: a slope above 1 or below 0 is "
                f"not a nondecreasing 1-Lipschitz map, so not the prox of a convex function")
        self.slope = float(slope)

    def _negative_scale(self, alpha: float) -> float:
        s = self.slope
        return s / (s + alpha * (1.0 - s)) if s > 0 else 0.0

    def prox(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        return torch.where(v >= 0, v, self._negative_scale(alpha) * v)

    def derivative(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        one = torch.ones_like(v)
        return torch.where(v > 0, one, self._negative_scale(alpha) * one)

    def __repr__(self) -> str:
        return f"LeakyReLU(slope={self.slope:g})"


class HardTanh(Prox):
    r"""Hard tanh :math:`\sigma(v) = \min(\max(v, a), b)`: the projection onto :math:`[a, b]`.

    It is :math:`\mathrm{prox}_f` of the indicator :math:`f = \iota_{[a, b]}`, so
    :math:`\mathrm{prox}_{\alpha f} = \sigma` for every α (like ReLU).
    """

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0) -> None:
        if not -float("inf") < min_val < max_val < float("inf"):
            raise InvalidSettingError(f"hard tanh needs finite min_val < max_val, got {min_val}, {max_val}")
        self.min_val, self.max_val = float(min_val), float(max_val)

    def prox(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        return torch.clamp(v, self.min_val, self.max_val)

    def derivative(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        return ((v > self.min_val) & (v < self.max_val)).to(v.dtype)

    def __repr__(self) -> str:
        return f"HardTanh(min_val={self.min_val:g}, max_val={self.max_val:g})"
