"""Implicit gradients: gradcheck, agreement with autograd through an unrolled solve, memory."""
import functools

import pytest
import torch

from mondeq.layer import MonDEQ
from splitting import (DenseOperator, ReLU, SoftThreshold, equilibrium, forward_backward,
                       max_stable_alpha, peaceman_rachford)
from tests.conftest import dense_weight, make_dense, random_params

NONLINEARITIES = [ReLU(), SoftThreshold(0.05)]
M = 0.5


def solver_and_alpha(name, F, G):
    if name == "pr":
        return peaceman_rachford, 0.8
    op = DenseOperator(dense_weight(F, G, M).detach(), M)
    return functools.partial(forward_backward, check_step="raise"), 0.9 * max_stable_alpha(op)


def equilibrium_fn(prox, solver, alpha):
    def fn(x, U, b, F, G):
        op = DenseOperator(dense_weight(F, G, M), M)
        z, _ = equilibrium(op, prox, (x @ U.T + b,), solver=solver, alpha=alpha, tol=1e-13,
                           max_iter=20_000)
        return z[0]
    return fn


@pytest.mark.parametrize("solver_name", ["fb", "pr"])
@pytest.mark.parametrize("prox", NONLINEARITIES, ids=repr)
def test_gradcheck_all_inputs_and_parameters(solver_name, prox):
    params = random_params()
    solver, alpha = solver_and_alpha(solver_name, params[3], params[4])
    fn = equilibrium_fn(prox, solver, alpha)
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6, rtol=1e-5)


def unrolled_equilibrium(prox, x, U, b, F, G, iterations=3_000):
    """Autograd through a long forward-backward iteration (the slow, memory-hungry reference)."""
    w = dense_weight(F, G, M)
    alpha = 0.9 * max_stable_alpha(DenseOperator(w.detach(), M))
    bias = x @ U.T + b
    z = torch.zeros_like(bias)
    for _ in range(iterations):
        z = prox.prox((1 - alpha) * z + alpha * (z @ w.T + bias), alpha)
    return z


@pytest.mark.parametrize("solver_name", ["fb", "pr"])
@pytest.mark.parametrize("prox", NONLINEARITIES, ids=repr)
def test_matches_autograd_through_unrolled_iteration(solver_name, prox):
    params = random_params(n_in=6, n=8, batch=4)
    weights = torch.randn(4, 8)
    solver, alpha = solver_and_alpha(solver_name, params[3], params[4])
    implicit = torch.autograd.grad((equilibrium_fn(prox, solver, alpha)(*params) * weights).sum(), params)
    unrolled = torch.autograd.grad((unrolled_equilibrium(prox, *params) * weights).sum(), params)
    for gi, gu in zip(implicit, unrolled):
        torch.testing.assert_close(gi, gu, atol=1e-8, rtol=1e-6)


def test_backward_stats_are_recorded_and_converged():
    linear = make_dense(n_in=6, n=10, m=M, scale=1.5)
    layer = MonDEQ(linear, solver="pr", alpha=1.0, tol=1e-8, max_iter=500)
    x = torch.randn(5, 6)
    z, stats = layer.forward_with_stats(x)
    assert stats.backward is None
    z[0].pow(2).sum().backward()
    assert stats.backward is not None and stats.backward.converged
    assert stats.backward.resolvent.transpose() is stats.forward.resolvent  # reused factorisation
    assert float(stats.backward.true_residual.max()) < 1e-6


def test_module_gradients_match_unrolled_reference():
    linear = make_dense(n_in=6, n=10, m=M, scale=1.5)
    layer = MonDEQ(linear, SoftThreshold(0.05), solver="pr", alpha=0.5, tol=1e-12, max_iter=5_000)
    x = torch.randn(5, 6)
    loss = layer(x)[0].sin().sum()
    grads = torch.autograd.grad(loss, list(linear.parameters()))
    ref = unrolled_equilibrium(SoftThreshold(0.05), x, linear.U.weight, linear.U.bias, linear.F, linear.G)
    ref_grads = torch.autograd.grad(ref.sin().sum(), list(linear.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-8, rtol=1e-6)


def test_graph_does_not_grow_with_iterations():
    """The autograd graph holds one layer application, however many iterations the solve ran."""
    linear = make_dense(n_in=6, n=10, m=M, scale=2.0)
    x = torch.randn(5, 6)
    sizes = []
    for tol in (1e-2, 1e-12):
        layer = MonDEQ(linear, solver="pr", alpha=0.3, tol=tol, max_iter=5_000)
        z, stats = layer.forward_with_stats(x)
        sizes.append((stats.forward.iterations, count_graph_nodes(z[0].grad_fn)))
    (few, nodes_few), (many, nodes_many) = sizes
    assert many > 5 * few
    assert nodes_few == nodes_many


def count_graph_nodes(fn) -> int:
    seen, stack = set(), [fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


class _CountingOperator(DenseOperator):
    """A dense operator that counts its applications of W and Wᵀ."""

    def __init__(self, weight, m):
        super().__init__(weight, m)
        self.calls = {"mv": 0, "rmv": 0}

    def mv(self, z):
        self.calls["mv"] += 1
        return super().mv(z)

    def rmv(self, z):
        self.calls["rmv"] += 1
        return super().rmv(z)


def test_peaceman_rachford_step_applies_w_only_to_confirm_and_once_with_a_graph():
    """Forward and backward iterate with the resolvent only: W (Wᵀ) is applied once per
    confirmation of a proposed stop (a handful per solve, not one per iteration) plus one
    differentiable application of W per training step; the implicit node hands u to v directly."""
    x, U, b, F, G = random_params()
    op = _CountingOperator(dense_weight(F, G, M), M)
    z, stats = equilibrium(op, ReLU(), (x @ U.T + b,), solver=peaceman_rachford, alpha=1.0,
                           tol=1e-10, max_iter=500)
    z[0].square().sum().backward()
    assert stats.backward is not None and stats.backward.converged
    assert stats.forward.iterations > 10 and stats.backward.iterations > 10
    assert 2 <= op.calls["mv"] <= 1 + 3 and 1 <= op.calls["rmv"] <= 3, op.calls
    assert F.grad is not None and torch.isfinite(F.grad).all()
