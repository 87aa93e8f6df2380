"""The iteration loop shared by every splitting method: stopping, residual trace, timing."""
from __future__ import annotations

import functools
import time
from typing import Callable, TypeVar

import torch
from torch import Tensor

from .errors import InvalidSettingError, StateShapeError
from .operator import LinearOperator, Resolvent
from .prox import Prox
from .result import SolverResult
from .state import State, relative_change, roundoff_floor, tmap

Carry = TypeVar("Carry")
RESIDUALS = ("step", "fixed_point")


def natural_residual(op: LinearOperator, prox: Prox, bias: State, z: State) -> Tensor:
    r"""Per-sample relative fixed-point residual :math:`\|z - \sigma(Wz + b)\| / \|z\|`."""
    target = prox.apply(tmap(torch.add, op.mv(z), bias))
    return relative_change(z, target, floor=roundoff_floor(bias))


@torch.no_grad()
def _detached_residual(op: LinearOperator, prox: Prox, bias: State, z: State) -> Tensor:
    return natural_residual(op, prox, bias, tuple(t.detach() for t in z))


def check_settings(op: LinearOperator, bias: State, *, tol: float, max_iter: int, residual: str,
                   z0: State | None) -> None:
    """Validate solver settings and shapes; raise a typed error naming the bad value."""
    if not tol > 0:
        raise InvalidSettingError(f"tol must be > 0, got {tol}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise InvalidSettingError(f"max_iter must be a positive integer, got {max_iter}")
    if residual not in RESIDUALS:
        raise InvalidSettingError(f"residual must be one of {RESIDUALS}, got {residual!r}")
    for name, state in (("bias", bias), ("z0", z0)):
        if state is None:
            continue
        shapes = tuple(tuple(t.shape[1:]) for t in state)
        if shapes != op.state_shape:
            raise StateShapeError(f"{name} has per-sample shapes {shapes}, the operator expects {op.state_shape}")


def iterate(
    step: Callable[[Carry], tuple],
    carry: Carry,
    z: State,
    *,
    op: LinearOperator,
    prox: Prox,
    bias: State,
    tol: float,
    max_iter: int,
    residual: str,
    start: float,
    resolvent: Resolvent | None,
    mask: bool = False,
    step_residual: bool = False,
) -> SolverResult:
    """Run ``carry, z = step(carry)`` until every sample's relative residual is ≤ tol.

    ``residual="step"`` measures ‖z_{k+1} − z_k‖/‖z_{k+1}‖ (cheap); ``"fixed_point"`` measures the
    true residual ‖z − σ(Wz + b)‖/‖z‖ (one more operator application per iteration). On CUDA the
    stopping test synchronises only every few iterations.

    Args:
        step: one iteration, ``carry -> (carry, z)``, or ``carry -> (carry, z, res)`` with
            ``step_residual=True``. It must not modify ``carry`` in place where ``mask`` is used.
        mask: freeze every sample from the iteration its residual reaches ``tol``: its carry,
            ``z`` and residual stop changing (``torch.where`` on each carry tensor, every
            tensor in the carry batch first). Each sample's result is then the one it would
            get solved on its own, whatever its batch mates. Off by default: it costs a few
            elementwise operations per iteration and saves no arithmetic.
        step_residual: ``step`` returns its own per-sample step residual (used when
            ``residual="step"``), for methods whose iterates are not consecutive estimates
            (Anderson's rejected steps leave ``z`` unchanged; a zero change is not convergence).
    """
    check_every = 1 if z[0].device.type == "cpu" else 8
    divergence_every = 10 * check_every
    floor = roundoff_floor(bias)
    trace: list[Tensor] = []
    converged = False
    active: Tensor | None = None
    for k in range(1, int(max_iter) + 1):
        if step_residual:
            new_carry, z_new, own = step(carry)
        else:
            new_carry, z_new = step(carry)
        if residual == "step":
            res = own if step_residual else relative_change(z_new, z, floor=floor)
        else:
            res = natural_residual(op, prox, bias, z_new)
        if active is not None:
            new_carry = _keep_inactive(active, new_carry, carry)
            z_new = _keep_inactive(active, z_new, z)
            res = torch.where(active, res, trace[-1])
        carry, z = new_carry, z_new
        trace.append(res)
        if mask:
            active = ~(res <= tol)  # NaN stays active, so divergence is still detected
        if (k % check_every == 0 or k == max_iter) and bool(res.max() <= tol):
            converged = True
            break
        if k % divergence_every == 0 and not bool(torch.isfinite(res).all()):
            break  # diverged (e.g. FB with too large α): stop and report converged=False
    if z[0].device.type != "cpu":
        torch.cuda.synchronize(z[0].device)
    residuals = torch.stack(trace)
    return SolverResult(
        z=z,
        iterations=len(trace),
        residuals=residuals,
        converged=converged,
        time=time.perf_counter() - start,
        residual_fn=functools.partial(_detached_residual, op, prox, bias, z),
        resolvent=resolvent,
        sample_iterations=first_below(residuals, tol),
    )


def first_below(residuals: Tensor, tol: float) -> Tensor:
    """Per sample, the 1-based iteration at which ``residuals`` (iterations × batch) first is ≤ tol;
    the number of iterations for samples that never reach it."""
    hit = residuals <= tol
    first = hit.to(torch.uint8).argmax(dim=0) + 1
    return torch.where(hit.any(dim=0), first, residuals.shape[0])


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

