r"""Implicit differentiation of the mean-field equilibrium, with a block (non-elementwise) Jacobian.

At the fixed point :math:`q^\star = \sigma(v)`, :math:`v = Wq^\star + b`, the Jacobian of the
clamped softmax is the symmetric block matrix :math:`J = \mathrm{blkdiag}(\mathrm{diag}(q_i) -
q_iq_i^\top)` (0 on clamped variables). Differentiating gives
:math:`dq = (I - JW)^{-1}J\,dv_0`, so the gradient pushed into v is

.. math:: u = J(I - W^\top J)^{-1}\bar g = (I - JW^\top)^{-1}J\bar g
          \iff 0 \in (I - W^\top)u - \bar g + Du,\quad D = J^{+} - I \text{ on } \mathrm{range}(J),

exactly the library's backward problem (:class:`splitting.BackwardProblem`) with the elementwise
:math:`J` replaced by the block one; its nonlinearity :math:`\mathrm{prox}_{\beta D}` is
:class:`~mondeq.categorical.prox.LinearisedSimplex`. So the backward (and the forward-mode tangent)
runs the same splitting method on :math:`W^\top`, reusing the forward resolvent transposed, and
``converged`` means the same as forward. Nothing is unrolled.
"""
from __future__ import annotations

import torch
from torch import Tensor

from splitting import BackwardProblem, EquilibriumStats, LinearOperator, State
from splitting.errors import ConvergenceWarning, warn_at_caller
from splitting.state import tmap
from ..errors import UnsupportedDerivativeError
from .prox import LinearisedSimplex, SimplexEntropy


class CategoricalBackwardProblem(BackwardProblem):
    """:class:`splitting.BackwardProblem` with the block Jacobian of the clamped softmax."""

    @property
    def nonlinearity(self) -> LinearisedSimplex:  # type: ignore[override]
        if self._nonlinearity is None:
            self._nonlinearity = self.prox.linearisation(self.pre_activation)
        return self._nonlinearity


class _Settings:
    def __init__(self, problem, solver, alpha, tol, max_iter, stats) -> None:
        self.problem, self.solver, self.alpha = problem, solver, alpha
        self.tol, self.max_iter, self.stats = tol, max_iter, stats


class _MeanFieldNode(torch.autograd.Function):
    """Value: the solver's state q̂ (given detached after the tiers of v); derivatives: implicit."""

    @staticmethod
    def forward(settings: _Settings, *v_and_z: Tensor):  # type: ignore[override]
        return tuple(t.clone() for t in v_and_z[len(v_and_z) // 2:])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.settings = inputs[0]

    @staticmethod
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():
            raise UnsupportedDerivativeError("second-order derivatives through a categorical "
                                             "equilibrium are not implemented")
        s: _Settings = ctx.settings
        rhs = tuple(torch.zeros_like(t) if g is None else g.detach()
                    for g, t in zip(grads, s.problem.pre_activation))
        with torch.no_grad():
            result = s.problem.solve(rhs, solver=s.solver, alpha=s.alpha, tol=s.tol, max_iter=s.max_iter)
        _warn(result, "backward")
        s.stats.backward = result
        return (None, *result.z, *(None,) * len(result.z))

    @staticmethod
    def jvp(ctx, _settings_tangent, *tangents: Tensor):  # type: ignore[override]
        s: _Settings = ctx.settings
        v = s.problem.pre_activation
        tangents = tuple(torch.zeros_like(t) if dt is None else dt for dt, t in zip(tangents[:len(v)], v))
        result = s.problem.solve_tangent(tangents, solver=s.solver, alpha=s.alpha, tol=s.tol,
                                         max_iter=s.max_iter)
        _warn(result, "forward-mode tangent")
        s.stats.tangent = result
        return tuple(result.z)


def categorical_equilibrium(op: LinearOperator, prox: SimplexEntropy, bias: State, *, solver,
                            alpha: float, tol: float, max_iter: int, z0: State | None = None,
                            backward_tol: float | None = None,
                            backward_max_iter: int | None = None) -> tuple[State, EquilibriumStats]:
    r"""The mean-field fixed point :math:`q^\star = \sigma(Wq^\star + b)` with exact implicit
    derivatives (module docstring); arguments as :func:`splitting.equilibrium`.

    Returns:
        ``(q, stats)``: the solver's state (whose true residual ``stats.forward`` reports) and
        the forward (after ``backward()``, also the backward) solver results.
    """
    with torch.no_grad():
        result = solver(op, prox, tuple(b.detach() for b in bias), alpha=alpha, tol=tol,
                        max_iter=max_iter, z0=z0)
    _warn(result, "forward")
    stats = EquilibriumStats(forward=result)
    # an extrapolating method (Anderson-FB) returns an affine combination of clamped iterates,
    # one-hot only up to round-off: clamped variables are handed back exactly
    q_hat = prox.restrict(tuple(t.detach() for t in result.z))
    if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
        return q_hat, stats
    v = tmap(torch.add, op.mv(q_hat), bias)
    problem = CategoricalBackwardProblem(op, prox, tuple(t.detach() for t in v), result)
    settings = _Settings(problem, solver, alpha, tol if backward_tol is None else backward_tol,
                         max_iter if backward_max_iter is None else backward_max_iter, stats)
    return tuple(_MeanFieldNode.apply(settings, *v, *q_hat)), stats


def _warn(result, which: str) -> None:
    if not result.converged:
        warn_at_caller(f"{which} mean-field solve stopped after {result.iterations} iterations with "
                       f"true relative residual {result.max_residual:.3g} above tol; raise max_iter, "
                       f"loosen tol or change alpha", ConvergenceWarning)
