r"""The iteration loop shared by every splitting method: the stopping rule, the trace, timing.

What ``converged=True`` promises (one rule for every method, step size and operator): every
sample's **true** relative fixed-point residual

.. math:: r(z) = \frac{\|z - \sigma(Wz + b)\|}{\|z\|}

of the returned state is at most ``tol`` (with :math:`0/0 = 0`: a zero state counts only where
:math:`\sigma(Wz + b)` is exactly zero too; a zero state with a nonzero target gets a residual of
order ‖t‖/tiny, never below any usable tol). There is no
round-off floor: a state is never accepted because it is small.

Each method's step hands the loop a *candidate* state and a per-sample residual for it, computed
from quantities the step already has (no extra application of W):

* forward-backward evaluates :math:`Wz_k` anyway, so it knows :math:`r(z_k)` exactly
  (``exact=True``); the candidate is the step's input;
* the Rachford methods know :math:`W z_{1/2} + b = z_{1/2} + (z_{1/2} - u_{1/2})/\alpha` from the
  resolvent equation, so :math:`r(z_{1/2})` estimates :math:`r(z)` of the new iterate
  :math:`z = \mathrm{prox}_{\alpha f}(u)` at the price of two elementwise passes.

An estimate only *proposes* a stop: the loop then computes :math:`r(z)` directly (one application
of W, once per solve in practice) and stops only if every sample meets ``tol``; otherwise it goes
on, and the samples that failed propose again only below a threshold calibrated to how optimistic
their estimate was. A solve that reaches ``max_iter`` checks its last state directly once. NaN
never meets ``tol`` and stops the solve as diverged.

On CUDA the stop decision is read one iteration late through a non-blocking copy of one scalar
(the worst residual over its threshold), so the loop never waits for the device mid-solve; the solve then runs at most one
iteration past the first one at which every sample meets ``tol`` and reports that first
iteration's state and count.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from torch import Tensor

from .errors import InvalidSettingError, StateShapeError
from .operator import LinearOperator, Resolvent
from .prox import Prox
from .result import SolverResult
from .state import State, batch_norm, tmap

Carry = TypeVar("Carry")


def relative_residual(z: State, target: State) -> Tensor:
    r"""Per-sample :math:`\|z - t\| / \|z\|`, shape (batch,): 0 where ``z == t`` exactly
    (including ``0/0``), huge (≥ ‖z − t‖/tiny) where ``z = 0 ≠ t``, NaN where either is not
    finite (the denominator is clamped at the dtype's smallest normal number)."""
    diff = batch_norm(tmap(torch.sub, z, target))
    return diff / batch_norm(z).clamp_min(torch.finfo(diff.dtype).tiny)


def natural_residual(op: LinearOperator, prox: Prox, bias: State, z: State) -> Tensor:
    r"""Per-sample true relative fixed-point residual :math:`\|z - \sigma(Wz + b)\| / \|z\|`."""
    return relative_residual(z, prox.apply(tmap(torch.add, op.mv(z), bias)))


@torch.no_grad()
def _detached_residual(op: LinearOperator, prox: Prox, bias: State, z: State) -> Tensor:
    return natural_residual(op, prox, bias, tuple(t.detach() for t in z))


def check_settings(op: LinearOperator, bias: State, *, tol: float, max_iter: int,
                   z0: State | None) -> None:
    """Validate solver settings and shapes; raise a typed error naming the bad value."""
    if not 0 < tol < float("inf"):
        raise InvalidSettingError(f"tol must be > 0 and finite, got {tol}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise InvalidSettingError(f"max_iter must be a positive integer, got {max_iter}")
    for name, state in (("bias", bias), ("z0", z0)):
        if state is None:
            continue
        shapes = tuple(tuple(t.shape[1:]) for t in state)
        if shapes != op.state_shape:
            raise StateShapeError(f"{name} has per-sample shapes {shapes}, the operator expects {op.state_shape}")
        if state[0].shape[0] == 0:
            raise StateShapeError(f"{name} is an empty batch (0 samples); pass at least one sample")


@dataclass(slots=True)
class _Record:
    """One iteration's candidate, its residual, and its stop score (see :class:`_Stopping`)."""

    k: int
    z: State
    residual: Tensor
    score: Tensor
    scale: float = 1.0  # the score's host-side divisor (see :meth:`_Stopping.score`)
    event: torch.cuda.Event | None = None
    true_residual: Tensor | None = None


class _Stopping:
    """The stopping bookkeeping of :func:`iterate`.

    Every sample has a proposal threshold, ``tol`` until a confirmation fails for it, then
    calibrated to the estimate's observed optimism (:meth:`failed`). One scalar per iteration
    decides: the worst ``residual / threshold`` (NaN propagates), so the host reads a single
    number (on CUDA one iteration late, from pinned memory). Per-sample iteration counts come from the trace at the end, or, with masking, from
    counters updated on the device.
    """

    def __init__(self, tol: float, batch: int, device: torch.device, mask: bool) -> None:
        self.tol = float(tol)
        self.threshold: float | Tensor = self.tol
        self.reset_at: int | Tensor = 0  # per sample after a failed confirmation (none: no tensor)
        self.mask = mask
        self.active: Tensor | None = None
        if mask:  # iterations each sample took part in, and that count when it last settled
            self.work = torch.zeros(batch, dtype=torch.int64, device=device)
            self.settled = torch.zeros_like(self.work)

    def score(self, residual: Tensor) -> tuple[Tensor, float]:
        """A 0-d tensor ``s`` and a divisor ``d`` applied on the host: ``s / d ≤ 1`` iff every
        sample is below its threshold; NaN if any residual is. (With one threshold for all,
        the division by it is done on the host: one device operation less per iteration.)"""
        if isinstance(self.threshold, float):
            return residual.max(), self.threshold
        return (residual / self.threshold).max(), 1.0

    def after_step(self, residual: Tensor) -> None:
        if self.mask:
            self.work = self.work + (1 if self.active is None else self.active)
            below = residual <= self.threshold  # NaN is never below
            self.settled = torch.where((self.settled == 0) & below, self.work, self.settled)
            self.active = ~below

    def failed(self, direct: Tensor, estimate: Tensor, k: int) -> None:
        """A confirmation found ``direct > tol`` for some samples: tighten and unfreeze them.

        Their threshold becomes the estimate that corresponds to 0.9·tol at the ratio just
        observed, ``0.9·tol·estimate/direct``, kept below 0.9 of the old threshold (progress)
        and above tol/1024 (an estimate of exactly 0 cannot stall the solve).
        """
        failed = ~(direct <= self.tol)
        threshold = torch.full_like(direct, self.tol) if isinstance(self.threshold, float) else self.threshold
        calibrated = torch.minimum(0.9 * self.tol * estimate / direct, 0.9 * threshold).clamp(min=self.tol / 1024)
        self.threshold = torch.where(failed, calibrated, threshold)
        reset_at = torch.zeros_like(failed, dtype=torch.int64) if isinstance(self.reset_at, int) else self.reset_at
        self.reset_at = torch.where(failed, k, reset_at)
        if self.mask:
            self.settled = self.settled.masked_fill(failed, 0)
            self.active = self.active | failed

    def sample_iterations(self, residuals: Tensor) -> Tensor:
        """Per sample, the iteration from which it met its threshold (its last count if never)."""
        n = residuals.shape[0]
        if self.mask:
            return torch.where(self.settled > 0, self.settled, n).clamp(max=n)
        steps = torch.arange(1, n + 1, device=residuals.device).unsqueeze(1)
        hit = (residuals <= self.threshold) & (steps > self.reset_at)
        first = hit.to(torch.uint8).argmax(dim=0) + 1
        return torch.where(hit.any(dim=0), first, n)


def iterate(
    step: Callable[[Carry], tuple],
    carry: Carry,
    *,
    op: LinearOperator,
    prox: Prox,
    bias: State,
    tol: float,
    max_iter: int,
    start: float,
    resolvent: Resolvent | None,
    exact: bool,
    mask: bool = False,
) -> SolverResult:
    """Run ``carry, candidate, residual = step(carry)`` until every sample's true residual ≤ tol.

    Args:
        step: one iteration; ``candidate`` is a state and ``residual`` its per-sample relative
            residual, exact or an estimate (see ``exact``). It must not modify ``carry`` in place.
        exact: ``residual`` is the true residual of ``candidate`` (no confirmation needed).
        mask: freeze every sample from the iteration its residual reaches the threshold: its
            carry, candidate and residual stop changing (``torch.where`` on each carry tensor,
            every tensor in the carry batch first). Each sample's result is then the one it
            would get solved on its own, whatever its batch mates. A sample whose confirmation
            fails is unfrozen.
        Other arguments: the problem (``op``, ``prox``, ``bias``), settings, the start time and
        the resolvent to hand to the result.
    """
    device = bias[0].device
    lagged = device.type == "cuda"
    stopping = _Stopping(tol, bias[0].shape[0], device, mask)
    trace: list[Tensor] = []
    previous: _Record | None = None
    pending: _Record | None = None
    final: _Record | None = None
    converged = False
    host_score = torch.empty((), dtype=bias[0].dtype, pin_memory=True) if lagged else None
    # Samples whose solution is exactly 0 get it exactly (a verified answer, not a floor):
    # iterates only approach 0 geometrically, and no relative residual accepts a tiny state.
    zero = zero_solution_samples(prox, bias)

    def decide(record: _Record, score: float) -> str:
        if score != score:  # NaN: a non-finite state
            return "diverged"
        if not score <= 1.0:
            return "go"
        if exact:
            record.true_residual = record.residual
            return "converged"
        direct = _detached_residual(op, prox, bias, record.z)
        if bool((direct <= tol).all()):
            record.true_residual = direct
            return "converged"
        stopping.failed(direct, record.residual, record.k)  # the estimate was optimistic for these samples
        return "go"

    for k in range(1, int(max_iter) + 1):
        new_carry, z, res = step(carry)
        if zero is not None:
            z = _keep_inactive(~zero, z, tuple(torch.zeros_like(t) for t in z))
            res = res.masked_fill(zero, 0.0)
        if stopping.active is not None:
            new_carry = _keep_inactive(stopping.active, new_carry, carry)
            z = _keep_inactive(stopping.active, z, previous.z)
            res = torch.where(stopping.active, res, previous.residual)
        carry = new_carry
        trace.append(res)
        stopping.after_step(res)
        record = previous = _Record(k, z, res, *stopping.score(res))
        if lagged:  # decide on the previous iteration while this one runs on the device
            if pending is not None:
                pending.event.synchronize()
                thresholds = stopping.threshold
                outcome = decide(pending, float(host_score) / pending.scale)
                if outcome != "go":
                    final, converged = pending, outcome == "converged"
                    break
                if stopping.threshold is not thresholds:  # a failed confirmation tightened them:
                    record.score, record.scale = stopping.score(res)  # score it as the host loop does
            host_score.copy_(record.score, non_blocking=True)
            record.event = torch.cuda.Event()
            record.event.record()
            pending = record
        else:
            outcome = decide(record, float(record.score) / record.scale)
            if outcome != "go":
                final, converged = record, outcome == "converged"
                break
    else:
        final = previous
        if lagged and pending is not None:
            pending.event.synchronize()
            converged = decide(pending, float(host_score) / pending.scale) == "converged"
        if not converged and not exact:
            # the cap came while estimates sat above tightened thresholds (round-off level in
            # float32): the last state may still meet tol, so check it directly once
            direct = _detached_residual(op, prox, bias, final.z)
            final.true_residual = direct
            converged = bool((direct <= tol).all())
    residuals = torch.stack(trace[: final.k])
    true_residual = final.true_residual
    return SolverResult(
        z=final.z,
        iterations=final.k,
        residuals=residuals,
        converged=converged,
        time=time.perf_counter() - start,
        residual_fn=(functools.partial(_detached_residual, op, prox, bias, final.z)
                     if true_residual is None else functools.partial(_constant, true_residual)),
        resolvent=resolvent,
        sample_iterations_fn=functools.partial(stopping.sample_iterations, residuals),
    )


def _constant(value: Tensor) -> Tensor:
    return value


def _keep_inactive(active: Tensor, new, old):
    """``new`` for active samples, ``old`` for frozen ones, over a (nested tuple) carry."""
    if isinstance(new, Tensor):
        return torch.where(active.view(-1, *(1,) * (new.ndim - 1)), new, old)
    if isinstance(new, tuple):
        return tuple(_keep_inactive(active, n, o) for n, o in zip(new, old))
    return new  # non-tensor bookkeeping (counters) is shared by the batch


def initial_state(op: LinearOperator, bias: State, z0: State | None) -> State:
    """The warm start ``z0`` if given, else zeros like the bias."""
    return tuple(t.clone() for t in z0) if z0 is not None else tuple(torch.zeros_like(t) for t in bias)


def zero_solution_samples(prox: Prox, bias: State) -> Tensor | None:
    r"""Per-sample mask of problems whose solution is exactly :math:`z^\star = 0`, i.e.
    :math:`\sigma(b) = 0` (then :math:`\sigma(W0 + b) = 0`, and the solution is unique); ``None``
    when there is none (checked on the host only off CUDA)."""
    nonzero = None
    for t in prox.apply(bias):
        tier = t.reshape(t.shape[0], -1).any(dim=1)
        nonzero = tier if nonzero is None else nonzero | tier
    if bias[0].device.type != "cuda" and bool(nonzero.all()):
        return None
    return ~nonzero


#: A solve has stalled when its best residual over the last third of the iterations is no better
#: than this fraction of the best one before, and its true residual is within ``FLOOR_EPS`` machine
#: epsilons of the dtype: rounding, not the iteration count, then decides what it reaches.
STALL_PROGRESS = 0.5
FLOOR_EPS = 1e4


def unconverged_advice(result: SolverResult) -> str:
    """What helps a solve that ended above ``tol``: more iterations (or a better α) while the
    residual still falls; float64 or a looser ``tol`` when it stalls at the dtype's round-off
    floor (more iterations cannot help there)."""
    worst = float(result.true_residual.max())
    dtype = result.z[0].dtype
    trace = result.residuals.amax(dim=1) if result.residuals.ndim == 2 else result.residuals
    n = len(trace)
    if n >= 6 and dtype.is_floating_point and worst <= FLOOR_EPS * torch.finfo(dtype).eps:
        cut = n - max(n // 3, 2)
        before, after = float(trace[:cut].min()), float(trace[cut:].min())
        if after > STALL_PROGRESS * before:
            looser = f"{10 ** math.ceil(math.log10(2 * worst)):g}"
            return (f"it stalled at the round-off floor of {str(dtype).removeprefix('torch.')} (no progress "
                    f"over the last {n - cut} iterations; more iterations will not help): solve in "
                    f"float64 (model.double()) or loosen tol to {looser} or more")
    return "raise max_iter, loosen tol or tune alpha"
