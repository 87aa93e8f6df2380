"""The floor model's arithmetic, the resolvent's folded shift, the PR start and the inexact
gradient option (issue 31)."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mondeq import fc_mondeq, multitier_mondeq, single_conv_mondeq
from mondeq.errors import InvalidSettingError
from mondeq.operators.work import Kernel, step_work
from mondeq.perf import FloorReport, KernelTimer, floor_line, step_floor
from splitting import ReLU, peaceman_rachford
from splitting.operator import DenseOperator
from splitting.peaceman_rachford import bias_start


def _gemm_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_dense_iteration_flops_are_those_the_resolvent_application_runs():
    model = fc_mondeq(30, 12, 3).double()
    op = model.layer.linear.operator()
    resolvent = op.resolvent(1.0)
    r = (torch.randn(5, 12, dtype=torch.float64),)
    work = step_work(model.layer.linear, 5, classes=3)
    counted = sum(k.flops * k.count for k in work.forward_iteration if k.kind == "gemm")
    assert counted == _gemm_flops(lambda: resolvent.solve(r)) == 2 * 5 * 12 * 12


def test_conv_iteration_block_product_flops_are_the_resolvents():
    """One batched complex product per frequency: 4 real products of each complex one."""
    model = single_conv_mondeq(1, 6, 3, pool=2).double()
    linear = model.layer.linear
    resolvent = linear.operator().resolvent(1.0)
    x = torch.randn(4, 3, *linear.size, dtype=torch.float64)
    work = step_work(linear, 4)
    (gemm,) = [k for k in work.forward_iteration if k.kind == "gemm"]
    assert gemm.complex and gemm.flops == 4 * _gemm_flops(lambda: resolvent.solve((x,)))


def test_floor_adds_iterations_factorisation_and_rest_at_the_timed_rates():
    model = multitier_mondeq(1, 8, (2, 3), pool_size=2)
    timer = KernelTimer(repeats=1)
    floor = step_floor(model, 4, forward_iterations=3, backward_iterations=2, timer=timer)
    work = step_work(model.layer.linear, 4, classes=10, features=model.head.weight.shape[1])
    assert floor.forward == pytest.approx(3 * timer.phase(work.forward_iteration))
    assert floor.backward == pytest.approx(2 * timer.phase(work.backward_iteration))
    assert floor.total == pytest.approx(floor.forward + floor.backward + floor.factorisation + floor.rest)
    assert floor.total > 0 and floor.flops == work.flops(3, 2) > 0
    assert set(floor.rates) >= {"complex gemm", "rfft2", "irfft2", "inverse", "stream"}


def test_kernel_flops_follow_the_shapes():
    assert Kernel("gemm", (3, 4, 5, 6)).flops == 2 * 3 * 4 * 5 * 6
    assert Kernel("gemm", (3, 4, 5, 6), complex=True).flops == 4 * 2 * 3 * 4 * 5 * 6
    assert Kernel("inverse", (2, 10), complex=True).flops == 4 * 2 * 2 * 1000
    assert Kernel("rfft2", (1, 4, 4)).flops == 2.5 * 16 * 4
    assert Kernel("stream", (100, 7)).bytes(4) == 2800


def test_floor_line_reads_as_a_multiple_of_the_floor():
    report = FloorReport(forward=1e-3, backward=1e-3, factorisation=0.0, rest=0.0, flops=1.0)
    assert floor_line(4.46e-3, report) == "step 4.46 ms = 2.2 × floor"
    # a step faster than its floor: the floor's microbenchmarks were disturbed, and the line says so
    assert floor_line(14.1e-3, 0.174).startswith("step 14.1 ms = 0.081 × floor (below 1: the floor was priced")


def test_a_shift_folded_into_the_resolvent_equals_solving_the_shifted_right_hand_side():
    gen = torch.Generator().manual_seed(0)
    w = 0.3 * torch.randn(7, 7, generator=gen, dtype=torch.float64)
    op = DenseOperator(w - 2 * torch.eye(7, dtype=torch.float64), m=1.0)  # any matrix: R is linear
    r, c = (torch.randn(4, 7, generator=gen, dtype=torch.float64),), (torch.randn(4, 7, generator=gen, dtype=torch.float64),)
    for resolvent in (op.resolvent(0.7), op.resolvent(0.7).transpose()):
        shift = resolvent.prepare_shift(c)
        assert shift.prepared is not None  # the dense resolvent folds it
        expected = resolvent.solve((r[0] + c[0],))[0]
        torch.testing.assert_close(resolvent.solve_shifted(r, shift)[0], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(resolvent.solve_shifted(r, c)[0], expected, rtol=1e-12, atol=1e-12)
    # a shift prepared by another resolvent is added, not trusted
    other = op.resolvent(0.7).prepare_shift(c)
    torch.testing.assert_close(op.resolvent(0.7).solve_shifted(r, other)[0],
                               op.resolvent(0.7).solve((r[0] + c[0],))[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_pr_starts_from_a_consistent_pair_and_keeps_its_promise(alpha):
    gen = torch.Generator().manual_seed(1)
    f, g = (0.4 * torch.randn(9, 9, generator=gen, dtype=torch.float64) for _ in range(2))
    w = 0.5 * torch.eye(9, dtype=torch.float64) - f.T @ f + g.T - g  # I − W ⪰ 0.5 I
    op = DenseOperator(w, m=0.5)
    bias = (torch.randn(6, 9, generator=gen, dtype=torch.float64),)
    z, u = bias_start(ReLU(), bias, alpha)
    torch.testing.assert_close(z[0], torch.relu(u[0]))  # z = prox(u), as after any iteration
    torch.testing.assert_close(z[0], torch.relu(bias[0]))  # σ(b): the equilibrium without W
    result = peaceman_rachford(op, ReLU(), bias, alpha=alpha, tol=1e-8, max_iter=2000)
    assert result.converged and float(result.true_residual.max()) <= 1e-8


def test_jacobian_free_gradient_is_the_layer_jacobian_times_the_incoming_gradient():
    torch.manual_seed(0)
    model = fc_mondeq(10, 6, 3).double()
    model.layer.gradient = "jacobian-free"
    x = torch.randn(4, 10, dtype=torch.float64)
    (z,), stats = model.layer.forward_with_stats(x)
    g = torch.randn_like(z)
    (dbias,) = torch.autograd.grad((z * g).sum(), model.layer.linear.U.bias)
    with torch.no_grad():
        v = z @ model.layer.linear.weight().T + model.layer.linear.bias(x)[0]
    torch.testing.assert_close(dbias, ((v > 0).double() * g).sum(0))
    assert stats.backward is None


def test_an_unknown_gradient_option_is_refused():
    with pytest.raises(InvalidSettingError, match="gradient"):
        fc_mondeq(10, 6, 3).layer.__class__(fc_mondeq(10, 6, 3).layer.linear, gradient="phantom")


def test_spectral_alpha_is_one_over_the_root_of_margin_times_lipschitz():
    from splitting.peaceman_rachford import spectral_alpha
    op = fc_mondeq(10, 6, 3).double().layer.linear.operator()
    assert spectral_alpha(op) == pytest.approx(1.0 / (op.m * op.lipschitz()) ** 0.5)


def test_the_fused_tail_gives_the_unfused_solve(monkeypatch):
    """The fused tail's formula (reflection, prox, per-tier norms combined) against the eager
    iteration, forward (ReLU) and backward (J·) on a multi-tier state; the eager functions stand
    in for their compiled versions (compiling costs seconds; its output is checked at run time)."""
    import splitting.fused as fused
    from splitting.prox import DiagonalQuadratic
    model = multitier_mondeq(1, 8, (2, 3), pool_size=2).double()
    linear = model.layer.linear
    with torch.no_grad():
        op = linear.operator()
        bias = linear.bias(torch.randn(3, 1, 8, 8, dtype=torch.float64))
        jac = tuple((torch.rand_like(b) > 0.4).double() for b in bias)
        problems = ((op, ReLU()), (op.transpose(), DiagonalQuadratic(jac)))
        for problem_op, prox in problems:
            monkeypatch.setattr(fused, "_enabled", False)
            plain = peaceman_rachford(problem_op, prox, bias, tol=1e-9, max_iter=500)
            monkeypatch.setattr(fused, "_enabled", True)
            monkeypatch.setattr(fused, "MIN_ELEMENTS", 0)
            monkeypatch.setattr(fused, "_compiled", dict(fused._EAGER))
            monkeypatch.setattr(fused, "_checked", set())
            fast = peaceman_rachford(problem_op, prox, bias, tol=1e-9, max_iter=500)
            assert fused._checked  # the fused path ran
            assert fast.iterations == plain.iterations and fast.converged
            for a, b in zip(fast.z, plain.z):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(fast.residuals, plain.residuals, rtol=1e-10, atol=1e-14)
