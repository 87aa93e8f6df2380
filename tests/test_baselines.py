"""Broyden and plain Anderson on z ↦ σ(Wz + b): baselines under the same stopping rule.

They carry no convergence guarantee for a monDEQ; the promise that still holds is the rule's:
``converged`` ⇒ every sample's true residual (computed here from the dense matrix) ≤ tol, and
a failure is reported as one.
"""
import pytest
import torch

from mondeq import MonDEQ
from splitting import BASELINES, SOLVERS, InvalidSettingError, SoftThreshold, peaceman_rachford
from tests.conftest import make_dense


def problem(scale, m, batch=8):
    linear = make_dense(n_in=6, n=12, m=m, scale=scale)
    with torch.no_grad():
        op = linear.operator()
        return linear, op, linear.bias(torch.randn(batch, 6))


def direct_residual(op, prox, bias, z):
    z = z[0]
    return (z - prox(z @ op.as_matrix().T + bias[0])).norm(dim=1) / z.norm(dim=1)


def test_baselines_are_kept_out_of_solvers():
    assert set(BASELINES) == {"broyden", "anderson-plain"}
    assert not set(BASELINES) & set(SOLVERS)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_reaches_the_equilibrium_on_an_easy_problem(name):
    _, op, bias = problem(scale=1.5, m=0.5)
    prox = SoftThreshold(0.05)
    result = BASELINES[name](op, prox, bias, tol=1e-10, max_iter=500)
    assert result.converged
    direct = direct_residual(op, prox, bias, result.z)
    assert float(direct.max()) <= 1e-10
    torch.testing.assert_close(result.true_residual, direct, rtol=1e-8, atol=0)
    reference = peaceman_rachford(op, prox, bias, alpha=1.0, tol=1e-13, max_iter=5_000)
    torch.testing.assert_close(result.z[0], reference.z[0], atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_failure_on_a_hard_monDEQ_is_reported_not_hidden(name):
    """‖W‖₂ ≈ 40 with m = 0.05: the plain map is far from a contraction. PR converges (its
    guarantee); the baseline does not, and says so: converged=False and a true residual > tol."""
    _, op, bias = problem(scale=6.0, m=0.05)
    prox = SoftThreshold(0.05)
    assert peaceman_rachford(op, prox, bias, alpha=1.0, tol=1e-10, max_iter=20_000).converged
    result = BASELINES[name](op, prox, bias, tol=1e-10, max_iter=500)
    assert not result.converged
    assert float(direct_residual(op, prox, bias, result.z).max()) > 1e-10


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_in_a_layer_gives_the_implicit_gradient(name):
    linear, _, _ = problem(scale=1.0, m=0.5)
    x = torch.randn(4, 6)
    grads = []
    for solver in (BASELINES[name], "pr"):
        layer = MonDEQ(linear, SoftThreshold(0.05), solver=solver, alpha=1.0, tol=1e-11, max_iter=2_000)
        layer.zero_grad()
        (layer(x)[0] ** 2).sum().backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, atol=1e-8, rtol=1e-7)


def test_broyden_rejects_a_bad_memory():
    _, op, bias = problem(scale=1.0, m=0.5)
    with pytest.raises(InvalidSettingError, match="memory"):
        BASELINES["broyden"](op, SoftThreshold(0.05), bias, memory=0)
