r"""Implicit differentiation through an equilibrium, shared by every splitting method.

Forward: solve :math:`z^\star = \sigma(Wz^\star + b)` without a graph, then apply the layer once
with the graph, :math:`v = W\,\mathrm{sg}(z^\star) + b`, :math:`z = \sigma(v)`. The nonlinearity
is a custom node whose backward replaces the gradient :math:`\bar g` arriving at :math:`z` by the
exact implicit gradient with respect to :math:`v`,

.. math:: u = (I - J W^\top)^{-1} J \bar g,\qquad J = \sigma'(v).

(Differentiating :math:`z^\star = \sigma(Wz^\star + b)` gives :math:`dz = J(W\,dz + dv_0)` with
:math:`dv_0 = dW\,z^\star + db` the change of :math:`v` at fixed :math:`z^\star`, so
:math:`dz = (I - JW)^{-1}J\,dv_0`, and :math:`((I - JW)^{-1}J)^\top = (I - JW^\top)^{-1}J` by
the push-through identity.) Autograd carries :math:`u` from :math:`v` to W's parameters, U, b
and x. :math:`u` solves the monotone inclusion :math:`0 \in (I - W^\top)u - \bar g + Du`,
:math:`D = J^{-1} - I`, by the same splitting method on :math:`W^\top`, reusing the forward
resolvent transposed. Memory is that of one layer application, whatever the iteration count,
and the backward pass costs the solve plus the parameter gradients of one application of W.
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


class _ImplicitNonlinearity(torch.autograd.Function):
    r""":math:`z = \sigma(v)` whose backward returns the implicit gradient :math:`u` for :math:`v`."""

    @staticmethod
    def forward(ctx, problem: _BackwardProblem, prox: Prox, *v: torch.Tensor):  # type: ignore[override]
        ctx.problem = problem
        return prox.apply(v)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        p: _BackwardProblem = ctx.problem
        resolvent = p.forward.resolvent.transpose() if p.forward.resolvent is not None else None
        result = p.solver(p.op.transpose(), DiagonalQuadratic(p.jacobian), grads,
                          alpha=p.alpha, tol=p.tol, max_iter=p.max_iter, resolvent=resolvent)
        _warn_if_unconverged(result, "backward")
        p.stats.backward = result
        return (None, None, *result.z)


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
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in v)):
        return prox.apply(v), stats
    with torch.no_grad():
        jacobian = tuple(prox.derivative(t.detach()) for t in v)
    problem = _BackwardProblem(op=op, jacobian=jacobian, forward=result, solver=solver, alpha=alpha,
                               tol=tol if backward_tol is None else backward_tol,
                               max_iter=max_iter if backward_max_iter is None else backward_max_iter,
                               stats=stats)
    return tuple(_ImplicitNonlinearity.apply(problem, prox, *v)), stats


def _warn_if_unconverged(result: SolverResult, which: str) -> None:
    if not result.converged:
        warnings.warn(
            f"{which} solve stopped after {result.iterations} iterations with relative residual "
            f"{result.max_residual:.3g} above tol; raise max_iter, loosen tol or tune alpha",
            ConvergenceWarning,
            stacklevel=3,
        )
