"""Forward solvers: same unique fixed point from any start, true residual, errors."""

import pytest
import torch

from splitting import (InvalidSettingError, ReLU, SoftThreshold, StateShapeError,
                       StepSizeWarning, forward_backward, max_stable_alpha, natural_residual,
                       peaceman_rachford)
from tests.conftest import make_dense

NONLINEARITIES = [ReLU(), SoftThreshold(0.05)]


def problem(scale=1.5, batch=8):
    linear = make_dense(n_in=6, n=12, m=0.5, scale=scale)
    x = torch.randn(batch, 6)
    with torch.no_grad():
        return linear.operator(), linear.bias(x)


@pytest.mark.parametrize("prox", NONLINEARITIES, ids=repr)
def test_fb_and_pr_reach_the_same_fixed_point_from_different_starts(prox):
    op, bias = problem()
    fb_alpha = 0.9 * max_stable_alpha(op)
    start_a = (torch.zeros_like(bias[0]),)
    start_b = (10 * torch.randn_like(bias[0]),)
    solutions = []
    for z0 in (start_a, start_b):
        fb = forward_backward(op, prox, bias, alpha=fb_alpha, tol=1e-11, max_iter=50_000, z0=z0)
        pr = peaceman_rachford(op, prox, bias, alpha=0.7, tol=1e-11, max_iter=5_000, z0=z0)
        assert fb.converged and pr.converged
        solutions += [fb.z[0], pr.z[0]]
    for z in solutions[1:]:
        torch.testing.assert_close(z, solutions[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("solver", [forward_backward, peaceman_rachford])
@pytest.mark.parametrize("prox", NONLINEARITIES, ids=repr)
def test_true_fixed_point_residual_below_tol(solver, prox):
    op, bias = problem()
    alpha = 0.9 * max_stable_alpha(op) if solver is forward_backward else 1.0
    tol = 1e-6
    result = solver(op, prox, bias, alpha=alpha, tol=tol, max_iter=20_000, )
    assert result.converged
    z = result.z[0]
    direct = (z - prox(z @ op.as_matrix().T + bias[0])).norm(dim=1) / z.norm(dim=1)
    assert float(direct.max()) < tol
    torch.testing.assert_close(result.true_residual, direct)
    torch.testing.assert_close(natural_residual(op, prox, bias, result.z), direct)


def test_result_reports_trace_and_time():
    op, bias = problem(batch=5)
    result = peaceman_rachford(op, ReLU(), bias, alpha=1.0, tol=1e-4, max_iter=200)
    assert result.residuals.shape == (result.iterations, 5)
    assert result.time > 0
    assert float(result.residuals[-1].max()) <= 1e-4
    assert result.resolvent is not None


def test_pr_converges_for_large_alpha_where_fb_diverges():
    op, bias = problem(scale=3.0)
    identity = SoftThreshold(0.0)  # linear problem: FB diverges once ρ(I − α(I − W)) > 1
    eigs = torch.linalg.eigvals(torch.eye(12) - op.as_matrix())
    alpha = float((4 * eigs.real / eigs.abs() ** 2).max())  # |1 − αλ| > 1 for some eigenvalue λ
    assert alpha > max_stable_alpha(op)
    with pytest.warns(StepSizeWarning, match="outside the convergent range"):
        fb = forward_backward(op, identity, bias, alpha=alpha, tol=1e-6, max_iter=2_000)
    assert not fb.converged
    pr = peaceman_rachford(op, identity, bias, alpha=alpha, tol=1e-6, max_iter=2_000)
    assert pr.converged


def test_fb_can_refuse_a_divergent_step():
    op, bias = problem()
    with pytest.raises(InvalidSettingError, match="2m/L"):
        forward_backward(op, ReLU(), bias, alpha=10.0, check_step="raise")


def test_max_iter_reached_is_not_converged():
    op, bias = problem()
    result = peaceman_rachford(op, ReLU(), bias, alpha=1.0, tol=1e-14, max_iter=3)
    assert result.iterations == 3 and not result.converged


@pytest.mark.parametrize("solver", [forward_backward, peaceman_rachford])
def test_bad_settings_raise_clear_errors(solver):
    op, bias = problem()
    with pytest.raises(InvalidSettingError, match="alpha must be > 0"):
        solver(op, ReLU(), bias, alpha=0.0)
    with pytest.raises(InvalidSettingError, match="alpha must be > 0"):
        solver(op, ReLU(), bias, alpha=-1.0)
    with pytest.raises(InvalidSettingError, match="tol must be > 0"):
        solver(op, ReLU(), bias, alpha=0.1, tol=0)
    with pytest.raises(InvalidSettingError, match="max_iter"):
        solver(op, ReLU(), bias, alpha=0.1, max_iter=0)
    with pytest.raises(StateShapeError, match="expects"):
        solver(op, ReLU(), (bias[0][:, :5],), alpha=0.1)
    with pytest.raises(StateShapeError, match="z0"):
        solver(op, ReLU(), bias, alpha=0.1, z0=(torch.zeros(8, 3),))


def test_soft_threshold_prox_depends_on_alpha():
    prox = SoftThreshold(0.5)
    v = torch.tensor([-2.0, -0.3, 0.0, 0.4, 3.0])
    torch.testing.assert_close(prox.prox(v, 2.0), torch.tensor([-1.0, 0.0, 0.0, 0.0, 2.0]))
    torch.testing.assert_close(prox(v), torch.tensor([-1.5, 0.0, 0.0, 0.0, 2.5]))
    # prox_{αf}(v) minimises ½‖z − v‖² + αλ‖z‖₁: check against a fine grid
    grid = torch.linspace(-4, 4, 80001)
    for vi in v:
        objective = 0.5 * (grid - vi) ** 2 + 2.0 * 0.5 * grid.abs()
        assert float(prox.prox(vi[None], 2.0)) == pytest.approx(float(grid[objective.argmin()]), abs=1e-4)
