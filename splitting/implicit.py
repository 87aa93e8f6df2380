r"""Implicit differentiation through an equilibrium, shared by every splitting method.

Forward: solve :math:`\hat z \approx z^\star = \sigma(Wz^\star + b)` without a graph. The value
handed back is the solver's own state :math:`\hat z`, the one whose true residual the stopping
rule confirmed, so ``converged=True`` and ``result.true_residual`` describe exactly what the user
holds. (Applying the layer once more, :math:`\sigma(W\hat z + b)`, would multiply the error by up
to :math:`\|W\|_2`: on hard operators that state missed ``tol`` by up to 22×.)

The gradient is attached without changing that value: the pre-activation
:math:`v = W\,\mathrm{sg}(\hat z) + b` is computed with the graph (so autograd reaches W's
parameters, U, b and x), and a custom node maps :math:`v` to :math:`\hat z` in value, with the
exact implicit derivatives of the equilibrium. Its backward turns the gradient :math:`\bar g`
arriving at :math:`z` into

.. math:: u = (I - J W^\top)^{-1} J \bar g,\qquad J = \sigma'(v).

(Differentiating :math:`z^\star = \sigma(Wz^\star + b)` gives :math:`dz = J(W\,dz + dv_0)` with
:math:`dv_0 = dW\,z^\star + db` the change of :math:`v` at fixed :math:`z^\star`, so
:math:`dz = (I - JW)^{-1}J\,dv_0`, and :math:`((I - JW)^{-1}J)^\top = (I - JW^\top)^{-1}J` by
the push-through identity.) :math:`u` solves the monotone inclusion
:math:`0 \in (I - W^\top)u - \bar g + Du`, :math:`D = J^{-1} - I`, by the same splitting method
on :math:`W^\top`, reusing the forward resolvent transposed. Memory is that of one layer
application, whatever the iteration count, and the backward pass costs the solve plus the
parameter gradients of one application of W. Under ``torch.inference_mode`` no graph can be
asked for, so W is not applied again at all.

Forward mode (``torch.autograd.forward_ad``, ``torch.func.jvp``) is exact in the same way: the
tangent :math:`\dot z = (I - JW)^{-1}J\dot v` solves :math:`\dot z = J(W\dot z + \dot v)`, the
equilibrium of a layer with nonlinearity :math:`J` and bias :math:`\dot v`, by the same method and
the forward resolvent; the tangent returned is that solve's state, under the same ``converged``
rule. Second-order derivatives (double backward, ``hvp``) and vmap-based
transforms (``jacrev``, ``jacfwd``) raise :class:`~splitting.errors.UnsupportedDerivativeError`;
``torch.autograd.functional.jacobian`` (one backward per output) is exact.

Under ``torch.autocast`` the solve, the resolvent and the differentiable application run in the
operator's dtype (float32 or float64): the bias is cast up, autocast is off inside.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .errors import ConvergenceWarning, UnsupportedDerivativeError
from .operator import LinearOperator
from .prox import DiagonalQuadratic, Prox
from .result import SolverResult
from .state import State, tmap

Solver = Callable[..., SolverResult]


@dataclass
class EquilibriumStats:
    """Solver results of one equilibrium call; ``backward`` is filled when gradients flow
    (and ``tangent`` when a forward-mode derivative is taken)."""

    forward: SolverResult
    backward: SolverResult | None = None
    tangent: SolverResult | None = None


@dataclass
class _Problem:
    """What the derivative solves need: the operator, the pre-activation at the solution, the
    forward result (its resolvent) and the solver settings."""

    op: LinearOperator
    prox: Prox
    pre_activation: State
    forward: SolverResult
    solver: Solver
    alpha: float
    tol: float
    max_iter: int
    stats: EquilibriumStats
    _jacobian: State | None = field(default=None, repr=False)

    @property
    def jacobian(self) -> State:
        r""":math:`J = \sigma'(v)` at the solution's pre-activation (computed once)."""
        if self._jacobian is None:
            self._jacobian = tuple(self.prox.derivative(t) for t in self.pre_activation)
        return self._jacobian

    def solve(self, op: LinearOperator, rhs: State, resolvent, *, mode: str) -> SolverResult:
        try:
            return self.solver(op, DiagonalQuadratic(self.jacobian), rhs, alpha=self.alpha,
                               tol=self.tol, max_iter=self.max_iter, resolvent=resolvent)
        except RuntimeError as error:  # vmap cannot run the solver's data-dependent stopping test
            if "vmap" in str(error):
                raise UnsupportedDerivativeError(VMAP_MESSAGE.format(mode=mode)) from error
            raise


class _ImplicitNonlinearity(torch.autograd.Function):
    r"""The node :math:`v \mapsto \hat z`: its value is the solver's state :math:`\hat z` (passed
    detached after the tiers of :math:`v`), its derivatives are those of the equilibrium: the
    backward returns :math:`u = (I - JW^\top)^{-1}J\bar g` for :math:`v`, the forward-mode rule
    returns :math:`(I - JW)^{-1}J\dot v`."""

    @staticmethod
    def forward(problem: _Problem, prox: Prox, *v_and_z: Tensor):  # type: ignore[override]
        # a copy, so that the caller's in-place edits never reach the solver's result
        return tuple(t.clone() for t in v_and_z[len(v_and_z) // 2:])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.problem = inputs[0]
        # kept (not copied) only so that a differentiable backward can anchor its refusal to them
        ctx.save_for_backward(*inputs[2:2 + len(output)])

    @staticmethod
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        _refuse_batched(grads, "reverse")
        p: _Problem = ctx.problem
        resolvent = p.forward.resolvent.transpose() if p.forward.resolvent is not None else None
        with torch.no_grad():
            rhs = tuple(torch.zeros_like(t) if g is None else g.detach()
                        for g, t in zip(grads, p.pre_activation))
            result = p.solve(p.op.transpose(), rhs, resolvent, mode="reverse")
        _warn_if_unconverged(result, "backward")
        p.stats.backward = result
        u = result.z
        if torch.is_grad_enabled():  # create_graph=True: u depends on W, J and ḡ in ways not traced
            u = _RefuseSecondOrder.apply(len(u), *u, *grads, *ctx.saved_tensors)
        return (None, None, *u, *(None,) * len(u))

    @staticmethod
    def jvp(ctx, _problem_tangent, _prox_tangent, *tangents: Tensor):  # type: ignore[override]
        p: _Problem = ctx.problem
        tangents = tangents[:len(p.pre_activation)]  # ẑ enters detached: no tangent of its own
        _refuse_batched(tangents, "forward")
        tangents = tuple(torch.zeros_like(t) if d is None else d for d, t in zip(tangents, p.pre_activation))
        result = p.solve(p.op, tangents, p.forward.resolvent, mode="forward")
        _warn_if_unconverged(result, "forward-mode tangent")
        p.stats.tangent = result
        return tuple(result.z)

    @staticmethod
    def vmap(info, in_dims, *args):
        raise UnsupportedDerivativeError(VMAP_MESSAGE.format(mode="forward"))  # jacfwd, torch.vmap


class _RefuseSecondOrder(torch.autograd.Function):
    """Identity on the implicit gradient whose own derivative raises: anchored to everything the
    gradient depends on (ḡ and the layer's pre-activation), so that double backward and hvp fail
    loudly instead of silently returning zeros. First-order use under ``create_graph=True``
    (``torch.func.grad``, ``torch.func.vjp``) is unaffected."""

    @staticmethod
    def forward(count: int, *tensors: Tensor):  # type: ignore[override]
        return tuple(t.clone() for t in tensors[:count])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        raise UnsupportedDerivativeError(
            "second-order derivatives (double backward, create_graph=True then grad, hvp) through "
            "a monDEQ equilibrium are not implemented; first-order gradients and forward-mode "
            "tangents are exact (torch.autograd.functional.jvp / vhp compute a first-order "
            "derivative by double backward: use torch.func.jvp or torch.autograd.forward_ad)")


VMAP_MESSAGE = ("vmap over a monDEQ equilibrium (torch.vmap, and torch.func.jacrev / jacfwd, which "
                "vmap {mode}-mode derivatives) is not supported: the solver decides when to stop "
                "from the whole batch; use torch.autograd.functional.jacobian or loop over "
                "torch.func.jvp / vjp instead")


def _refuse_batched(tensors, mode: str) -> None:
    """vmap (jacrev, jacfwd, vmap over grad) would run the solver's data-dependent stopping
    test on batched tensors; refuse it clearly instead of failing deep inside."""
    is_batched = getattr(torch._C._functorch, "is_batchedtensor", None)
    if is_batched is not None and any(t is not None and is_batched(t) for t in tensors):
        raise UnsupportedDerivativeError(VMAP_MESSAGE.format(mode=mode))


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
        bias: Ux + b as a state (differentiable); cast to the operator's dtype.
        solver: a splitting method with the shared signature (e.g. ``peaceman_rachford``);
            use ``functools.partial`` to fix extra options.
        alpha, tol, max_iter, z0: forward solver settings.
        backward_tol, backward_max_iter: settings of the backward (and forward-mode tangent)
            solves (default: the forward ones).

    Returns:
        ``(z, stats)``: the solver's state ẑ (equal in value to ``stats.forward.z``, so
        ``stats.forward.converged`` and ``stats.forward.true_residual`` describe it) carrying the
        exact implicit derivatives, and the forward (and, after ``backward()``, backward) solver
        results.
    """
    device_type = bias[0].device.type
    autocast_off = (torch.autocast(device_type, enabled=False)
                    if torch.is_autocast_enabled(device_type) else contextlib.nullcontext())
    with autocast_off:
        bias = tuple(b if b.dtype == op.dtype else b.to(op.dtype) for b in bias)
        with torch.no_grad():
            result = solver(op, prox, tuple(b.detach() for b in bias), alpha=alpha, tol=tol,
                            max_iter=max_iter, z0=z0)
        _warn_if_unconverged(result, "forward")
        stats = EquilibriumStats(forward=result)
        if torch.is_inference_mode_enabled():  # no graph can be asked for: nothing to attach
            return tuple(t.clone() for t in result.z), stats
        # z* is where the layer is applied, not a function of the parameters: a solver that
        # applies W (forward-backward) would otherwise hand forward mode an unrolled tangent
        z_hat = tuple(t.detach() for t in result.z)
        v = tmap(torch.add, op.mv(z_hat), bias)
        problem = _Problem(op=op, prox=prox, pre_activation=tuple(t.detach() for t in v),
                           forward=result, solver=solver, alpha=alpha,
                           tol=tol if backward_tol is None else backward_tol,
                           max_iter=max_iter if backward_max_iter is None else backward_max_iter,
                           stats=stats)
        return tuple(_ImplicitNonlinearity.apply(problem, prox, *v, *z_hat)), stats


def _warn_if_unconverged(result: SolverResult, which: str) -> None:
    if result.converged:
        return
    worst = result.true_residual.max()
    finite = all(bool(torch.isfinite(t).all()) for t in result.z) and not bool(torch.isnan(worst))
    if not finite:
        message = (f"{which} solve produced non-finite values (NaN or inf) after "
                   f"{result.iterations} iterations: an input, a parameter or the incoming "
                   f"gradient is not finite, or the method diverged (forward-backward with too "
                   f"large an alpha); the result is not an equilibrium")
    else:
        message = (f"{which} solve stopped after {result.iterations} iterations with true relative "
                   f"residual {float(worst):.3g} above tol; raise max_iter, loosen tol or tune alpha")
    warnings.warn(message, ConvergenceWarning, stacklevel=3)
