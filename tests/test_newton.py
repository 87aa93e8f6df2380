"""Semismooth Newton safeguarded by Peaceman-Rachford (``splitting.newton``), float64.

Exactness against an independent dense active-set solve, convergence from any start on hard
operators of every family, a problem where raw Newton cycles and the safeguard rescues it,
implicit gradients against central differences, and the one-step backward solve.
"""
import warnings

import pytest
import torch

from mondeq import MonDEQ
from splitting import (SOLVERS, BackwardProblem, DenseOperator, InvalidSettingError, ReLU, SoftThreshold,
                       Tanh, newton, peaceman_rachford)
from splitting.state import flatten
from tests.conftest import direct_residual, make_conv, make_dense, make_multitier


def dense(scale):
    return make_dense(n_in=6, n=30, m=0.2, scale=scale), torch.randn(8, 6)


def conv(scale):
    return make_conv(5, scale=scale), torch.randn(4, 1, 5, 5)


def multitier(scale):
    return make_multitier(scale=scale), torch.randn(3, 1, 4, 4)


FAMILIES = {"dense": dense, "conv": conv, "multitier": multitier}


def active_set_solution(weight, prox, b, z):
    """The equilibrium on the pieces that ``z`` selects, by one dense solve per sample:
    z_A = (I − W_AA)⁻¹(b_A − λ sign(v_A)), z = 0 elsewhere (λ = 0 for ReLU)."""
    lam = getattr(prox, "lam", 0.0)
    out = torch.zeros_like(z)
    for i in range(len(z)):
        v = weight @ z[i] + b[i]
        active = v > lam if isinstance(prox, ReLU) else v.abs() > lam
        idx = active.nonzero().flatten()
        system = torch.eye(len(idx)) - weight[idx][:, idx]
        out[i, idx] = torch.linalg.solve(system, b[i, idx] - lam * torch.sign(v[idx]))
    return out


@pytest.mark.parametrize("prox", [ReLU(), SoftThreshold(0.05)], ids=repr)
@pytest.mark.parametrize("scale", [1.0, 4.0], ids=["random", "large-L"])
def test_newton_returns_the_exact_active_set_solution(prox, scale):
    """Once the pieces are identified the Newton point is the equilibrium to round-off: it equals
    an independent dense solve on its active set to 1e-12, and z = σ(Wz + b) to round-off (far
    below the tol asked for)."""
    linear, x = dense(scale)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(x)
    weight = op.as_matrix()
    result = newton(op, prox, bias, alpha=0.5, tol=1e-9, max_iter=500)
    assert result.converged
    z = result.z[0]
    torch.testing.assert_close(z, active_set_solution(weight, prox, bias[0], z), atol=1e-12, rtol=0)
    assert float(direct_residual(weight, prox, bias, result.z).max()) < 1e-13
    reference = peaceman_rachford(op, prox, bias, alpha=0.5, tol=1e-13, max_iter=20_000)
    torch.testing.assert_close(z, reference.z[0], atol=1e-11, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("prox", [ReLU(), SoftThreshold(0.02)], ids=repr)
def test_newton_converges_from_any_start_on_hard_operators(family, prox):
    """Large ‖I − W‖ (parameters × 5), a far start (‖z0‖ ≫ ‖z*‖) and several α, with the
    Krylov solve on the structured operators and the direct one on dense W: converged, and the
    true residual from the dense matrix meets tol."""
    linear, x = FAMILIES[family](5.0)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(x)
    weight = op.as_matrix().detach()
    reference = peaceman_rachford(op, prox, bias, alpha=0.25, tol=1e-12, max_iter=20_000)
    for alpha in (2.0, 0.5, 0.125):
        z0 = tuple(20 * torch.randn_like(b) for b in bias)
        result = newton(op, prox, bias, alpha=alpha, tol=1e-10, max_iter=2_000, z0=z0)
        assert result.converged, (family, alpha)
        assert float(direct_residual(weight, prox, bias, result.z).max()) <= 1e-10
        torch.testing.assert_close(flatten(result.z), flatten(reference.z), atol=1e-8, rtol=0)


def cycling_problem():
    """A 3-unit ReLU layer (large skew part G − Gᵀ) on which raw semismooth Newton from z = 0,
    i.e. the Newton-min method for the LCP with the P-matrix I − W, cycles between active sets
    (found by a search over seeds; Ben Gharbia & Gilbert 2012 show such P-matrices exist)."""
    g = torch.Generator().manual_seed(36)
    f = 0.5 * torch.randn(3, 3, generator=g)
    skew = 3 * torch.randn(3, 3, generator=g)
    weight = 0.9 * torch.eye(3) - f.T @ f + skew.T - skew
    return DenseOperator(weight, 0.1), (torch.randn(1, 3, generator=g),)


def test_safeguard_turns_a_newton_cycle_into_convergence():
    op, bias = cycling_problem()
    settings = dict(alpha=1.0, tol=1e-10, warmup=0)
    raw = [newton(op, ReLU(), bias, max_iter=k, safeguard=False, **settings) for k in range(20, 40)]
    assert not any(r.converged for r in raw)
    assert min(float(r.true_residual.max()) for r in raw) >= 0.5  # no progress at all
    states = [r.z[0] for r in raw]
    period = next(p for p in range(1, 10) if torch.allclose(states[0], states[p], atol=1e-12, rtol=0))
    assert not torch.allclose(states[0], states[1], atol=1e-6)  # it moves, and comes back:
    assert torch.allclose(states[5], states[5 + period], atol=1e-12, rtol=0)  # a cycle
    # with the safeguard (the same Newton points, kept only when the residual halves) it converges;
    # the runs differ, so some Newton point was rejected and replaced by a PR step
    guarded = newton(op, ReLU(), bias, max_iter=200, **settings)
    assert guarded.converged
    exact = peaceman_rachford(op, ReLU(), bias, alpha=1.0, tol=1e-13, max_iter=20_000)
    torch.testing.assert_close(guarded.z[0], exact.z[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("prox", [ReLU(), SoftThreshold(0.02)], ids=repr)
def test_layer_gradients_by_newton_match_finite_differences(family, prox):
    """The implicit gradient of a monDEQ solved by Newton (forward and backward) against central
    differences of the forward solve, along one random direction in the input and every
    parameter at once."""
    linear, x = FAMILIES[family](1.5)
    layer = MonDEQ(linear, prox, solver="newton", alpha=0.5, tol=1e-12, max_iter=2_000)
    x = x.clone().requires_grad_()
    weights = torch.randn_like(flatten(layer(x)))
    params = [x, *layer.parameters()]
    directions = [torch.randn_like(p) for p in params]

    def loss():
        return (flatten(layer(x)) * weights).sum()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every solve converges
        grads = torch.autograd.grad(loss(), params)
        h = 1e-6
        with torch.no_grad():
            for p, d in zip(params, directions):
                p.add_(h * d)
            up = loss()
            for p, d in zip(params, directions):
                p.sub_(2 * h * d)
            down = loss()
            for p, d in zip(params, directions):
                p.add_(h * d)
    analytic = sum((g * d).sum() for g, d in zip(grads, directions))
    torch.testing.assert_close(analytic, (up - down) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("linear_solver", ["direct", "krylov"])
def test_backward_problem_is_one_exact_newton_solve(linear_solver):
    """The backward problem is linear (σ = Jv): its first Newton point is the dense implicit
    gradient (I − JWᵀ)⁻¹Jḡ, after one iteration."""
    linear, x = dense(1.5)
    prox = SoftThreshold(0.05)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(x)
    forward = newton(op, prox, bias, alpha=0.8, tol=1e-13, max_iter=500)
    problem = BackwardProblem.at_solution(op, prox, bias, forward)
    grad = (torch.randn_like(bias[0]),)
    solver = lambda *a, **k: newton(*a, linear_solver=linear_solver, **k)  # noqa: E731
    result = problem.solve(grad, solver=solver, alpha=0.8, tol=1e-10, max_iter=50)
    assert result.converged and result.iterations == 1
    w = op.as_matrix()
    for i in range(len(grad[0])):
        j = torch.diag(prox.derivative(bias[0][i] + w @ forward.z[0][i]))
        expected = torch.linalg.solve(torch.eye(len(w)) - j @ w.T, j @ grad[0][i])
        torch.testing.assert_close(result.z[0][i], expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("family", ["conv", "multitier"])
def test_smooth_nonlinearity_is_plain_newton(family):
    """tanh: the iteration is plain Newton (D = tanh′) with Krylov solves; it agrees with PR."""
    linear, x = FAMILIES[family](1.5)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(x)
    result = newton(op, Tanh(), bias, alpha=0.5, tol=1e-11, max_iter=500)
    reference = peaceman_rachford(op, Tanh(), bias, alpha=0.5, tol=1e-13, max_iter=20_000)
    assert result.converged and result.iterations < reference.iterations
    torch.testing.assert_close(flatten(result.z), flatten(reference.z), atol=1e-9, rtol=0)


def test_direct_and_krylov_solves_agree_on_a_structured_operator():
    linear, x = conv(2.0)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(x)
    direct = newton(op, ReLU(), bias, alpha=0.5, tol=1e-11, max_iter=500, linear_solver="direct")
    krylov = newton(op, ReLU(), bias, alpha=0.5, tol=1e-11, max_iter=500, linear_solver="krylov")
    assert direct.converged and krylov.converged
    torch.testing.assert_close(direct.z[0], krylov.z[0], atol=1e-9, rtol=0)


def test_newton_is_registered():
    assert SOLVERS["newton"] is newton


@pytest.mark.parametrize("option, value", [("linear_solver", "lu"), ("warmup", -1), ("reduction", 1.0),
                                           ("reduction", 0.0), ("max_gap", 0), ("check_step", "never")])
def test_bad_newton_settings_raise(option, value):
    linear, x = dense(1.0)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(x)
    with pytest.raises(InvalidSettingError, match=option):
        newton(op, ReLU(), bias, **{option: value})
