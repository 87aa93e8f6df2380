"""Learning-rate schedules, stepped once per minibatch: cosine, constant, step decay, one-cycle.

Every schedule is a ``torch.optim.lr_scheduler.LRScheduler``: call ``step()`` after each
``optimizer.step()``; ``state_dict()`` / ``load_state_dict()`` (together with the optimizer's)
resume a run exactly. Steps k = 0, 1, … count minibatches; the value "at step k" is the one the
optimizer uses for its (k+1)-th update.

- ``cosine``:    lr_k = lr · ½(1 + cos(π min(k, T)/T)), T = total_steps.
- ``constant``:  lr_k = lr.
- ``step``:      lr_k = lr · γ^{#(milestones ≤ k)} (the paper's code: ×0.1 every 10 or 25 epochs).
- ``onecycle``:  piecewise linear through the knots (0, base), (P, max_lr), (A, base), (T, base)
  with A = round((1 − final_fraction) T) and P = ⌊A/2⌋, and Adam's β1 through (0, 0.95),
  (P, 0.85), (A, 0.95), (T, 0.95): the learning rate rises while β1 falls, and back. These are
  the values of the monDEQ paper's code (Winston & Kolter 2020, locuslab/monotone_op_net,
  ``train.py``: ``lr_mode='1cycle'``, ``change_mo=True``: knots at epochs 0, (E−5)//2, E−5, E,
  lr 1e-3 → max_lr → 1e-3 → 1e-3 and β1 0.95 → 0.85 → 0.95 → 0.95, set per minibatch).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR

__all__ = ["SCHEDULES", "OneCycle", "constant", "cosine", "make_schedule", "one_cycle",
           "step_decay"]

#: Names accepted by :func:`make_schedule`.
SCHEDULES = ("cosine", "constant", "step", "onecycle")

#: The paper's code spends its last 5 of 65 epochs (the augmented CIFAR-10 runs) at the base lr.
PAPER_FINAL_FRACTION = 5 / 65


def _positive_int(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def cosine(optimizer: Optimizer, *, total_steps: int) -> LambdaLR:
    """Cosine decay from the optimizer's lr to 0 over ``total_steps`` (then stays at 0).

    .. math::  \\mathrm{lr}_k = \\mathrm{lr}_0 \\cdot \\tfrac12 (1 + \\cos(\\pi \\min(k, T) / T))
    """
    total = _positive_int("total_steps", total_steps)
    return LambdaLR(optimizer, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total)))


def constant(optimizer: Optimizer) -> LambdaLR:
    """Keeps the optimizer's lr (a scheduler only so that every run has one)."""
    return LambdaLR(optimizer, lambda k: 1.0)


def step_decay(optimizer: Optimizer, *, milestones: Sequence[int], gamma: float) -> MultiStepLR:
    """Multiplies the lr by ``gamma`` at each milestone (in minibatch steps).

    .. math::  \\mathrm{lr}_k = \\mathrm{lr}_0 \\cdot \\gamma^{\\#\\{i : m_i \\le k\\}}

    Args:
        optimizer: The optimizer (its current lr is lr_0).
        milestones: Increasing step indices m_i ≥ 1.
        gamma: Factor in (0, 1] (the paper's 0.1).
    """
    ms = [int(m) for m in milestones]
    if any(m < 1 for m in ms) or ms != sorted(ms):
        raise ValueError(f"milestones must be increasing positive step counts, got {list(milestones)}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    return MultiStepLR(optimizer, milestones=ms, gamma=gamma)


def _interp(k: float, knots: Sequence[float], values: Sequence[float]) -> float:
    """Piecewise-linear interpolation, constant beyond the ends (like numpy.interp)."""
    if k <= knots[0]:
        return values[0]
    if k >= knots[-1]:
        return values[-1]
    i = bisect.bisect_right(knots, k) - 1
    while knots[i + 1] == knots[i]:
        i += 1
    t = (k - knots[i]) / (knots[i + 1] - knots[i])
    return values[i] + t * (values[i + 1] - values[i])


class OneCycle(LRScheduler):
    """One-cycle learning rate with Adam's β1 cycled inversely (see :func:`one_cycle`)."""

    def __init__(self, optimizer: Optimizer, *, total_steps: int, max_lr: float,
                 base_lr: float = 1e-3, min_beta1: float = 0.85, max_beta1: float = 0.95,
                 final_fraction: float = PAPER_FINAL_FRACTION, cycle_beta1: bool = True) -> None:
        total = _positive_int("total_steps", total_steps)
        if not (max_lr > 0 and base_lr > 0):
            raise ValueError(f"max_lr and base_lr must be positive, got {max_lr}, {base_lr}")
        if not 0 <= final_fraction < 1:
            raise ValueError(f"final_fraction must be in [0, 1), got {final_fraction}")
        if not 0 <= min_beta1 <= max_beta1 < 1:
            raise ValueError(f"need 0 ≤ min_beta1 ≤ max_beta1 < 1, got {min_beta1}, {max_beta1}")
        if cycle_beta1 and any("betas" not in g for g in optimizer.param_groups):
            raise ValueError("cycle_beta1=True needs an optimizer with betas (Adam, AdamW); "
                             "pass cycle_beta1=False for others")
        anneal = max(1, round((1.0 - final_fraction) * total))
        self.knots = (0, anneal // 2, anneal, total)
        self.lr_values = (base_lr, max_lr, base_lr, base_lr)
        self.beta1_values = (max_beta1, min_beta1, max_beta1, max_beta1)
        self.cycle_beta1 = cycle_beta1
        super().__init__(optimizer)

    def lr_at(self, k: int) -> float:
        """The learning rate at step k."""
        return _interp(k, self.knots, self.lr_values)

    def beta1_at(self, k: int) -> float:
        """Adam's β1 at step k."""
        return _interp(k, self.knots, self.beta1_values)

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch) for _ in self.optimizer.param_groups]

    def step(self, epoch: None = None) -> None:  # noqa: D102 (LRScheduler.step)
        super().step()
        if self.cycle_beta1:
            beta1 = self.beta1_at(self.last_epoch)
            for group in self.optimizer.param_groups:
                group["betas"] = (beta1, group["betas"][1])


def one_cycle(optimizer: Optimizer, *, total_steps: int, max_lr: float, base_lr: float = 1e-3,
              min_beta1: float = 0.85, max_beta1: float = 0.95,
              final_fraction: float = PAPER_FINAL_FRACTION, cycle_beta1: bool = True) -> OneCycle:
    """The paper's one-cycle: lr base → max_lr → base, β1 max → min → max, then flat.

    With A = round((1 − final_fraction)·T) and P = ⌊A/2⌋ (T = ``total_steps``), lr and β1 are
    linear between the knots 0, P, A, T:

    ===========  =========  ==========  =========  =========
    step         0          P           A          T
    lr           base_lr    max_lr      base_lr    base_lr
    β1           max_beta1  min_beta1   max_beta1  max_beta1
    ===========  =========  ==========  =========  =========

    Defaults are the paper's (base 1e-3, β1 0.95 ↔ 0.85, last 5 of 65 epochs flat).

    Args:
        optimizer: Adam-like optimizer (``betas`` in its param groups) if ``cycle_beta1``.
        total_steps: Minibatch steps of the whole run.
        max_lr: Peak learning rate (the paper: 1e-2 single conv, 5e-2 multi-tier).
        base_lr: Learning rate at the start and the end.
        min_beta1: β1 at the lr peak.
        max_beta1: β1 at the start and the end.
        final_fraction: Fraction of the run kept at ``base_lr`` at the end.
        cycle_beta1: Also cycle β1 (the paper's ``change_mo``).
    """
    return OneCycle(optimizer, total_steps=total_steps, max_lr=max_lr, base_lr=base_lr,
                    min_beta1=min_beta1, max_beta1=max_beta1, final_fraction=final_fraction,
                    cycle_beta1=cycle_beta1)


def make_schedule(name: str, optimizer: Optimizer, *, total_steps: int, lr: float,
                  milestones: Sequence[int] | None = None, gamma: float = 0.1) -> LRScheduler:
    """Builds a schedule by name; sets every param group's lr to ``lr`` first.

    Args:
        name: "cosine" (lr → 0), "constant", "step" (×gamma at each milestone) or "onecycle"
            (peak lr = ``lr``, see :func:`one_cycle`).
        optimizer: The optimizer.
        total_steps: Minibatch steps of the whole run.
        lr: The initial (cosine, constant, step) or peak (onecycle) learning rate.
        milestones: Steps of the step decay; default every quarter of the run (at T/4, T/2,
            3T/4: the paper's ×0.1 every 10 of 40 epochs).
        gamma: Step-decay factor.

    Raises:
        ValueError: For an unknown name or invalid settings.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
    total = _positive_int("total_steps", total_steps)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    for group in optimizer.param_groups:
        group["lr"] = lr
        group.pop("initial_lr", None)
    if name == "cosine":
        return cosine(optimizer, total_steps=total)
    if name == "constant":
        return constant(optimizer)
    if name == "step":
        if milestones is None:
            milestones = sorted({max(1, (q * total) // 4) for q in (1, 2, 3)})
        return step_decay(optimizer, milestones=milestones, gamma=gamma)
    return one_cycle(optimizer, total_steps=total, max_lr=lr, base_lr=min(1e-3, lr))
