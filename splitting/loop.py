"""The iteration loop shared by every splitting method: stopping, residual trace, timing."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

import torch
from torch import Tensor

from .errors import InvalidSettingError, StateShapeError
from .operator import LinearOperator, Resolvent
from .prox import Prox
from .result import SolverResult
from .state import State, relative_change, tmap

Carry = TypeVar("Carry")
RESIDUALS = ("step", "fixed_point")


def natural_residual(op: LinearOperator, prox: Prox, bias: State, z: State) -> Tensor:
    r"""Per-sample relative fixed-point residual :math:`\|z - \sigma(Wz + b)\| / \|z\|`."""
    target = prox.apply(tmap(torch.add, op.mv(z), bias))
    return relative_change(z, target)


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
    step: Callable[[Carry], tuple[Carry, State]],
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
) -> SolverResult:
    """Run ``carry, z = step(carry)`` until every sample's relative residual is ≤ tol.

    ``residual="step"`` measures ‖z_{k+1} − z_k‖/‖z_{k+1}‖ (cheap); ``"fixed_point"`` measures the
    true residual ‖z − σ(Wz + b)‖/‖z‖ (one more operator application per iteration). On CUDA the
    stopping test synchronises only every few iterations.
    """
    check_every = 1 if z[0].device.type == "cpu" else 8
    divergence_every = 10 * check_every
    trace: list[Tensor] = []
    converged = False
    for k in range(1, int(max_iter) + 1):
        carry, z_new = step(carry)
        if residual == "step":
            res = relative_change(z_new, z)
        else:
            res = natural_residual(op, prox, bias, z_new)
        z = z_new
        trace.append(res)
        if (k % check_every == 0 or k == max_iter) and bool(res.max() <= tol):
            converged = True
            break
        if k % divergence_every == 0 and not bool(torch.isfinite(res).all()):
            break  # diverged (e.g. FB with too large α): stop and report converged=False
    if z[0].device.type != "cpu":
        torch.cuda.synchronize(z[0].device)
    return SolverResult(
        z=z,
        iterations=len(trace),
        residuals=torch.stack(trace),
        converged=converged,
        time=time.perf_counter() - start,
        true_residual=natural_residual(op, prox, bias, z),
        resolvent=resolvent,
    )


def initial_state(op: LinearOperator, bias: State, z0: State | None) -> State:
    """The warm start ``z0`` if given, else zeros like the bias."""
    return tuple(t.clone() for t in z0) if z0 is not None else tuple(torch.zeros_like(t) for t in bias)

