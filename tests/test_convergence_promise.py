"""What ``converged=True`` promises: the TRUE residual of the returned state meets tol.

Every method, step size, tolerance and operator family, on random and on hard operators (large
‖I − W‖): converged ⇒ ‖z − σ(Wz + b)‖/‖z‖ ≤ tol for every sample, computed here independently
from the dense matrix. Plus the cases that used to slip through: zero iterates, FB collapsing
at a huge step, non-finite values.
"""
import warnings

import pytest
import torch

from mondeq import MonDEQ, MonotoneLinear
from splitting import (SOLVERS, STEP_LIMITS, ConvergenceWarning, NonFiniteInputError, ReLU,
                       SoftThreshold, StepSizeWarning, max_stable_alpha, peaceman_rachford)
from tests.conftest import direct_residual, make_conv, make_dense, make_multitier

ALPHAS = (1.0, 1 / 4, 1 / 16, 1 / 64)
TOLS = (1e-2, 1e-4, 1e-6)


def dense_problem(scale):
    linear = make_dense(n_in=6, n=10, m=0.2, scale=scale)
    x = torch.randn(6, 6)
    return linear, x


def conv_problem(scale):
    return make_conv(4, scale=scale), torch.randn(4, 1, 4, 4)


def multitier_problem(scale):
    return make_multitier(scale=scale), torch.randn(3, 1, 4, 4)


PROBLEMS = {"dense": dense_problem, "conv": conv_problem, "multitier": multitier_problem}


def step_limit(name, op):
    """The method's guaranteed step range 0 < α < limit (FB: 2m/L², FBF: 1/L); for the methods
    that converge at every α, FB's limit (the grid's extra α is then FB's guaranteed one)."""
    return STEP_LIMITS.get(name, max_stable_alpha)(op)


def grid(alphas, name, family, limit):
    """The step sizes tried: ``alphas`` and limit/2, inside the method's guaranteed range (FB's
    for the methods that converge at every α). On the convolutional operators (slow to apply)
    those methods skip it: FB's tiny limit there only runs them into the iteration cap, and
    the dense operators and the smaller grid α's cover small steps."""
    if family != "dense" and name not in STEP_LIMITS:
        return tuple(alphas)
    return (*alphas, limit / 2)


@pytest.mark.parametrize("family", sorted(PROBLEMS))
@pytest.mark.parametrize("scale", [1.0, 4.0], ids=["random", "large-L"])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_converged_means_true_residual_below_tol(name, scale, family):
    linear, x = PROBLEMS[family](scale)
    prox = SoftThreshold(0.02)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(x)
        weight = op.as_matrix()
    limit = step_limit(name, op)
    converged_runs = 0
    # the multi-tier operator is slow to apply at this size: a thinner grid of the same kinds
    alphas, tols = ((1.0, 1 / 16), (1e-2, 1e-6)) if family == "multitier" else (ALPHAS, TOLS)
    # the step-limited methods on the hard convolutional operators need far more than the cap
    # at their step limits (the count below may be 0 there): what these runs check is that no
    # run claims convergence it has not reached, which a shorter cap checks as well
    cap = 100 if name in STEP_LIMITS and scale > 1 and family != "dense" else 300
    for alpha in grid(alphas, name, family, limit):
        for tol in tols:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StepSizeWarning)
                result = SOLVERS[name](op, prox, bias, alpha=alpha, tol=tol, max_iter=cap)
            if not result.converged:
                # slow (small α) or beyond the method's guaranteed step: the cap or divergence stopped it
                assert result.iterations == cap or (name in STEP_LIMITS and alpha >= limit), (name, alpha, tol)
                continue
            converged_runs += 1
            true = direct_residual(weight, prox, bias, result.z)
            assert bool((true <= tol).all()), (name, alpha, tol, float(true.max()))
            torch.testing.assert_close(result.true_residual, true, rtol=1e-6, atol=1e-12)
    # not vacuous (FB and FBF on the hard operators cannot converge in the cap at any step size)
    assert converged_runs >= (0 if name in STEP_LIMITS and scale > 1 else 2)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solution_equal_to_zero_is_found_exactly_and_only_then(name):
    """σ(b) = 0 ⇒ z* = 0, returned exactly; a zero state is never accepted otherwise."""
    linear = make_dense(n_in=3, n=6, m=0.5)
    with torch.no_grad():
        op = linear.operator()
    bias = (torch.cat([-torch.rand(2, 6), torch.randn(2, 6)]),)  # first two: σ(b) = 0
    alpha = 0.5 * STEP_LIMITS[name](op) if name in STEP_LIMITS else 1.0
    result = SOLVERS[name](op, ReLU(), bias, alpha=alpha, tol=1e-8, max_iter=5000)
    assert result.converged
    assert bool((result.z[0][:2] == 0).all())
    reference = peaceman_rachford(op, ReLU(), bias, alpha=1.0, tol=1e-12, max_iter=5000)
    torch.testing.assert_close(result.z[0], reference.z[0], atol=1e-6, rtol=1e-6)
    assert bool((result.z[0][2:].norm(dim=1) > 0).all())


def relu_equilibrium_by_enumeration(w, b):
    """The unique z = relu(Wz + b) of a tiny problem, exactly: try every active set S, solve
    z_S = (I − W_SS)⁻¹ b_S, keep the one consistent with S (independent of every solver)."""
    n = w.shape[0]
    for pattern in range(2 ** n):
        active = torch.tensor([(pattern >> i) & 1 for i in range(n)], dtype=torch.bool)
        z = torch.zeros(n, dtype=w.dtype)
        if active.any():
            idx = active.nonzero().flatten()
            z[idx] = torch.linalg.solve(torch.eye(len(idx), dtype=w.dtype) - w[idx][:, idx], b[idx])
        v = w @ z + b
        if bool((z[active] >= 0).all()) and bool((v[~active] <= 0).all()):
            return z
    raise AssertionError("no consistent active set")


def test_one_to_two_layer_is_solved_not_stopped_early():
    """The independent check's example: a 1 → 2 dense layer (m = 0.5, tol 1e-6) once returned
    z = 0.188 where z* = 0.1254 after one iteration. Whatever the parameters, the returned state
    now meets the tolerance and matches the exact fixed point."""
    for seed in range(30):
        torch.manual_seed(seed)
        linear = MonotoneLinear(1, 2, m=0.5, dtype=torch.float64)
        layer = MonDEQ(linear, solver="pr", tol=1e-6, max_iter=500)
        x = torch.randn(5, 1)
        with torch.no_grad():
            (z,), stats = layer.forward_with_stats(x)
            w, b = linear.weight(), linear.U(x)
        exact = torch.stack([relu_equilibrium_by_enumeration(w, bi) for bi in b])
        assert stats.forward.converged
        # ‖ẑ − z*‖ ≤ (1 + L)‖e‖/m with ‖e‖ ≤ 1e-6‖ẑ‖ (mondeq.certify's bound)
        bound = (1 + 2 * float(torch.linalg.matrix_norm(w, 2) + 1)) / 0.5 * 1e-6 * z.norm(dim=1)
        assert bool(((z - exact).norm(dim=1) <= bound + 1e-12).all()), seed


def test_forward_backward_collapsing_at_a_huge_step_is_not_converged():
    linear = make_dense(n_in=6, n=10, m=0.5, scale=2.0)
    x = torch.randn(8, 6)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(x)
    reference = peaceman_rachford(op, ReLU(), bias, alpha=1.0, tol=1e-12, max_iter=5000).z[0]
    with pytest.warns(StepSizeWarning, match="2m/L"):
        result = SOLVERS["fb"](op, ReLU(), bias, alpha=10.0, tol=1e-6, max_iter=300)
    assert not result.converged
    assert not torch.allclose(result.z[0], reference, atol=1e-3)


def test_infinite_bias_parameter_is_named_not_reported_converged():
    layer = MonDEQ(make_dense(n_in=6), tol=1e-4)
    with torch.no_grad():
        layer.linear.U.bias[1] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.raises(NonFiniteInputError, match="parameter U.bias"):
            layer(torch.randn(3, 6))


def test_nan_state_from_a_solver_is_never_converged():
    linear = make_dense(n_in=6)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(torch.randn(3, 6))
    bias[0][1, 0] = float("nan")
    for name, solver in SOLVERS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = solver(op, ReLU(), bias, alpha=0.05, tol=1e-2, max_iter=50)
        assert not result.converged, name


def test_nan_or_inf_input_is_named():
    layer = MonDEQ(make_dense(n_in=6))
    for bad in (float("nan"), float("inf")):
        x = torch.randn(3, 6)
        x[1, 2] = bad
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            with pytest.raises(NonFiniteInputError, match="input x"):
                layer(x)


def test_confirmation_keeps_estimates_honest_on_a_hard_problem():
    """PR's residual estimate (from z½) may be optimistic; the loop confirms with the direct
    residual and goes on, so the count may grow but the promise holds."""
    linear = make_dense(n_in=6, n=30, m=0.05, scale=6.0)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(torch.randn(16, 6))
        weight = op.as_matrix()
    for alpha in ALPHAS:
        result = peaceman_rachford(op, SoftThreshold(0.05), bias, alpha=alpha, tol=1e-6, max_iter=20_000)
        assert result.converged
        true = direct_residual(weight, SoftThreshold(0.05), bias, result.z)
        assert float(true.max()) <= 1e-6


def layer_returned_state(layer, x, mode):
    """What ``layer(x)`` hands the user, under autograd, ``no_grad`` or ``inference_mode``."""
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad,
               "inference": torch.inference_mode}[mode]
    with context():
        return layer.forward_with_stats(x)


@pytest.mark.parametrize("family", sorted(PROBLEMS))
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_converged_means_the_returned_state_meets_tol(name, family):
    """The promise holds for the state ``layer(x)`` returns (not only the solver's internal
    one): on the hard operators (large ‖I − W‖), for every method, α and tol, each converged
    layer call's output has a true residual ≤ tol computed from the dense matrix, and
    ``stats.forward.true_residual`` is that residual."""
    linear, x = PROBLEMS[family](4.0)
    prox = SoftThreshold(0.02)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(x)
        weight = op.as_matrix()
    limit = step_limit(name, op)
    # the full grid on the dense operators; the convolutional ones (slow to apply) take the
    # thinner grid of the same kinds: what the layer returns does not depend on the operator
    alphas, tols = (ALPHAS, TOLS) if family == "dense" else ((1.0, 1 / 16), (1e-2, 1e-6))
    # every autograd mode on the dense operators; the others take the two extremes (no_grad
    # shares its path with inference_mode except for the memo the latter cannot keep)
    modes = ("grad", "no_grad", "inference") if family == "dense" else ("grad", "inference")
    converged = 0
    for mode in modes:
        for alpha in grid(alphas, name, family, limit):
            for tol in tols:
                layer = MonDEQ(linear, prox, solver=name, alpha=alpha, tol=tol, max_iter=300)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", StepSizeWarning)
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    z, stats = layer_returned_state(layer, x, mode)
                if not stats.forward.converged:
                    continue
                converged += 1
                true = direct_residual(weight, prox, bias, tuple(t.detach() for t in z))
                assert bool((true <= tol).all()), (mode, alpha, tol, float(true.max()) / tol)
                torch.testing.assert_close(stats.forward.true_residual, true, rtol=1e-6, atol=1e-12)
    assert converged >= (0 if name in STEP_LIMITS else 2 * len(modes))


def test_ten_to_forty_layer_returns_a_state_within_tol():
    """The issue's example: MonotoneLinear(10, 40, m=0.5), every parameter × 4
    (L = ‖I − W‖₂ ≈ 19), PR at α = 0.9/L, tol 1e-6. The layer used to report converged with
    true residual 3.4e-7 while the z it returned had 3.1e-6."""
    torch.manual_seed(0)
    linear = MonotoneLinear(10, 40, m=0.5, dtype=torch.float64)
    with torch.no_grad():
        for p in linear.parameters():
            p.mul_(4.0)
        op = linear.operator()
        weight = op.as_matrix()
    lip = float(torch.linalg.matrix_norm(torch.eye(40) - weight, 2))
    layer = MonDEQ(linear, solver="pr", alpha=0.9 / lip, tol=1e-6, max_iter=2000)
    x = torch.randn(64, 10)
    (z,), stats = layer.forward_with_stats(x)
    assert stats.forward.converged
    with torch.no_grad():
        true = direct_residual(weight, ReLU(), linear.bias(x), (z.detach(),))
    assert float(true.max()) <= 1e-6
    torch.testing.assert_close(stats.forward.true_residual, true, rtol=1e-6, atol=1e-12)


def test_returned_state_is_the_solvers_and_independent_of_it():
    """``layer(x)`` equals ``stats.forward.z`` in value; editing it in place leaves the stats
    (and so what ``true_residual`` describes) untouched."""
    layer = MonDEQ(make_dense(n_in=6, n=10, m=0.2, scale=2.0), tol=1e-4, max_iter=500)
    (z,), stats = layer.forward_with_stats(torch.randn(5, 6))
    assert torch.equal(z.detach(), stats.forward.z[0])
    kept = stats.forward.z[0].clone()
    with torch.no_grad():
        z.zero_()
    assert torch.equal(stats.forward.z[0], kept)
