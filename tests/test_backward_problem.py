"""The public backward problem: u = (I − J Wᵀ)⁻¹ J ḡ by any splitting method, reusing the forward
factorisation, and equal to the gradient that ``equilibrium`` sends into the bias (float64)."""
import pytest
import torch

from splitting import SOLVERS, STEP_LIMITS, BackwardProblem, SoftThreshold, equilibrium, peaceman_rachford
from tests.conftest import make_dense

PROX = SoftThreshold(0.05)


def setup(batch=4, n=10):
    linear = make_dense(n_in=6, n=n, m=0.5, scale=1.5)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(torch.randn(batch, 6))
    forward = peaceman_rachford(op, PROX, bias, alpha=0.8, tol=1e-13, max_iter=20_000)
    return op, bias, forward


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_backward_solve_is_the_dense_implicit_gradient(name):
    op, bias, forward = setup()
    problem = BackwardProblem.at_solution(op, PROX, bias, forward)
    grad = (torch.randn_like(bias[0]),)
    alpha = 0.9 * STEP_LIMITS[name](op) if name in STEP_LIMITS else 0.8
    result = problem.solve(grad, solver=SOLVERS[name], alpha=alpha, tol=1e-12, max_iter=20_000)
    assert result.converged
    w = op.as_matrix()
    eye = torch.eye(len(w), dtype=w.dtype)
    for i in range(len(grad[0])):
        j = torch.diag(PROX.derivative(bias[0][i] + w @ forward.z[0][i]))
        expected = torch.linalg.solve(eye - j @ w.T, j @ grad[0][i])
        torch.testing.assert_close(result.z[0][i], expected, atol=1e-9, rtol=0)


def test_backward_problem_reuses_the_forward_factorisation_at_its_alpha():
    op, bias, forward = setup()
    problem = BackwardProblem.at_solution(op, PROX, bias, forward)
    assert problem.resolvent(0.8).transpose() is forward.resolvent
    assert problem.resolvent(0.25) is not None and problem.resolvent(0.25).alpha == 0.25
    result = problem.solve((torch.ones_like(bias[0]),), solver=peaceman_rachford, alpha=0.8, tol=1e-8,
                           max_iter=500)
    assert result.resolvent.transpose() is forward.resolvent


def test_backward_problem_is_the_gradient_of_the_equilibrium_in_its_bias():
    op, bias, _ = setup()
    b = bias[0].clone().requires_grad_()
    z, stats = equilibrium(op, PROX, (b,), solver=peaceman_rachford, alpha=0.8, tol=1e-13, max_iter=20_000)
    grad = torch.randn_like(b)
    (expected,) = torch.autograd.grad(z[0], b, grad)
    problem = BackwardProblem.at_solution(op, PROX, (b,), stats.forward)
    u = problem.solve((grad,), solver=peaceman_rachford, alpha=0.8, tol=1e-13, max_iter=20_000).z[0]
    torch.testing.assert_close(u, expected, atol=1e-10, rtol=0)
