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
on :math:`W^\top`, reusing the forward resolvent transposed (:class:`BackwardProblem`, public so
that programs can pose and time it outside autograd). Memory is that of one layer
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
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .errors import ConvergenceWarning, InvalidSettingError, UnsupportedDerivativeError, warn_at_caller
from .loop import unconverged_advice
from .operator import LinearOperator, Resolvent
from .prox import DiagonalQuadratic, Prox
from .result import SolverResult
from .state import State, tmap

Solver = Callable[..., SolverResult]

GRADIENTS = ("exact", "jacobian-free")
"""The derivative options of :func:`equilibrium` (only ``"exact"`` is the true derivative)."""


@dataclass
class EquilibriumStats:
    """Solver results of one equilibrium call; ``backward`` is filled when gradients flow
    (and ``tangent`` when a forward-mode derivative is taken)."""

    forward: SolverResult
    backward: SolverResult | None = None
    tangent: SolverResult | None = None


@dataclass
class BackwardProblem:
    r"""The implicit-gradient problem of an equilibrium, as a splitting problem of its own.

    At a solution :math:`z^\star = \sigma(v)`, :math:`v = Wz^\star + b`, with the diagonal
    :math:`J = \sigma'(v) \in [0, 1]`, the gradient that an incoming :math:`\bar g = \partial\ell
    / \partial z^\star` sends into :math:`v` (hence into W, U, b and x) is

    .. math:: u = (I - JW^\top)^{-1} J\bar g
              \iff 0 \in (I - W^\top)u - \bar g + Du,\qquad D = J^{-1} - I \succeq 0

    (:math:`D = \infty` where :math:`J = 0` forces :math:`u = 0` there): the monotone inclusion of
    a layer with operator :math:`W^\top` (same m, same L), nonlinearity
    :math:`\mathrm{prox}_{\alpha D}` (:class:`~splitting.prox.DiagonalQuadratic`) and bias
    :math:`\bar g`. Every splitting method solves it, and the Rachford methods reuse the forward
    factorisation transposed (:meth:`~splitting.operator.Resolvent.transpose`). The forward-mode
    tangent :math:`\dot z = (I - JW)^{-1}J\dot v` is the same problem with :math:`W` and bias
    :math:`\dot v` (:meth:`solve_tangent`).

    Attributes:
        op: the forward operator :math:`W`.
        prox: the forward nonlinearity σ (only its ``derivative`` is used).
        pre_activation: :math:`v = Wz^\star + b` at the solution, a detached state.
        forward: the forward solve's result, whose resolvent is reused (``None``: none to reuse).
    """

    op: LinearOperator
    prox: Prox
    pre_activation: State
    forward: SolverResult | None = None
    _jacobian: State | None = field(default=None, init=False, repr=False)
    _nonlinearity: DiagonalQuadratic | None = field(default=None, init=False, repr=False)
    _resolvents: dict = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def at_solution(cls, op: LinearOperator, prox: Prox, bias: State,
                    forward: SolverResult) -> "BackwardProblem":
        """The problem at a forward solve's state ``forward.z`` for the bias ``bias`` (= Ux + b)."""
        with torch.no_grad():
            z = tuple(t.detach() for t in forward.z)
            v = tmap(torch.add, op.mv(z), tuple(b.detach() for b in bias))
        return cls(op, prox, v, forward)

    @property
    def jacobian(self) -> State:
        r""":math:`J = \sigma'(v)` at the solution's pre-activation (computed once)."""
        if self._jacobian is None:
            self._jacobian = tuple(self.prox.derivative(t) for t in self.pre_activation)
        return self._jacobian

    @property
    def operator(self) -> LinearOperator:
        r"""The backward operator :math:`W^\top`."""
        return self.op.transpose()

    @property
    def nonlinearity(self) -> DiagonalQuadratic:
        r"""The backward nonlinearity :math:`\mathrm{prox}_{\alpha D}(r) = Jr / (J + \alpha(1 - J))`."""
        if self._nonlinearity is None:
            self._nonlinearity = DiagonalQuadratic(self.jacobian)
        return self._nonlinearity

    def forward_resolvent(self, alpha: float) -> Resolvent | None:
        r"""The forward solve's factorisation :math:`(I + \alpha(I - W))^{-1}` when it was made at
        this α, else ``None``."""
        resolvent = None if self.forward is None else self.forward.resolvent
        return resolvent if resolvent is not None and resolvent.alpha == alpha else None

    def resolvent(self, alpha: float) -> Resolvent:
        r""":math:`(I + \alpha(I - W^\top))^{-1}`: the forward factorisation transposed, made once
        per α (the forward solve's own when it used this α)."""
        if alpha not in self._resolvents:
            forward = self.forward_resolvent(alpha)
            self._resolvents[alpha] = forward if forward is not None else self.op.resolvent(alpha)
        return self._resolvents[alpha].transpose()

    def solve(self, grad: State, *, solver: Solver, alpha: float, tol: float, max_iter: int,
              resolvent: Resolvent | None = None) -> SolverResult:
        r"""Solve :math:`(I - W^\top)u + Du \ni \bar g` for :math:`u = (I - JW^\top)^{-1}J\bar g`.

        Args:
            grad: :math:`\bar g`, a state shaped like the solution (detached).
            solver: a splitting method with the shared signature.
            alpha, tol, max_iter: its settings.
            resolvent: a factorisation of :math:`W^\top` at α to use (e.g. :meth:`resolvent`);
                ``None``: the forward solve's, transposed, when it was made at this α, otherwise
                the solver makes its own (if it needs one).

        Returns:
            the solver's result; ``z`` is :math:`u`.
        """
        if resolvent is None:
            forward = self.forward_resolvent(alpha)
            resolvent = None if forward is None else forward.transpose()
        return solver(self.operator, self.nonlinearity, grad, alpha=alpha, tol=tol,
                      max_iter=max_iter, resolvent=resolvent)

    def solve_tangent(self, tangent: State, *, solver: Solver, alpha: float, tol: float,
                      max_iter: int) -> SolverResult:
        r"""Forward mode: :math:`\dot z = (I - JW)^{-1}J\dot v`, the equilibrium
        :math:`\dot z = J(W\dot z + \dot v)`, reusing the forward factorisation when made at α.

        Args:
            tangent: :math:`\dot v`, a state shaped like the solution.
            solver, alpha, tol, max_iter: as in :meth:`solve`.
        """
        return solver(self.op, self.nonlinearity, tangent, alpha=alpha, tol=tol, max_iter=max_iter,
                      resolvent=self.forward_resolvent(alpha))


@dataclass
class _Derivatives:
    """What the autograd node keeps: the backward problem, the derivative solves' settings, and
    the stats to fill."""

    problem: BackwardProblem
    solver: Solver
    alpha: float
    tol: float
    max_iter: int
    stats: EquilibriumStats
    gradient: str = "exact"

    def run(self, solve: Callable[..., SolverResult], rhs: State, *, mode: str) -> SolverResult:
        try:
            return solve(rhs, solver=self.solver, alpha=self.alpha, tol=self.tol, max_iter=self.max_iter)
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
    def forward(derivatives: _Derivatives, prox: Prox, *v_and_z: Tensor):  # type: ignore[override]
        # a copy, so that the caller's in-place edits never reach the solver's result
        return tuple(t.clone() for t in v_and_z[len(v_and_z) // 2:])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.derivatives = inputs[0]
        # kept (not copied) only so that a differentiable backward can anchor its refusal to them
        ctx.save_for_backward(*inputs[2:2 + len(output)])

    @staticmethod
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        _refuse_batched(grads, "reverse")
        d: _Derivatives = ctx.derivatives
        with torch.no_grad():
            rhs = tuple(torch.zeros_like(t) if g is None else g.detach()
                        for g, t in zip(grads, d.problem.pre_activation))
            if d.gradient == "jacobian-free":  # u = Jḡ: no solve, stats.backward stays None
                u = tuple(torch.mul(j, g) for j, g in zip(d.problem.jacobian, rhs))
            else:
                result = d.run(d.problem.solve, rhs, mode="reverse")
        if d.gradient != "jacobian-free":
            _warn_if_unconverged(result, "backward")
            d.stats.backward = result
            u = result.z
        if torch.is_grad_enabled():  # create_graph=True: u depends on W, J and ḡ in ways not traced
            u = _RefuseSecondOrder.apply(len(u), *u, *grads, *ctx.saved_tensors)
        return (None, None, *u, *(None,) * len(u))

    @staticmethod
    def jvp(ctx, _problem_tangent, _prox_tangent, *tangents: Tensor):  # type: ignore[override]
        d: _Derivatives = ctx.derivatives
        v = d.problem.pre_activation
        tangents = tangents[:len(v)]  # ẑ enters detached: no tangent of its own
        _refuse_batched(tangents, "forward")
        tangents = tuple(torch.zeros_like(t) if dt is None else dt for dt, t in zip(tangents, v))
        if d.gradient == "jacobian-free":
            return tuple(j * dt for j, dt in zip(d.problem.jacobian, tangents))
        result = d.run(d.problem.solve_tangent, tangents, mode="forward")
        _warn_if_unconverged(result, "forward-mode tangent")
        d.stats.tangent = result
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
    gradient: str = "exact",
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
        gradient: ``"exact"`` (default): the implicit derivatives above. ``"jacobian-free"``: an
            explicit, inexact option, Jacobian-free backpropagation (Fung et al., "JFB:
            Jacobian-free backpropagation for implicit networks", AAAI 2022): the backward
            solve is skipped and :math:`u = J\\bar g` (:math:`(I - JW^\\top)^{-1}` replaced by
            I; likewise :math:`J\\dot v` for tangents), a descent direction under conditions on
            W, not the gradient; ``stats.backward`` stays ``None``. It saves the backward
            iterations (about half a PR step's solver work) and costs accuracy (README).

    Returns:
        ``(z, stats)``: the solver's state ẑ (equal in value to ``stats.forward.z``, so
        ``stats.forward.converged`` and ``stats.forward.true_residual`` describe it) carrying the
        exact implicit derivatives, and the forward (and, after ``backward()``, backward) solver
        results.

    Under ``torch.compile`` this call is one opaque eager call (one deliberate graph break): the
    solve stops on a data-dependent test and keeps Python results, so it is not traced; what the
    layer computes before (Ux + b, the operator's pieces) and the model after it are compiled.
    (The ``torch.compiler.disable`` wrapper that does it, :mod:`splitting.opaque`, is imported
    on the first compiled call: made at import, it would import ``torch._dynamo``, which doubles
    the time of ``import mondeq``.)

    Raises:
        UnsupportedDerivativeError: called under ``torch.vmap`` (the stopping test needs the
            whole batch).
    """
    if gradient not in GRADIENTS:
        raise InvalidSettingError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    settings = dict(solver=solver, alpha=alpha, tol=tol, max_iter=max_iter, z0=z0,
                    backward_tol=backward_tol, backward_max_iter=backward_max_iter, gradient=gradient)
    if torch.compiler.is_compiling():  # only dynamo's trace sees True: torch._dynamo is loaded
        from .opaque import equilibrium as opaque  # dynamo runs the import, then breaks the graph
        return opaque(op, prox, bias, **settings)
    return _solve_equilibrium(op, prox, bias, **settings)


def _solve_equilibrium(op: LinearOperator, prox: Prox, bias: State, *, solver: Solver, alpha: float,
                       tol: float, max_iter: int, z0: State | None, backward_tol: float | None,
                       backward_max_iter: int | None,
                       gradient: str = "exact") -> tuple[State, EquilibriumStats]:
    """The body of :func:`equilibrium` (the eager call)."""
    _refuse_batched(bias, "forward")
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
        derivatives = _Derivatives(
            BackwardProblem(op, prox, tuple(t.detach() for t in v), result), solver=solver,
            alpha=alpha, tol=tol if backward_tol is None else backward_tol,
            max_iter=max_iter if backward_max_iter is None else backward_max_iter, stats=stats,
            gradient=gradient)
        return tuple(_ImplicitNonlinearity.apply(derivatives, prox, *v, *z_hat)), stats


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
                   f"residual {float(worst):.3g} above tol; {unconverged_advice(result)}")
    warn_at_caller(message, ConvergenceWarning)
