r"""Implicit differentiation through an equilibrium, shared by every splitting method.

Forward: solve :math:`z^\star = \sigma(Wz^\star + b)` without a graph, then apply the layer once
with the graph, :math:`z = \sigma(v)`, :math:`v = W\,\mathrm{sg}(z^\star) + b`. Backward: an identity
node on :math:`z` replaces the incoming gradient :math:`\bar g` by

.. math:: \tilde g = \bar g + W^\top u,\qquad u = (I - J W^\top)^{-1} J \bar g,\qquad J = \sigma'(v),

so that autograd through the single application yields :math:`J\tilde g = u`, the exact implicit
gradient with respect to :math:`v` (and from there to W's parameters, U, b and x).
:math:`u` solves the monotone inclusion :math:`0 \in (I - W^\top)u - \bar g + Du`,
:math:`D = J^{-1} - I`, by the same splitting method on :math:`W^\top`, reusing the forward
resolvent transposed. Memory is that of one layer application, whatever the iteration count.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ConvergenceWarning
from .operator import LinearOperator
from .prox import DiagonalQuadratic, Prox
from .result import SolverResult
from .state import State, tmap

Solver = Callable[..., SolverResult]


@dataclass
class EquilibriumStats:
    """Solver results of one equilibrium call; ``backward`` is filled when gradients flow."""

    forward: SolverResult
    backward: SolverResult | None = None


@dataclass
class _BackwardProblem:
    op: LinearOperator
    jacobian: State
    forward: SolverResult
    solver: Solver
    alpha: float
    tol: float
    max_iter: int
    stats: EquilibriumStats


class _ImplicitGradient(torch.autograd.Function):
    """Identity on z whose backward solves the transposed implicit system by splitting."""

    @staticmethod
    def forward(ctx, problem: _BackwardProblem, *z: torch.Tensor):  # type: ignore[override]
        ctx.problem = problem
        return tuple(t.clone() for t in z)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        p: _BackwardProblem = ctx.problem
        resolvent = p.forward.resolvent.transpose() if p.forward.resolvent is not None else None
        result = p.solver(p.op.transpose(), DiagonalQuadratic(p.jacobian), tuple(grads),
                          alpha=p.alpha, tol=p.tol, max_iter=p.max_iter, resolvent=resolvent)
        _warn_if_unconverged(result, "backward")
        p.stats.backward = result
        corrected = tmap(torch.add, tuple(grads), p.op.rmv(result.z))
        return (None, *corrected)


def equilibrium(
    op: LinearOperator,
    prox: Prox,
    bias: State,
    *,
    solver: Solver,
    alpha: float,
    tol: float,
    max_iter: int,
    z0: State | None = None,
    backward_tol: float | None = None,
    backward_max_iter: int | None = None,
) -> tuple[State, EquilibriumStats]:
    """Differentiable equilibrium :math:`z^\\star = \\sigma(Wz^\\star + b)`.

    Args:
        op: the operator W; its ``mv`` must be differentiable in W's parameters.
        prox: the nonlinearity σ.
        bias: Ux + b as a state (differentiable).
        solver: a splitting method with the shared signature (e.g. ``peaceman_rachford``);
            use ``functools.partial`` to fix extra options.
        alpha, tol, max_iter, z0: forward solver settings.
        backward_tol, backward_max_iter: backward solver settings (default: the forward ones).

    Returns:
        ``(z, stats)``: the state after one differentiable application of the layer at the
        solution, and the forward (and, after ``backward()``, backward) solver results.
    """
    with torch.no_grad():
        result = solver(op, prox, tuple(b.detach() for b in bias), alpha=alpha, tol=tol,
                        max_iter=max_iter, z0=z0)
    _warn_if_unconverged(result, "forward")
    stats = EquilibriumStats(forward=result)
    v = tmap(torch.add, op.mv(result.z), bias)
    z = prox.apply(v)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in z)):
        return z, stats
    with torch.no_grad():
        jacobian = tuple(prox.derivative(t.detach()) for t in v)
    problem = _BackwardProblem(op=op, jacobian=jacobian, forward=result, solver=solver, alpha=alpha,
                               tol=tol if backward_tol is None else backward_tol,
                               max_iter=max_iter if backward_max_iter is None else backward_max_iter,
                               stats=stats)
    return tuple(_ImplicitGradient.apply(problem, *z)), stats


def _warn_if_unconverged(result: SolverResult, which: str) -> None:
    if not result.converged:
        warnings.warn(
            f"{which} solve stopped after {result.iterations} iterations with relative residual "
            f"{result.max_residual:.3g} above tol; raise max_iter, loosen tol or tune alpha",
            ConvergenceWarning,
            stacklevel=3,
        )
