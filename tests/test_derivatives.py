"""Every derivative autograd can ask of an equilibrium is exact or refused with a clear error.

Reverse mode is covered by gradcheck elsewhere; here: forward mode (forward_ad, torch.func.jvp)
against central finite differences, full Jacobians, and the refusals (second order, vmap-based
transforms). Plus autocast: the solve runs in the parameters' dtype.
"""
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from mondeq import MonDEQ, fc_mondeq, single_conv_mondeq
from mondeq.operators.conv import MonotoneConv
from splitting import ConvergenceWarning, SoftThreshold, UnsupportedDerivativeError
from tests.conftest import make_dense

TIGHT = dict(tol=1e-12, max_iter=5_000)


def layers():
    dense = MonDEQ(make_dense(n_in=6, n=9, m=0.5, scale=1.5), SoftThreshold(0.05), solver="pr",
                   alpha=0.7, **TIGHT)
    conv = MonDEQ(MonotoneConv(1, 3, 5, m=0.5, dtype=torch.float64), solver="pr", alpha=0.5, **TIGHT)
    return {"dense": (dense, torch.randn(4, 6)), "conv": (conv, torch.randn(2, 1, 5, 5))}


def central_difference(fn, x, direction, eps=1e-5):
    with torch.no_grad():
        return (fn(x + eps * direction) - fn(x - eps * direction)) / (2 * eps)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_forward_mode_tangent_matches_finite_differences(kind):
    layer, x = layers()[kind]
    direction = torch.randn_like(x)

    def state(inp):
        return layer(inp)[0]

    expected = central_difference(state, x, direction)
    _, jvp = torch.func.jvp(state, (x,), (direction,))
    torch.testing.assert_close(jvp, expected, atol=1e-7, rtol=1e-6)
    with fwAD.dual_level():
        out = state(fwAD.make_dual(x, direction))
        tangent = fwAD.unpack_dual(out).tangent
    torch.testing.assert_close(tangent, expected, atol=1e-7, rtol=1e-6)
    # not the derivative of one layer application at a fixed z* (the old, wrong answer)
    assert (tangent - expected).norm() < 1e-3 * expected.norm()


def test_forward_mode_tangent_of_a_parameter():
    layer, x = layers()["dense"]
    params = dict(layer.named_parameters())
    direction = {k: torch.randn_like(v) if k == "linear.F" else torch.zeros_like(v) for k, v in params.items()}

    def state(p):
        return torch.func.functional_call(layer, p, (x,))[0]

    _, jvp = torch.func.jvp(state, (params,), (direction,))
    eps = 1e-5
    with torch.no_grad():
        plus = state({k: v + eps * direction[k] for k, v in params.items()})
        minus = state({k: v - eps * direction[k] for k, v in params.items()})
    torch.testing.assert_close(jvp, (plus - minus) / (2 * eps), atol=1e-7, rtol=1e-6)


def test_full_jacobian_by_reverse_mode_matches_finite_differences():
    layer, x = layers()["dense"]
    x = x[:1]

    def state(inp):
        return layer(inp)[0]

    jac = torch.autograd.functional.jacobian(state, x)
    for j in range(x.shape[1]):
        direction = torch.zeros_like(x)
        direction[0, j] = 1.0
        torch.testing.assert_close(jac[0, :, 0, j], central_difference(state, x, direction)[0],
                                   atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("transform", [torch.func.jacfwd, torch.func.jacrev])
def test_vmap_based_jacobians_are_refused_clearly(transform):
    layer, x = layers()["dense"]
    with pytest.raises(UnsupportedDerivativeError, match="vmap"):
        transform(lambda inp: layer(inp)[0])(x)


def test_second_order_derivatives_are_refused_clearly():
    model = fc_mondeq(6, 8, 3, tol=1e-10, max_iter=1000).double()
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    params = tuple(model.parameters())

    def loss(*flat):
        out = torch.func.functional_call(model, dict(zip(dict(model.named_parameters()), flat)), (x,))
        return torch.nn.functional.cross_entropy(out, y)

    with pytest.raises(UnsupportedDerivativeError, match="second-order"):
        torch.autograd.functional.hvp(loss, params, tuple(torch.randn_like(p) for p in params))
    out = torch.nn.functional.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(out, model.layer.linear.F, create_graph=True)
    with pytest.raises(UnsupportedDerivativeError, match="second-order"):
        torch.autograd.grad(grad.sum(), model.layer.linear.F)


@pytest.mark.parametrize("build", ["fc", "conv"])
def test_training_step_under_cpu_bfloat16_autocast_solves_in_float32(build):
    torch.set_default_dtype(torch.float32)
    model = (fc_mondeq(16, 12, 3, tol=1e-3, max_iter=200) if build == "fc"
             else single_conv_mondeq(1, 6, 4, 3, pool=2, tol=1e-3, max_iter=200))
    x = torch.randn(5, 16) if build == "fc" else torch.randn(5, 1, 6, 6)
    y = torch.tensor([0, 1, 2, 0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, stats = model.forward_with_stats(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    assert stats.forward.converged and stats.forward.z[0].dtype == torch.float32
    assert stats.backward is not None and stats.backward.converged
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all())
               for p in model.parameters())
    reference = model(x)  # the same model in float32: autocast changes only U and the head
    assert (logits.float() - reference).abs().max() < 0.1


def test_half_precision_parameters_are_refused():
    for dtype in (torch.float16, torch.bfloat16):
        model = fc_mondeq(6, 5, 3).to(dtype)
        with pytest.raises(TypeError, match="float32"):
            model(torch.randn(2, 6, dtype=dtype))


def test_mixed_dtype_input_is_refused():
    layer = MonDEQ(make_dense(n_in=6))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match="dtype"):
            layer(torch.randn(2, 6, dtype=dtype))


def test_backward_solve_warns_when_it_does_not_converge():
    layer = MonDEQ(make_dense(n_in=6, scale=2.0), tol=1e-3, max_iter=200, backward_tol=1e-14,
                   backward_max_iter=2)
    with pytest.warns(ConvergenceWarning, match="backward"):
        layer(torch.randn(3, 6))[0].sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        layer.backward_tol, layer.backward_max_iter = 1e-6, 500
        layer(torch.randn(3, 6))[0].sum().backward()


def test_functional_gradient_equals_autograd_gradient():
    """torch.func.grad runs the backward with create_graph=True; first order stays exact."""
    model = fc_mondeq(6, 8, 3, tol=1e-10, max_iter=1000).double()
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    functional = torch.func.grad(loss)(params)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(functional[name], p.grad, atol=1e-12, rtol=1e-10)
