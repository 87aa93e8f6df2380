r"""Empirical robustness: projected gradient descent (PGD) attacks in ℓ2 and ℓ∞.

The attacker works in pixel scale (e.g. pixels in [0, 1]), the scale the classifier takes (it owns
its normalisation), and ε is a pixel-scale radius, as certified radii are; perturbations are
projected onto the ε-ball and the valid pixel range. Gradients flow through the equilibrium by the library's implicit backward pass.
Reference: Madry et al., "Towards deep learning models resistant to adversarial attacks", 2018.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from ..errors import InputScaleError
from .checks import check_labels

NORMS = ("l2", "linf")
LOSSES = ("margin", "ce")


@dataclass(frozen=True)
class AttackResult:
    """Outcome of :func:`pgd` (everything in pixel scale).

    Attributes:
        x_adv: the strongest point found per example (lowest margin), shape of ``x``.
        success: whether the model misclassifies ``x_adv``, shape (batch,).
        margin: logit of the true class minus the largest other logit at ``x_adv``, (batch,).
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
        steps: int = 50, step_size: float | Tensor | None = None, restarts: int = 1,
        bounds: tuple[float, float] | None = (0.0, 1.0), loss: str = "margin",
        generator: torch.Generator | None = None, mean: None = None, std: None = None) -> AttackResult:
    r"""PGD with random restarts against ``model(x)`` on pixel-scale inputs, maximising the loss.

    Each step moves along the normalised gradient (ℓ2) or its sign (ℓ∞), then projects back onto
    :math:`\{x' : \|x' - x\| \le \varepsilon\} \cap [\text{lo}, \text{hi}]^d`. The first restart starts at
    ``x``, later ones at a uniform random point of the ball. Per example, the point with the
    lowest margin over all steps and restarts is kept.

    Args:
        model: maps pixel-scale inputs to logits (e.g. a MonDEQClassifier, which normalises them).
        x: clean inputs in pixel scale, shape (batch, ...).
        y: integer labels, shape (batch,).
        eps: pixel-scale radius: a float or a per-example tensor of shape (batch,).
        norm: ``"l2"`` or ``"linf"``.
        steps: gradient steps per restart.
        step_size: per-step length (default 2.5·ε/steps, Madry et al.).
        restarts: number of starts (≥ 1).
        bounds: valid pixel range ``(lo, hi)``, or ``None`` for no clamping.
        loss: ``"margin"`` (the largest other logit minus the true one; does not saturate) or
            ``"ce"`` (cross entropy).
        generator: random generator for the restarts, on any device (the noise is drawn on the
            generator's device and moved to ``x``'s).
        mean, std: refused: the model owns its normalisation.

    Returns:
        an :class:`AttackResult`.

    Raises:
        LabelError: labels not integer, not one per example, or outside the logits' classes.
        InputScaleError: ``mean`` or ``std`` given.
        ValueError: an unknown norm or loss, steps < 0, restarts < 1 or ε < 0.
    """
    _refuse_normalisation(mean, std, "pgd")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    x = x.detach()
    check_labels(y, len(x))
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0]).clone()
    if bool((eps_t < 0).any()):
        raise ValueError("eps must be >= 0")
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
            x_cur = clip(x.clone() if restart == 0 else x + _random_start(x, eps_t, norm, generator))
            for _ in range(steps):
                margin, g = evaluate(x_cur.detach(), True)
                keep(x_cur.detach(), margin)
                if norm == "l2":
                    direction = g / _expand(_flat_norm(g, "l2").clamp(min=1e-12), g)
                else:
                    direction = g.sign()
                x_cur = clip(x_cur.detach() + _expand(alpha, g) * direction)
            margin, _ = evaluate(x_cur.detach(), False)
            keep(x_cur.detach(), margin)
    finally:
        model.train(was_training)
    return AttackResult(x_adv=best_x, success=best_margin < 0, margin=best_margin,
                        distance=_flat_norm(best_x - x, norm))


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
