r"""The iteration loop shared by every splitting method: the stopping rule, the trace, timing.

What ``converged=True`` promises (one rule for every method, step size and operator): every
sample's **true** relative fixed-point residual

.. math:: r(z) = \frac{\|z - \sigma(Wz + b)\|}{\|z\|}

of the returned state is at most ``tol`` (with :math:`0/0 = 0`: a zero state counts only where
:math:`\sigma(Wz + b)` is exactly zero too, and :math:`x/0 = \infty` otherwise). There is no
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
on and proposes again only below a halved threshold. NaN never meets ``tol`` and stops the
solve as diverged.

On CUDA the stop decision is read one iteration late through a non-blocking copy of a two-flag
tensor, so the loop never waits for the device mid-solve; the solve then runs at most one
iteration past the first one at which every sample meets ``tol`` and reports that first
iteration's state and count.
"""
from __future__ import annotations

import functools
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
    (including ``0/0``), ∞ where ``z = 0 ≠ t``, NaN where either is not finite."""
    diff = batch_norm(tmap(torch.sub, z, target))
    return torch.where(diff == 0, 0.0, diff / batch_norm(z))


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


@dataclass
class _Record:
    """One iteration's candidate, its residual, and the device-side stop flags (ok, nan)."""

    k: int
    z: State
    residual: Tensor
    flags: Tensor
    event: torch.cuda.Event | None = None
    true_residual: Tensor | None = None


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
    threshold = torch.full_like(batch_norm(bias), float(tol))  # per sample: see decide()
    # per sample: iterations it took part in (frozen ones do not count), and that count when
    # its candidate last came below its threshold (0: not yet)
    work = torch.zeros(threshold.shape, dtype=torch.int64, device=device)
    settled = torch.zeros_like(work)
    trace: list[Tensor] = []
    active: Tensor | None = None
    previous: _Record | None = None
    pending: _Record | None = None
    final: _Record | None = None
    converged = False
    host_flags = torch.empty(2, dtype=torch.bool, pin_memory=True) if lagged else None
    # Samples whose solution is exactly 0 get it exactly (a verified answer, not a floor): iterates only approach 0 geometrically,
    # and no relative residual can accept a tiny nonzero state (nor should it).
    zero = zero_solution_samples(prox, bias)

    def decide(record: _Record) -> str:
        nonlocal threshold, active, settled
        ok, nan = (host_flags if lagged else record.flags).tolist()
        if nan:
            return "diverged"
        if not ok:
            return "go"
        if exact:
            record.true_residual = record.residual
            return "converged"
        direct = _detached_residual(op, prox, bias, record.z)
        if bool((direct <= tol).all()):
            record.true_residual = direct
            return "converged"
        # the estimate was optimistic for these samples: they propose again only when tighter
        # (per sample, so that a masked batch behaves as its samples solved alone)
        failed = ~(direct <= tol)
        threshold = torch.where(failed, 0.5 * threshold, threshold)
        settled = settled.masked_fill(failed, 0)
        if active is not None:
            active = active | failed
        return "go"

    for k in range(1, int(max_iter) + 1):
        new_carry, z, res = step(carry)
        work = work + 1 if active is None else work + active
        if zero is not None:
            z = _keep_inactive(~zero, z, tuple(torch.zeros_like(t) for t in z))
            res = res.masked_fill(zero, 0.0)
        if active is not None:
            new_carry = _keep_inactive(active, new_carry, carry)
            z = _keep_inactive(active, z, previous.z)
            res = torch.where(active, res, previous.residual)
        carry = new_carry
        trace.append(res)
        below = res <= threshold  # NaN is never below
        settled = torch.where((settled == 0) & below, work, settled)
        if mask:
            active = ~below
        record = _Record(k, z, res, torch.stack((below.all(), torch.isnan(res).any())))
        previous = record
        if lagged:
            if pending is not None:
                pending.event.synchronize()
                outcome = decide(pending)
                if outcome != "go":
                    final, converged = pending, outcome == "converged"
                    break
            host_flags_next = record.flags
            record.event = torch.cuda.Event()
            host_flags.copy_(host_flags_next, non_blocking=True)
            record.event.record()
            pending = record
        else:
            outcome = decide(record)
            if outcome != "go":
                final, converged = record, outcome == "converged"
                break
    else:
        if lagged and pending is not None:
            pending.event.synchronize()
            converged = decide(pending) == "converged"
        final = previous
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
        sample_iterations=torch.where(settled > 0, settled, final.k).clamp(max=final.k),
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
    zero = batch_norm(prox.apply(bias)) == 0
    if bias[0].device.type != "cuda" and not bool(zero.any()):
        return None
    return zero
