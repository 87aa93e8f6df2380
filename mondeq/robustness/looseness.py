r"""How loose the certificate is: Lipschitz ratios actually attained, beside the certified constant.

The certificate bounds every margin :math:`g_{yj}(x) = h_y(x) - h_j(x)` by the constant
:math:`K_{yj} = \|H_y - H_j\|_2\,\|U\|_2/(m\,s)` (pixel scale, :mod:`.lipschitz`):

.. math:: |g_{yj}(a) - g_{yj}(b)| \le K_{yj}\,\|a - b\|_2 \quad\text{for all } a, b .

Any pair of inputs therefore gives a lower bound :math:`\rho = |g(a) - g(b)|/\|a - b\|` on the
true Lipschitz constant of the margin, and :math:`\rho / K_{yj} \le 1` (soundness); how far below 1
the largest ratio found stays says how much radius the bound throws away. Two searches:

* :func:`ascend_lipschitz_ratio`: gradient ascent on :math:`\rho(a, b)` over both points, started
  at :math:`a = x`, :math:`b = x - r\,\nabla g(x)/\|\nabla g(x)\|` (so :math:`\rho \approx
  \|\nabla g(x)\|`, the local gradient norm). With ReLU, :math:`z^\star(x)` is piecewise linear, so
  :math:`\|\nabla g\|` is piecewise constant and has no useful gradient of its own; the pair ratio
  does, and it moves the points into regions of larger gradient while staying an actual pair;
* :func:`pgd_pair_ratio`: the ratio of each PGD attack's pair :math:`(x, x_{adv})` (Madry et al.
  2018), with :math:`j` the class the attack pushed up.

:func:`measure_looseness` adds the gap between PGD-robust accuracy (an upper bound on robust
accuracy) and certified accuracy (a lower bound) per ε. Every ratio is measured on margins of
equilibria re-solved at ``tol``; in float64 at a tight tolerance the solver error is far below
the ratios' digits (the ratios come from actual pairs, never from an estimate).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from ..errors import InvalidSettingError
from ..layer import solver_settings
from .attacks import pgd
from .certification import certify
from .checks import check_labels
from .joint_bound import pairwise_lipschitz
from .lipschitz import margin_lipschitz_matrix

__all__ = ["Looseness", "PairRatio", "ascend_lipschitz_ratio", "binding_class", "margin_of",
           "measure_looseness", "pgd_pair_ratio"]


@dataclass(frozen=True)
class PairRatio:
    r"""Lipschitz ratios of margins attained on actual pairs of inputs (pixel scale).

    Attributes:
        ratio: :math:`|g_{yj}(a) - g_{yj}(b)|/\|a - b\|_2`, shape (batch,).
        constant: the certified :math:`K_{yj}` of the same pair of classes, shape (batch,).
        label: :math:`y`, shape (batch,).
        other: :math:`j`, shape (batch,).
        a, b: the pairs, shape of the inputs.
        gradient_norm: the largest :math:`\|\nabla_x g_{yj}\|` seen at the points visited (a local
            value from the implicit backward pass; ``None`` where not measured), shape (batch,).
    """

    ratio: Tensor
    constant: Tensor
    label: Tensor
    other: Tensor
    a: Tensor
    b: Tensor
    gradient_norm: Tensor | None = None

    @property
    def fraction(self) -> Tensor:
        """``ratio / constant`` (≤ 1 for a sound certificate), shape (batch,)."""
        return self.ratio / self.constant.clamp(min=torch.finfo(self.constant.dtype).tiny)


def margin_of(model: nn.Module, x: Tensor, y: Tensor, j: Tensor) -> Tensor:
    """:math:`h_y(x) - h_j(x)` per example, shape (batch,), with the graph to ``x``."""
    logits = model(x)
    return (logits.gather(1, y[:, None]) - logits.gather(1, j[:, None])).squeeze(1)


def binding_class(logits: Tensor, y: Tensor, margin_lip: Tensor) -> Tensor:
    r"""The class :math:`j \ne y` of smallest :math:`(h_y - h_j)/K_{yj}`: the one that sets the
    certified radius, shape (batch,)."""
    ratio = (logits.gather(1, y[:, None]) - logits) / margin_lip[y].clamp(min=1e-30)
    return ratio.scatter(1, y[:, None], float("inf")).argmin(dim=1)


def _norm(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def _expand(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _constants(model: nn.Module, constants: Tensor | None) -> Tensor:
    """The certified constants ratios are compared with: ``constants`` (e.g. the joint
    :func:`~mondeq.robustness.joint_bound.pairwise_lipschitz`), by default the product K."""
    if constants is not None:
        return constants.detach()
    with torch.no_grad():
        return margin_lipschitz_matrix(model, differentiable=False)


def ascend_lipschitz_ratio(model: nn.Module, x: Tensor, y: Tensor, j: Tensor | None = None, *,
                           steps: int = 20, step_size: float = 0.05, separation: float = 0.05,
                           min_separation: float = 1e-3, bounds: tuple[float, float] | None = (0.0, 1.0),
                           tol: float = 1e-9, max_iter: int = 5000,
                           constants: Tensor | None = None) -> PairRatio:
    r"""Gradient ascent on the pair ratio :math:`\rho(a, b) = |g(a) - g(b)|/\|a - b\|` of the margin
    :math:`g = h_y - h_j`, from :math:`a = x`, :math:`b = x - r\,\nabla g(x)/\|\nabla g(x)\|`.

    Each step moves :math:`a` and :math:`b` by ``step_size`` along their normalised gradients of
    :math:`\rho` (first derivatives only, through the implicit backward pass), keeps them in
    ``bounds`` and at least ``min_separation`` apart, and keeps per example the best pair seen.

    Args:
        model: a :class:`~mondeq.models.MonDEQClassifier` (float64 recommended).
        x: pixel-scale inputs, shape (batch, ...).
        y: labels, shape (batch,).
        j: the other class per example (default: :func:`binding_class` at ``x``).
        steps: ascent steps.
        step_size: ℓ2 length of each point's step (pixel scale).
        separation: r, the initial ‖a − b‖.
        min_separation: the smallest ‖a − b‖ allowed.
        bounds: the valid pixel range, or ``None`` (the certified constant holds on all of ℝᵈ).
        tol, max_iter: every margin is evaluated at equilibria solved to this tolerance.
        constants: the certified (K, K) constants to compare with (default: the product K).

    Returns:
        a :class:`PairRatio` of the best pair per example, with the largest local
        ``gradient_norm`` seen.

    Raises:
        InvalidSettingError: steps < 0, or non-positive step size or separations.
        LabelError: bad labels.
    """
    if steps < 0 or not step_size > 0 or not separation >= min_separation > 0:
        raise InvalidSettingError(f"need steps >= 0, step_size > 0, separation >= min_separation > 0; got "
                                  f"{steps}, {step_size}, {separation}, {min_separation}")
    k = _constants(model, constants)
    y = check_labels(y, len(x), k.shape[0])
    x = x.detach()
    clip = (lambda t: t.clamp(*bounds)) if bounds is not None else (lambda t: t)
    was_training = model.training
    model.eval()
    try:
        with solver_settings(model.layer, tol=tol, max_iter=max_iter):
            if j is None:
                with torch.no_grad():
                    j = binding_class(model(x), y, k.to(x.device, x.dtype))
            a = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(margin_of(model, a, y, j).sum(), a)
            gradient_norm = _norm(grad)
            b = clip(x - separation * grad / _expand(gradient_norm.clamp(min=1e-30), grad)).detach()
            a = a.detach()
            best = _pair(model, a, b, y, j)
            best_a, best_b = a.clone(), b.clone()
            for _ in range(steps):
                a.requires_grad_(True)
                b.requires_grad_(True)
                ga, gb = margin_of(model, a, y, j), margin_of(model, b, y, j)
                ratio = (ga - gb).abs() / _norm(a - b)
                da, db = torch.autograd.grad(ratio.sum(), (a, b))
                with torch.no_grad():
                    a = clip(a + step_size * da / _expand(_norm(da).clamp(min=1e-30), da))
                    b = clip(b + step_size * db / _expand(_norm(db).clamp(min=1e-30), db))
                    gap = b - a
                    short = _norm(gap) < min_separation
                    if short.any():  # push b back out along a − b to the smallest separation
                        unit = gap / _expand(_norm(gap).clamp(min=1e-30), gap)
                        b = torch.where(_expand(short, b), clip(a + min_separation * unit), b)
                a, b = a.detach(), b.detach()
                current = _pair(model, a, b, y, j)
                better = current > best
                best = torch.where(better, current, best)
                best_a = torch.where(_expand(better, a), a, best_a)
                best_b = torch.where(_expand(better, b), b, best_b)
                grad_a = _local_gradient_norm(model, a, y, j)
                gradient_norm = torch.maximum(gradient_norm, grad_a)
    finally:
        model.train(was_training)
    return PairRatio(ratio=best, constant=k.to(x.device, x.dtype)[y, j], label=y, other=j, a=best_a, b=best_b,
                     gradient_norm=gradient_norm)


def _pair(model: nn.Module, a: Tensor, b: Tensor, y: Tensor, j: Tensor) -> Tensor:
    """The ratio |g(a) − g(b)|/‖a − b‖ of an actual pair (0 where a = b)."""
    with torch.no_grad():
        dist = _norm(a - b)
        diff = (margin_of(model, a, y, j) - margin_of(model, b, y, j)).abs()
        return torch.where(dist > 0, diff / dist.clamp(min=1e-300), torch.zeros_like(dist))


def _local_gradient_norm(model: nn.Module, a: Tensor, y: Tensor, j: Tensor) -> Tensor:
    a = a.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(margin_of(model, a, y, j).sum(), a)
    return _norm(grad)


def pgd_pair_ratio(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, tol: float = 1e-9,
                   max_iter: int = 5000, constants: Tensor | None = None) -> PairRatio:
    r"""The ratio :math:`|g_{yj}(x) - g_{yj}(x_{adv})|/\|x - x_{adv}\|` of attack pairs, with
    :math:`j` the largest wrong logit at :math:`x_{adv}` (0 where the attack did not move).

    Args:
        model: the classifier; x, x_adv: clean and attacked inputs (pixel scale); y: labels.
        tol, max_iter: the margins are evaluated at equilibria solved to this tolerance.
        constants: the certified (K, K) constants to compare with (default: the product K).
    """
    k = _constants(model, constants)
    y = check_labels(y, len(x), k.shape[0])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), solver_settings(model.layer, tol=tol, max_iter=max_iter):
            j = model(x_adv).scatter(1, y[:, None], float("-inf")).argmax(dim=1)
            ratio = _pair(model, x, x_adv, y, j)
    finally:
        model.train(was_training)
    return PairRatio(ratio=ratio, constant=k.to(x.device, x.dtype)[y, j], label=y, other=j, a=x, b=x_adv)


@dataclass(frozen=True)
class Looseness:
    """The certificate next to what is attained (:func:`measure_looseness`), pixel scale.

    Attributes:
        ascent: the best pairs of :func:`ascend_lipschitz_ratio` (classes: the binding ones).
        pgd_pairs: the PGD pairs of largest ratio over the ε's (:func:`pgd_pair_ratio`).
        certified: certified accuracy per ε (sound, tight solves).
        pgd_robust: accuracy under PGD per ε (an upper bound on robust accuracy).
        bound: the certificate's bound (``"product"`` K or ``"joint"`` Γ), which the ratios divide.
    """

    ascent: PairRatio
    pgd_pairs: PairRatio
    certified: dict[float, float]
    pgd_robust: dict[float, float]
    bound: str = "product"

    @property
    def gap(self) -> dict[float, float]:
        """PGD-robust minus certified accuracy per ε (≥ 0 unless the certificate is unsound)."""
        return {e: self.pgd_robust[e] - self.certified[e] for e in self.certified}

    def summary(self) -> dict:
        """Plain numbers for reports: largest and median found/K over examples, per search."""
        out: dict = {}
        for name, pr in (("ascent", self.ascent), ("pgd", self.pgd_pairs)):
            f = pr.fraction[pr.ratio > 0]
            out[name] = {"max_fraction": float(f.max()) if len(f) else 0.0,
                         "median_fraction": float(f.median()) if len(f) else 0.0,
                         "max_ratio": float(pr.ratio.max()) if len(pr.ratio) else 0.0}
        out["certified"] = {str(k): v for k, v in self.certified.items()}
        out["pgd_robust"] = {str(k): v for k, v in self.pgd_robust.items()}
        out["gap"] = {str(k): v for k, v in self.gap.items()}
        out["bound"] = self.bound
        return out

    def line(self) -> str:
        """One line for a report."""
        s = self.summary()
        gaps = ", ".join(f"ε={e:g}: {100 * g:.1f}pt" for e, g in self.gap.items())
        return (f"largest Lipschitz ratio found / certified K_yj: {s['ascent']['max_fraction']:.3f} max, "
                f"{s['ascent']['median_fraction']:.3f} median (ascent); {s['pgd']['max_fraction']:.3f} max "
                f"(PGD pairs); PGD-robust − certified: {gaps}")


def measure_looseness(model: nn.Module, x: Tensor, y: Tensor, *, epsilons: Iterable[float],
                      ascent_steps: int = 20, pgd_steps: int = 50, restarts: int = 1,
                      tol: float = 1e-9, max_iter: int = 5000, dtype: torch.dtype | None = torch.float64,
                      generator: torch.Generator | None = None, bound: str = "product",
                      multipliers: str = "auto") -> Looseness:
    r"""The certified bound beside the Lipschitz ratios actually found and the PGD−certified gap.

    Runs on a copy of ``model`` in ``dtype`` (float64 by default: the ratios are then exact to
    many digits), leaving ``model`` untouched. Certified accuracy is :func:`certify`'s at ``tol``;
    PGD (ℓ2, margin loss, pixels in [0, 1]) attacks at each ε only the examples still robust at
    the smaller ones, and every attack pair's ratio is kept (the largest per example).

    Args:
        model: a MonDEQClassifier; x: pixel-scale inputs; y: labels.
        epsilons: pixel-scale radii for the accuracies.
        ascent_steps: steps of :func:`ascend_lipschitz_ratio`.
        pgd_steps, restarts: the attack's budget.
        tol, max_iter: the solves of every measurement.
        dtype: precision of the copy (``None``: the model's own).
        generator: for PGD's random restarts.
        bound, multipliers: the certificate measured (:func:`certify`); ratios are fractions of
            its constants (:func:`~mondeq.robustness.joint_bound.pairwise_lipschitz`).

    Returns:
        a :class:`Looseness`.
    """
    model = copy.deepcopy(model)
    if dtype is not None:
        model = model.to(dtype)
        x = x.to(dtype)
    model.eval()
    eps_list = sorted(float(e) for e in epsilons)
    cert = certify(model, x, y, epsilons=eps_list, tol=tol, max_iter=max_iter, bound=bound,
                   multipliers=multipliers)
    k = pairwise_lipschitz(model, bound=bound, multipliers=multipliers).to(x.device)
    ascent = ascend_lipschitz_ratio(model, x, y, steps=ascent_steps, tol=tol, max_iter=max_iter,
                                    constants=k)
    robust = cert.correct.clone()
    ratio = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    best = pgd_pair_ratio(model, x, x, y, tol=tol, max_iter=max_iter, constants=k)  # ratio 0 everywhere
    pgd_robust: dict[float, float] = {}
    for eps in eps_list:
        idx = robust.nonzero().squeeze(1)
        if len(idx):
            with solver_settings(model.layer, tol=tol, max_iter=max_iter):
                result = pgd(model, x[idx], y[idx], eps, steps=pgd_steps, restarts=restarts,
                             generator=generator)
            pairs = pgd_pair_ratio(model, x[idx], result.x_adv, y[idx], tol=tol, max_iter=max_iter,
                                   constants=k)
            robust[idx[result.success]] = False
            better = pairs.ratio > ratio[idx]
            sel = idx[better]
            ratio[sel] = pairs.ratio[better]
            best = PairRatio(ratio=ratio.clone(), constant=_replace(best.constant, sel, pairs.constant[better]),
                             label=best.label, other=_replace(best.other, sel, pairs.other[better]),
                             a=best.a, b=_replace(best.b, sel, result.x_adv[better]))
        pgd_robust[eps] = float(robust.double().mean())
    return Looseness(ascent=ascent, pgd_pairs=best, certified=dict(cert.certified), pgd_robust=pgd_robust,
                     bound=bound)


def _replace(t: Tensor, idx: Tensor, values: Tensor) -> Tensor:
    out = t.clone()
    out[idx] = values
    return out
