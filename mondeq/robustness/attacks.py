r"""Empirical robustness: projected gradient descent (PGD) attacks in ℓ2 and ℓ∞.

The attacker works in pixel scale (e.g. pixels in [0, 1]), the scale the classifier takes (it owns
its normalisation), and ε is a pixel-scale radius, as certified radii are; perturbations are
projected onto the ε-ball and the valid pixel range. Gradients flow through the equilibrium by the library's implicit backward pass.
Reference: Madry et al., "Towards deep learning models resistant to adversarial attacks", 2018.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import copy

import torch
from torch import Tensor, nn

from ..errors import InputRangeError, InputScaleError, InvalidSettingError
from ..models.normalization import as_pixels
from ..layer import solver_settings
from .certification import (CERTIFY_DTYPE, CERTIFY_TOL, TIGHT_MAX_ITER, equilibrium_error_bound,
                            state_residual)
from .lipschitz import head_matrix, pairwise_margin_norms
from .checks import check_batch, check_labels, pixel_range_problem

NORMS = ("l2", "linf")
LOSSES = ("margin", "ce")
#: Restarts of :func:`pgd` and of ``mondeq certify``'s attack (the first from x, then random).
PGD_RESTARTS = 2
#: Steps per restart of :func:`pgd` and of ``mondeq certify``'s attack.
PGD_STEPS = 50
#: Steps between :func:`pgd`'s checks whether every example is already misclassified.
CHECK_EVERY = 5


@dataclass(frozen=True)
class AttackResult:
    """Outcome of :func:`pgd` (everything in pixel scale).

    Attributes:
        x_adv: the strongest point found per example (lowest margin), shape of ``x``.
        success: whether the model misclassifies ``x_adv``, judged at the truth for a monDEQ
            classifier (:func:`proven_misclassified`: re-solved
            at ``tol``, and only where the solver error cannot explain it), shape (batch,).
        margin: logit of the true class minus the largest other logit at ``x_adv`` (at that
            re-solve for a monDEQ classifier), shape (batch,).
        distance: ‖x_adv − x‖ in the attack's norm, shape (batch,).
    """

    x_adv: Tensor
    success: Tensor
    margin: Tensor
    distance: Tensor


def _flat_norm(t: Tensor, norm: str) -> Tensor:
    flat = t.reshape(t.shape[0], -1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def _expand(per_example: Tensor, like: Tensor) -> Tensor:
    return per_example.reshape(-1, *([1] * (like.ndim - 1)))


def _project(delta: Tensor, eps: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        e = _expand(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)
    scale = (eps / _flat_norm(delta, "l2").clamp(min=1e-12)).clamp(max=1.0)
    return delta * _expand(scale, delta)


def _random_start(x: Tensor, eps: Tensor, norm: str, generator: torch.Generator | None) -> Tensor:
    if norm == "linf":
        return (2 * _draw(torch.rand, x.shape, x, generator) - 1) * _expand(eps, x)
    # uniform in the ℓ2 ball: a random direction times ε·u^(1/d)
    noise = _draw(torch.randn, x.shape, x, generator)
    d = x[0].numel()
    u = _draw(torch.rand, (x.shape[0],), x, generator) ** (1.0 / d)
    direction = noise / _expand(_flat_norm(noise, "l2").clamp(min=1e-12), x)
    return direction * _expand(eps * u, x)


def _draw(sample: Callable[..., Tensor], shape: tuple[int, ...], like: Tensor,
          generator: torch.Generator | None) -> Tensor:
    """Random numbers in ``like``'s dtype and device, drawn on the generator's device.

    A generator only draws on its own device, so a CPU generator with CUDA inputs draws on the
    CPU and the numbers are copied over (the same numbers on every device for one seed).
    """
    device = like.device if generator is None else generator.device
    out = sample(shape, dtype=like.dtype, device=device, generator=generator)
    return out.to(like.device, non_blocking=True)


def _refuse_normalisation(mean: object, std: object, where: str) -> None:
    if mean is not None or std is not None:
        raise InputScaleError(
            f"{where} no longer takes mean/std: the classifier owns its input normalisation "
            "(mondeq.build_model gives it its dataset's), so attack it on pixel-scale inputs with "
            "a pixel-scale eps; wrap a model that wants normalised inputs in one that normalises")


def margins(logits: Tensor, y: Tensor) -> Tensor:
    """Logit of the true class minus the largest other logit, shape (batch,)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - other


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, *, norm: str = "l2",
        steps: int = PGD_STEPS, step_size: float | Tensor | None = None, restarts: int = PGD_RESTARTS,
        bounds: tuple[float, float] | None = (0.0, 1.0), loss: str = "margin",
        generator: torch.Generator | None = None, tol: float | None = CERTIFY_TOL,
        dtype: torch.dtype | None = CERTIFY_DTYPE, stop_when_broken: bool = True, mean: None = None,
        std: None = None) -> AttackResult:
    r"""PGD with random restarts against ``model(x)`` on pixel-scale inputs, maximising the loss.

    Each step moves along the normalised gradient (ℓ2) or its sign (ℓ∞), then projects back onto
    :math:`\{x' : \|x' - x\| \le \varepsilon\} \cap [\text{lo}, \text{hi}]^d`. The first restart starts at
    ``x``, later ones at a uniform random point of the ball. Per example, the point with the
    lowest margin over all steps and restarts is kept. The steps use the model's own (cheap)
    solves; the verdict does not: a monDEQ classifier's final points are re-solved at ``tol`` in
    ``dtype`` (:func:`certify`'s rule) and count as successes only where the exact network provably
    misclassifies them, so no success ever lies inside a certified radius.

    Args:
        model: maps pixel-scale inputs to logits (e.g. a MonDEQClassifier, which normalises them).
        x: clean inputs in pixel scale, shape (batch, ...).
        y: integer labels, shape (batch,).
        eps: pixel-scale radius: a float or a per-example tensor of shape (batch,).
        norm: ``"l2"`` or ``"linf"``.
        steps: gradient steps per restart.
        step_size: per-step length (default 2.5·ε/steps, Madry et al.).
        restarts: number of starts (≥ 1; default ``PGD_RESTARTS``, as ``mondeq certify``).
        bounds: valid pixel range ``(lo, hi)``, or ``None`` for no clamping.
        loss: ``"margin"`` (the largest other logit minus the true one; does not saturate) or
            ``"ce"`` (cross entropy).
        generator: random generator for the restarts, on any device (the noise is drawn on the
            generator's device and moved to ``x``'s).
        tol: the verdict's re-solve tolerance (default ``CERTIFY_TOL``; ``None``: the layer's
            own, the old verdict, which a loose solve can fake).
        dtype: the verdict's precision (default float64; ``None``: the model's).
        stop_when_broken: stop (steps and restarts) once every example's margin is negative at
            the attack's own solves (checked every ``CHECK_EVERY`` steps): the verdict is taken at
            the truth anyway, and further steps would only deepen a found misclassification.
        mean, std: refused: the model owns its normalisation.

    Returns:
        an :class:`AttackResult`.

    Raises:
        LabelError: labels not integer, not one per example, or outside the logits' classes.
        StateShapeError: an empty batch.
        InputScaleError: ``mean`` or ``std`` given.
        InvalidSettingError: an unknown norm or loss, steps < 0, restarts < 1, ε < 0 or not finite.
    """
    _refuse_normalisation(mean, std, "pgd")
    if norm not in NORMS:
        raise InvalidSettingError(f"pgd: norm must be one of {NORMS}, got {norm!r}")
    if loss not in LOSSES:
        raise InvalidSettingError(f"pgd: loss must be one of {LOSSES}, got {loss!r}")
    if steps < 0 or restarts < 1:
        raise InvalidSettingError(f"pgd: need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    check_batch(x, "pgd")
    monDEQ = _is_mondeq_classifier(model)
    if not x.is_floating_point():  # uint8 pixels, as the classifier takes them
        x = as_pixels(x, model.layer.linear.dtype if monDEQ else torch.get_default_dtype())
    x = x.detach()
    problem = None if bounds is None else pixel_range_problem(x, bounds)
    if problem is not None:
        raise InputRangeError(f"pgd: {problem}; the attack keeps its points in bounds={tuple(bounds)}, so "
                              f"clamping would move the clean images themselves (pass bounds=None for "
                              f"inputs that are not pixels)")
    check_labels(y, len(x))
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0]).clone()
    if not bool(((eps_t >= 0) & torch.isfinite(eps_t)).all()):
        raise InvalidSettingError(f"pgd: eps must be >= 0 and finite (a pixel-scale radius), got {eps!r}")
    alpha = (2.5 * eps_t / max(steps, 1) if step_size is None
             else torch.as_tensor(step_size, dtype=x.dtype, device=x.device).expand(x.shape[0]))

    def clip(x_new: Tensor) -> Tensor:
        x_new = x + _project(x_new - x, eps_t, norm)
        return x_new.clamp(*bounds) if bounds is not None else x_new

    checked: list[bool] = []

    def evaluate(x_in: Tensor, grad: bool) -> tuple[Tensor, Tensor | None]:
        with torch.set_grad_enabled(grad):
            x_in = x_in.requires_grad_(grad)
            logits = model(x_in)
            if not checked:  # the number of classes is known once logits exist
                check_labels(y, len(x), logits.shape[1])
                checked.append(True)
            margin = margins(logits, y)
            if not grad:
                return margin.detach(), None
            objective = -margin if loss == "margin" else nn.functional.cross_entropy(logits, y, reduction="none")
            (g,) = torch.autograd.grad(objective.sum(), x_in)
        return margin.detach(), g

    was_training = model.training
    model.eval()
    best_x, best_margin = x.clone(), torch.full_like(eps_t, float("inf"))

    def keep(x_cur: Tensor, margin: Tensor) -> None:
        better = margin < best_margin
        best_margin.copy_(torch.where(better, margin, best_margin))
        best_x.copy_(torch.where(_expand(better, x), x_cur, best_x))

    try:
        for restart in range(restarts):
            if stop_when_broken and restart and bool((best_margin < 0).all()):
                break
            x_cur = clip(x.clone() if restart == 0 else x + _random_start(x, eps_t, norm, generator))
            for step in range(steps):
                margin, g = evaluate(x_cur.detach(), True)
                keep(x_cur.detach(), margin)
                if stop_when_broken and step % CHECK_EVERY == CHECK_EVERY - 1 and bool((best_margin < 0).all()):
                    break
                if norm == "l2":
                    direction = g / _expand(_flat_norm(g, "l2").clamp(min=1e-12), g)
                else:
                    direction = g.sign()
                x_cur = clip(x_cur.detach() + _expand(alpha, g) * direction)
            margin, _ = evaluate(x_cur.detach(), False)
            keep(x_cur.detach(), margin)
    finally:
        model.train(was_training)
    success = best_margin < 0
    if monDEQ:  # the verdict at the truth, not at the attack's loose solves
        success, best_margin = proven_misclassified(model, best_x, y, tol=tol, dtype=dtype)
        success, best_margin = success.to(x.device), best_margin.to(x.dtype).to(x.device)
    return AttackResult(x_adv=best_x, success=success, margin=best_margin,
                        distance=_flat_norm(best_x - x, norm))


@torch.no_grad()
def proven_misclassified(model, x: Tensor, y: Tensor, *, tol: float | None = CERTIFY_TOL,
                         dtype: torch.dtype | None = CERTIFY_DTYPE) -> tuple[Tensor, Tensor]:
    r"""Whether the exact network provably misclassifies each example: the attack's verdict
    judged at the truth, by :func:`certify`'s rule.

    The equilibrium is re-solved at ``tol`` in ``dtype`` (on a copy, as :func:`certify`), and an
    example counts only if some class beats the label by more than the solver error can explain,
    :math:`\max_{j \ne y}\,(h_j - h_y - \|H_y - H_j\|_2\,\delta) > 0` with
    :math:`\|\hat z - z^\star\| \le \delta` (:func:`equilibrium_error_bound`). A certified radius
    says the exact margin is positive on its ball, so the two can never both hold.

    Args:
        model: a MonDEQClassifier; x: pixel-scale inputs; y: labels.
        tol: the re-solve's tolerance, or the layer's own where that is tighter (``None``: the
            layer's own).
        dtype: its precision (``None``: the model's).

    Returns:
        ``(misclassified, margin)``, shape (batch,) each: the verdict, and
        :math:`h_y - \max_{j \ne y} h_j` at the re-solved state.
    """
    if tol is not None:  # never looser than the model's own solve
        tol = min(tol, model.layer.tol)
    if dtype is not None and next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)
    layer = model.layer
    xs = model.layer_input(x)
    was_training = model.training
    model.eval()
    try:
        with solver_settings(layer, tol=tol, max_iter=None if tol is None else max(layer.max_iter, TIGHT_MAX_ITER)):
            op = layer.linear.operator()
            z, _ = layer.forward_with_stats(xs)
            logits = model.logits_from_state(z)
            delta = equilibrium_error_bound(state_residual(layer, xs, z, op=op), op.m, op.lipschitz())
    finally:
        model.train(was_training)
    y = y.to(logits.device)
    norms = pairwise_margin_norms(head_matrix(model, differentiable=False).to(torch.float64)).to(logits.device)
    true = logits.gather(1, y[:, None])
    beaten = (logits - true).to(torch.float64) - norms[y] * delta.to(torch.float64)[:, None]
    beaten.scatter_(1, y[:, None], float("-inf"))
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return beaten.amax(dim=1) > 0, true.squeeze(1) - other


def _is_mondeq_classifier(model: nn.Module) -> bool:
    from ..layer import MonDEQ

    return isinstance(getattr(model, "layer", None), MonDEQ) and hasattr(model, "layer_input")


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, epsilons: Iterable[float], *,
                    batch_size: int = 1000, progress: Callable[[str], None] | None = None,
                    **attack: object) -> dict[float, float]:
    """Accuracy under :func:`pgd` at each ε (an upper bound on the true robust accuracy).

    Only examples still robust at the previous (smaller) ε are attacked at the next one; a
    misclassified clean example counts as non-robust at every ε.

    Args:
        model: maps pixel-scale inputs to logits.
        x: clean inputs in pixel scale; y: integer labels.
        epsilons: pixel-scale radii.
        batch_size: examples per attack call.
        progress: optional callback receiving a line per ε.
        **attack: options passed to :func:`pgd` (norm, steps, restarts, bounds, ...).

    Returns:
        ``{ε: robust accuracy}``.
    """
    _refuse_normalisation(attack.get("mean"), attack.get("std"), "robust_accuracy")
    check_batch(x, "robust_accuracy")
    check_labels(y, len(x))
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            logits = model(xb)
            check_labels(y[start:start + batch_size], len(xb), logits.shape[1])
            robust[start:start + batch_size] = logits.argmax(1) == y[start:start + batch_size]
    out: dict[float, float] = {}
    for eps in sorted(float(e) for e in epsilons):
        idx = robust.nonzero().squeeze(1)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            result = pgd(model, x[chunk], y[chunk], eps, **attack)  # type: ignore[arg-type]
            robust[chunk[result.success]] = False
        out[eps] = float(robust.to(torch.float64).mean())
        if progress is not None:
            progress(f"PGD ε={eps:g}: robust accuracy {100 * out[eps]:.2f}%")
    return out
