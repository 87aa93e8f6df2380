r"""Choosing the splitting step α for a layer: fewest iterations on a batch.

Every α > 0 gives PR and DR (and their Anderson variants) the same fixed point, so α is purely a
speed setting, and the best one moves as training changes W. Winston & Kolter (2020) tune it the
simple way: start at α = 1 and halve while the iteration count keeps falling. :func:`tune_alpha`
does that on one batch, counting forward and (by default) backward iterations, since a training
step pays for both; :class:`AlphaTuner` repeats it every N training steps.

Forward-backward is different: it converges only for :math:`0 < \alpha < 2m/L^2`
(:math:`L = \|I - W\|_2`), and L moves as training changes W. :class:`StableStep` keeps FB inside
that range by setting :math:`\alpha = \theta \cdot 2m/L^2` (default θ = 0.9) from the current
operator before every training step (one 87 × 87 SVD for the dense MNIST model).

It lives with the layers rather than in :mod:`splitting` because it needs what only a layer knows:
its parameters' operator, its input map, its solver and tolerances, and the backward problem its
gradient will pose.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from splitting import SOLVERS, STEP_LIMITS, LinearOperator, equilibrium, max_stable_alpha
from ..errors import ConvergenceWarning, StepSizeWarning
from ..errors import InvalidSettingError, NonFiniteInputError

from .distributed import broadcast_object, is_distributed, unwrap
from ..layer import MonDEQ
from ..models.classifier import MonDEQClassifier

HALVINGS = tuple(2.0 ** -k for k in range(7))
"""The paper's grid: 1, 1/2, …, 1/64."""
FB_SOLVERS = tuple(STEP_LIMITS)
"""Solvers whose step α must stay below a limit (FB and Anderson-FB: 2m/L²; FBF: 1/L); the others
converge for every α > 0 (:data:`splitting.STEP_LIMITS`)."""
STEP_RULES = {"fb": "2m/L²", "anderson-fb": "2m/L²", "fbf": "1/L"}
"""Each step-limited solver's limit as a formula, for messages (L = ‖I − W‖₂)."""
STABLE_FRACTION = 0.9
"""Default θ of :class:`StableStep`: α = θ·2m/L², a margin for the change of W within a step."""


@dataclass(frozen=True)
class AlphaTrial:
    """One α tried: iterations of the forward (and backward) solve, and whether both converged."""

    alpha: float
    forward_iterations: int
    backward_iterations: int
    converged: bool

    @property
    def cost(self) -> tuple[bool, int]:
        """Sort key: unconverged runs rank last, then fewer total iterations first."""
        return (not self.converged, self.forward_iterations + self.backward_iterations)


@dataclass(frozen=True)
class AlphaSearch:
    """Result of :func:`tune_alpha`: the chosen α and every trial, in the order tried."""

    alpha: float
    trials: list[AlphaTrial] = field(repr=False)

    @property
    def best(self) -> AlphaTrial:
        """The trial of the chosen α."""
        return next(t for t in self.trials if t.alpha == self.alpha)


def default_grid(layer: MonDEQ, op) -> tuple[float, ...]:
    """The paper's halvings 1, 1/2, …, 1/64, or, for a step-limited solver (FB, Anderson-FB, FBF:
    :data:`splitting.STEP_LIMITS`), the same halvings of θ·limit(W) (θ = :data:`STABLE_FRACTION`),
    so that every candidate lies inside the method's convergent range."""
    limits = {SOLVERS[name]: limit for name, limit in STEP_LIMITS.items()}
    limit = limits.get(layer.solver)
    if limit is None:
        return HALVINGS
    with torch.no_grad():
        top = STABLE_FRACTION * limit(op)
    return tuple(top * a for a in HALVINGS)


def tune_alpha(layer: MonDEQ, x: Tensor, *, grid: Sequence[float] | None = None,
               backward: bool = True, exhaustive: bool = False,
               generator: torch.Generator | None = None) -> AlphaSearch:
    """Pick α from ``grid`` that minimises the iterations the layer needs on batch ``x``.

    Tries α in the given order (default: :func:`default_grid`, 1, 1/2, …, 1/64, or those
    halvings of 0.9 × the step limit for FB and FBF) and stops at the first α whose cost does
    not improve on the previous one (the paper's "halve while iterations fall"), unless
    ``exhaustive``. Cost is forward + backward iterations at the layer's own tolerances; runs
    that do not converge (FB beyond 2m/L², too small an α) rank below every converged run. The
    layer is not modified.

    Args:
        layer: the implicit layer (its solver, tol, max_iter and backward settings are used).
        x: an input batch in the layer's input shape.
        grid: candidate step sizes, tried in order.
        backward: include the backward solve, for a random unit-variance gradient ḡ.
        exhaustive: try every α in the grid.
        generator: RNG for ḡ (default: the global one).

    Returns:
        :class:`AlphaSearch` with the chosen α (an element of ``grid``) and all trials.
    """
    layer.linear.check_input(x)
    with torch.no_grad():
        op = layer.linear.operator()
        bias = tuple(b.detach() for b in layer.linear.bias(x))
    grid = [float(a) for a in (default_grid(layer, op) if grid is None else grid)]
    if not grid or any(not a > 0 for a in grid):
        raise InvalidSettingError(f"grid must be a non-empty sequence of step sizes > 0, got {grid}")
    grad = None
    if backward:
        grad = tuple(torch.randn(b.shape, generator=generator, dtype=b.dtype, device="cpu").to(b.device)
                     for b in bias)
    trials: list[AlphaTrial] = []
    for alpha in grid:
        trials.append(_trial(layer, op, bias, grad, alpha))
        if not exhaustive and len(trials) > 1 and trials[-1].cost >= trials[-2].cost:
            break
    best = min(trials, key=lambda t: t.cost)
    return AlphaSearch(alpha=best.alpha, trials=trials)


def _trial(layer: MonDEQ, op, bias, grad, alpha: float) -> AlphaTrial:
    with warnings.catch_warnings():
        # an α outside FB's range, or one too small to converge, is an expected outcome here
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", StepSizeWarning)
        with torch.enable_grad():
            b = tuple(t.clone().requires_grad_(grad is not None) for t in bias)
            z, stats = equilibrium(op, layer.nonlinearity, b, solver=layer.solver, alpha=alpha,
                                   tol=layer.tol, max_iter=layer.max_iter,
                                   backward_tol=layer.backward_tol,
                                   backward_max_iter=layer.backward_max_iter)
            if grad is not None:
                torch.autograd.grad(z, b, grad_outputs=grad)
    fw, bw = stats.forward, stats.backward
    converged = fw.converged and (bw is None or bw.converged)
    return AlphaTrial(alpha=alpha, forward_iterations=fw.iterations,
                      backward_iterations=bw.iterations if bw is not None else 0, converged=converged)


class AlphaTuner:
    """A training hook that re-tunes ``model.layer.alpha`` every ``every`` steps.

    Pass it as ``train_epoch(..., on_batch=AlphaTuner(every=100))``; it tunes on the step's own
    batch before the step runs (the first call tunes), and keeps a log of its choices. Under
    torch.distributed (the model may be the :func:`mondeq.training.distributed.wrap_model` wrapper), rank
    0 tunes on its batch and broadcasts the result, so every rank uses the same α.

    Args:
        every: steps between searches, ≥ 1.
        grid, backward, exhaustive: as in :func:`tune_alpha`.
    """

    def __init__(self, every: int, *, grid: Sequence[float] | None = None, backward: bool = True,
                 exhaustive: bool = False) -> None:
        if int(every) != every or every < 1:
            raise InvalidSettingError(f"every must be a positive integer, got {every}")
        self.every = int(every)
        self.grid = None if grid is None else tuple(grid)
        self.backward = backward
        self.exhaustive = exhaustive
        self.steps = 0
        self.log: list[tuple[int, AlphaSearch]] = []

    def __call__(self, model: MonDEQClassifier, x: Tensor, y: Tensor) -> None:
        if self.steps % self.every == 0:
            # Under torch.distributed every rank must train with the same operator: rank 0
            # searches on its own share of the batch and broadcasts its result (a collective, so
            # every rank calls the tuner at every step, as train_epoch does).
            model = unwrap(model)
            search = None
            if not is_distributed() or dist.get_rank() == 0:
                x = model.layer_input(x)  # pixels → what the layer sees (normalised)
                search = tune_alpha(model.layer, x, grid=self.grid, backward=self.backward,
                                    exhaustive=self.exhaustive)
            search = broadcast_object(search)
            model.layer.alpha = search.alpha
            self.log.append((self.steps, search))
        self.steps += 1

    def state_dict(self) -> dict:
        """The tuner's progress (step counter and log) in plain values, for checkpoints."""
        return {"steps": self.steps,
                "log": [[step, search.alpha,
                         [[t.alpha, t.forward_iterations, t.backward_iterations, t.converged]
                          for t in search.trials]] for step, search in self.log]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output, so a resumed run tunes at the same steps."""
        self.steps = int(state["steps"])
        self.log = [(int(step), AlphaSearch(alpha=float(alpha),
                                            trials=[AlphaTrial(float(a), int(f), int(b), bool(c))
                                                    for a, f, b, c in trials]))
                    for step, alpha, trials in state["log"]]


class StableStep:
    r"""A training hook that keeps a step-limited method's step inside its convergent range.

    Every ``every`` steps (and on :meth:`apply`) it sets

    .. math:: \alpha = \theta \cdot 2m / L^2,\qquad L = \|I - W\|_2

    (forward-backward's limit, :func:`splitting.max_stable_alpha`; another ``limit``, such as
    forward-backward-forward's 1/L, by :data:`splitting.STEP_LIMITS`) from the layer's current
    operator, so the forward and
    backward solves of that step converge linearly whatever training did to W. With ``every=1``
    the α of every step is computed from the very W that step solves with. Every rank computes
    the same α from the same (synchronised) parameters, so no collective is needed.

    Args:
        fraction: θ in (0, 1).
        every: steps between updates, ≥ 1 (the first call always updates).
        limit: the method's step limit as a function of the operator (default FB's 2m/L²).
    """

    def __init__(self, fraction: float = STABLE_FRACTION, *, every: int = 1,
                 limit: Callable[[LinearOperator], float] = max_stable_alpha) -> None:
        if not 0 < fraction < 1:
            raise InvalidSettingError(f"fraction must be in (0, 1) (a step strictly inside FB's range "
                                      f"0 < alpha < 2m/L^2), got {fraction}")
        if int(every) != every or every < 1:
            raise InvalidSettingError(f"every must be a positive integer, got {every}")
        self.fraction, self.every, self.steps = float(fraction), int(every), 0
        self.limit = limit

    def apply(self, model: MonDEQClassifier | MonDEQ) -> float:
        """Set and return α = θ·limit(W) for ``model``'s current operator (a layer or a classifier)."""
        model = unwrap(model)
        layer = model.layer if hasattr(model, "layer") else model
        try:
            with torch.no_grad():
                limit = self.limit(layer.linear.operator())
        except torch.linalg.LinAlgError:  # the SVD of a W with NaN entries
            limit = float("nan")
        if not 0 < limit < float("inf"):  # W is not finite: training already diverged
            raise NonFiniteInputError(f"the step limit is {limit} (W is not finite): "
                                      "training diverged; lower --lr or use --solver pr")
        layer.alpha = self.fraction * limit
        return layer.alpha

    def __call__(self, model: MonDEQClassifier, x: Tensor, y: Tensor) -> None:
        if self.steps % self.every == 0:
            self.apply(model)
        self.steps += 1

    def state_dict(self) -> dict:
        """The step counter, for checkpoints."""
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.steps = int(state["steps"])
