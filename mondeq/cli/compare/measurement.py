"""Iterations and wall time of one splitting method at one α to each true-residual threshold.

Each threshold is one solve with ``tol`` set to it: the solvers stop only once every sample's
true relative residual ‖z − σ(Wz + b)‖/‖z‖ is confirmed below ``tol`` and report the first such
iteration, which is what training pays. Times are the same solves repeated (median of
interleaved rounds). Runs that blow up (FB beyond its step limit 2m/L²) are reported as
diverged, not as errors.
"""
from __future__ import annotations

import functools
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from splitting import BASELINES, SOLVERS, STEP_LIMITS, SolverResult, StepSizeWarning
from splitting.state import batch_norm

from .problem import SplittingProblem

THRESHOLDS = (1e-2, 1e-4, 1e-6, 1e-9)
"""True relative residuals at which iterations and times are recorded (those a dtype can reach:
:func:`reachable`)."""


def reachable(threshold: float, dtype: torch.dtype) -> bool:
    """Whether a relative residual of ``threshold`` is meaningful in ``dtype`` (≥ 10 machine
    epsilons: 1e-9 is not, in float32)."""
    return threshold >= 10 * torch.finfo(dtype).eps

ALPHAS = tuple(2.0 ** -k for k in range(7))
"""The default step-size grid 1, 1/2, …, 1/64."""


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (only around timed calls); nothing to wait for elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Run:
    """One (direction, method, α) measurement."""

    direction: str
    method: str
    alpha: float
    trace: list[float]                          # worst-sample solver residual per iteration
    iterations: dict[float, int | None]         # threshold -> first iteration below it
    times: dict[float, float | None]            # threshold -> median seconds to get there
    status: str                                 # converged | diverged | not reached
    step_warning: bool
    final_residual: float
    time_model: tuple[float, float] = field(default=(0.0, 0.0))  # t(k) ≈ a + b k
    call: Callable[..., SolverResult] | None = field(default=None, repr=False)  # settings bound
    fastest: dict[float, float] = field(default_factory=dict)  # threshold -> fastest repeat


METHODS = {**SOLVERS, **BASELINES}
"""What the comparison can run: the splitting methods, and the generic DEQ baselines on the plain
map (Broyden, Anderson; no convergence guarantee, :data:`splitting.BASELINES`)."""


def solver_for(name: str, memory: int) -> Callable[..., SolverResult]:
    """The method ``name`` of :data:`METHODS`, with the Anderson memory bound."""
    solver = METHODS[name]
    return functools.partial(solver, memory=memory) if name.startswith("anderson") else solver


def measure(direction: str, name: str, alpha: float, problem: SplittingProblem, *, max_iter: int,
            memory: int) -> Run:
    """Solve ``problem`` by method ``name`` at step α to each of :data:`THRESHOLDS` in turn
    (loosest first, stopping at the first miss) and classify the run.

    Args:
        direction: ``"forward"`` or ``"backward"`` (a label; the problem says what is solved).
        name: a key of :data:`METHODS`.
        alpha: the step size.
        problem: the problem; its :meth:`~SplittingProblem.resolvent` is reused, as in training.
        max_iter: iteration cap per solve.
        memory: Anderson memory (pairs kept).
    """
    solver = solver_for(name, memory)
    step_limited = name in STEP_LIMITS  # FB, Anderson-FB, FBF: no resolvent, a step-size range
    resolvent = None if step_limited else problem.resolvent(alpha)
    call = functools.partial(solver, problem.op, problem.prox, problem.bias, alpha=alpha,
                             resolvent=resolvent)
    iterations: dict[float, int | None] = {eps: None for eps in THRESHOLDS}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            if step_limited:  # the method's step-size rule, checked once before the solves
                solver(problem.op, problem.prox, problem.bias, alpha=alpha, tol=1.0, max_iter=1,
                       check_step="warn")
            for eps in sorted(THRESHOLDS, reverse=True):
                if not reachable(eps, problem.bias[0].dtype):
                    break
                result = call(tol=eps, max_iter=max_iter)
                if not result.converged:
                    break
                iterations[eps] = result.iterations
    step_warning = any(issubclass(w.category, StepSizeWarning) for w in caught)
    trace = result.residuals.max(dim=1).values.cpu().tolist()  # one device-to-host copy
    z_norm = batch_norm(result.z)
    blew_up = (not bool(torch.isfinite(z_norm).all())
               or bool((z_norm > 100 * problem.reference_norm + 1e-8).any()))
    # No progress: the last residual is no better than the best of the first tenth of the run
    # (FB beyond its step limit oscillates with a bounded iterate when ReLU clips the unstable
    # direction; its residual never falls). Only a method without a convergence guarantee at
    # this α can fail to progress: step-limited methods inside their range converge (slowly at
    # small α: "not reached", never "div"). FB's first candidate is z0 = 0, whose relative
    # residual is huge or inf: not divergence.
    early = trace[: max(10, len(trace) // 10)]
    unguaranteed = step_limited and alpha >= STEP_LIMITS[name](problem.op)
    grew = (any(math.isnan(r) for r in trace)
            or (unguaranteed and len(trace) > len(early) and trace[-1] >= min(early)))
    tightest = min(e for e in THRESHOLDS if reachable(e, problem.bias[0].dtype))
    if iterations[tightest] is not None:
        status = "converged"
    elif blew_up or grew:
        status = "diverged"
    else:
        status = "not reached"
    return Run(direction, name, alpha, trace, iterations, {eps: None for eps in THRESHOLDS}, status,
               step_warning, final_residual=trace[-1] if trace else float("nan"), call=call)


def time_runs(runs: list[Run], repeats: int, device: torch.device = torch.device("cpu")) -> None:
    """Median wall time of each run's solve to each threshold it reached (and of one iteration).

    Rounds interleave all runs, so a change in the machine's load hits every method alike.
    """
    jobs = [(r, eps, eps) for r in runs for eps in THRESHOLDS
            if r.iterations[eps] is not None and r.status != "diverged"]
    jobs += [(r, None, min(THRESHOLDS)) for r in runs if r.status != "diverged" and r.trace]
    samples: dict[tuple[int, float | None], list[float]] = {(id(r), eps): [] for r, eps, _ in jobs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            for run, eps, tol in jobs:
                synchronize(device)
                start = time.perf_counter()
                # +1: on CUDA the stop is read one iteration late
                run.call(tol=tol, max_iter=run.iterations[eps] + 1 if eps is not None else 1)
                synchronize(device)
                samples[id(run), eps].append(time.perf_counter() - start)
    first = {}
    for run, eps, _ in jobs:
        if eps is None:
            first[id(run)] = statistics.median(samples[id(run), eps])
        else:
            run.times[eps] = statistics.median(samples[id(run), eps])
            run.fastest[eps] = min(samples[id(run), eps])
    for run in runs:
        run.time_model = _fit_time(run, first.get(id(run)))


def _fit_time(run: Run, one_iteration: float | None) -> tuple[float, float]:
    """t(k) ≈ a + b k through the one-iteration time and the longest timed run (for the plot)."""
    points = [(run.iterations[e], t) for e, t in run.times.items() if t is not None]
    if not points or one_iteration is None:
        return (0.0, 0.0)
    k, t = max(points)
    slope = (t - one_iteration) / (k - 1) if k > 1 else one_iteration
    return (one_iteration - slope, slope)


def best_alpha(runs: list[Run], direction: str, method: str, eps: float = 1e-4) -> Run | None:
    """The α with fewest iterations to ``eps`` (ties: less time, then larger α)."""
    candidates = [r for r in runs if r.direction == direction and r.method == method and r.iterations[eps]]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (r.iterations[eps], r.times[eps] or math.inf, -r.alpha))
