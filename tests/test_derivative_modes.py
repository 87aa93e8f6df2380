"""Every first-order derivative mode, for every layer kind and every parameter, is exact.

The user's claim: forward mode (``torch.func.jvp`` and ``torch.autograd.forward_ad``) and
reverse mode (``torch.autograd`` and ``torch.func.grad``) give the derivative of the equilibrium
(checked against central differences) in the direction of **any** parameter, for the dense, the
single-convolution and the multi-tier layer, or raise a clear error. A tangent that is silently
zero or partial (a code path that decides "no derivative needed" from ``requires_grad`` alone)
fails here.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from mondeq import MonDEQ
from mondeq.operators.conv import MonotoneConv
from mondeq.operators.multitier import MonotoneMultiTier
from tests.conftest import make_dense

TIGHT = dict(solver="pr", alpha=0.5, tol=1e-12, max_iter=5_000)


def build(kind: str) -> tuple[MonDEQ, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "dense":
        return MonDEQ(make_dense(n_in=6, n=7, m=0.5, scale=1.5), **TIGHT), torch.randn(3, 6, dtype=torch.float64)
    if kind == "conv":
        linear = MonotoneConv(1, 3, 5, m=0.5, dtype=torch.float64)
        return MonDEQ(linear, **TIGHT), torch.randn(2, 1, 5, 5, dtype=torch.float64)
    linear = MonotoneMultiTier(1, (2, 3), 4, m=0.5, dtype=torch.float64)
    return MonDEQ(linear, **TIGHT), torch.randn(2, 1, 4, 4, dtype=torch.float64)


def flat_state(layer: MonDEQ, params: dict, x: torch.Tensor) -> torch.Tensor:
    out = torch.func.functional_call(layer, params, (x,))
    return torch.cat([t.reshape(t.shape[0], -1) for t in out], 1)


def central_difference(layer, params, x, direction, eps=1e-5):
    with torch.no_grad():
        plus = flat_state(layer, {k: v + eps * direction[k] for k, v in params.items()}, x)
        minus = flat_state(layer, {k: v - eps * direction[k] for k, v in params.items()}, x)
    return (plus - minus) / (2 * eps)


def parameter_cases():
    for kind in ("dense", "conv", "multitier"):
        layer, _ = build(kind)
        for name, _ in layer.named_parameters():
            yield kind, name


CASES = list(parameter_cases())


def one_direction(params: dict, name: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {k: (torch.randn(v.shape, dtype=v.dtype, generator=gen) if k == name else torch.zeros_like(v))
            for k, v in params.items()}


def parameter_problem(kind: str, name: str, configure=None):
    """The layer (``configure(layer)`` applied first), its input, its detached parameters, a random
    direction in parameter ``name`` and the central difference of the equilibrium along it."""
    layer, x = build(kind)
    if configure is not None:
        configure(layer)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    direction = one_direction(params, name)
    return layer, x, params, direction, central_difference(layer, params, x, direction)


@pytest.mark.parametrize("kind, name", CASES)
def test_torch_func_jvp_in_every_parameter_direction(kind, name):
    layer, x, params, direction, expected = parameter_problem(kind, name)
    _, tangent = torch.func.jvp(lambda p: flat_state(layer, p, x), (params,), (direction,))
    assert expected.norm() > 1e-6  # the direction moves the equilibrium
    torch.testing.assert_close(tangent, expected, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kind, name", CASES)
def test_forward_ad_dual_parameter_in_every_direction(kind, name):
    layer, x, params, direction, expected = parameter_problem(kind, name)
    with fwAD.dual_level():
        duals = {k: fwAD.make_dual(v, direction[k]) if k == name else v for k, v in params.items()}
        tangent = fwAD.unpack_dual(flat_state(layer, duals, x)).tangent
    assert tangent is not None, "the output carries no tangent"
    torch.testing.assert_close(tangent, expected, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kind", ["dense", "conv", "multitier"])
def test_torch_func_grad_equals_autograd_and_finite_differences(kind):
    layer, x = build(kind)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    weights = torch.randn_like(flat_state(layer, params, x))

    def objective(p):
        return (flat_state(layer, p, x) * weights).sum()

    functional = torch.func.grad(objective)(params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    autograd = torch.autograd.grad(objective(leaves), list(leaves.values()))
    for (name, value), reference in zip(functional.items(), autograd):
        torch.testing.assert_close(value, reference, atol=1e-10, rtol=1e-8)
        direction = one_direction(params, name)
        fd = (central_difference(layer, params, x, direction) * weights).sum()
        torch.testing.assert_close((value * direction[name]).sum(), fd, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("solver", ["fb", "dr", "anderson-pr", "anderson-fb"])
@pytest.mark.parametrize("kind, name", [("dense", "linear.F"), ("conv", "linear.F"), ("multitier", "linear.A.0")])
def test_forward_mode_is_exact_for_every_solver(kind, name, solver):
    """Forward-backward applies W inside the iteration: the tangent must still be the implicit
    one, not the derivative of the unrolled iterations."""
    def configure(layer):
        layer.solver = solver
        if solver.endswith("fb"):
            layer.alpha = layer.linear.operator().m / layer.linear.operator().lipschitz() ** 2

    layer, x, params, direction, expected = parameter_problem(kind, name, configure)
    _, tangent = torch.func.jvp(lambda p: flat_state(layer, p, x), (params,), (direction,))
    torch.testing.assert_close(tangent, expected, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kind", ["dense", "conv", "multitier"])
def test_forward_mode_in_an_input_direction(kind):
    layer, x = build(kind)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    direction = torch.randn_like(x)
    eps = 1e-5
    with torch.no_grad():
        expected = (flat_state(layer, params, x + eps * direction)
                    - flat_state(layer, params, x - eps * direction)) / (2 * eps)
    _, tangent = torch.func.jvp(lambda inp: flat_state(layer, params, inp), (x,), (direction,))
    torch.testing.assert_close(tangent, expected, atol=1e-7, rtol=1e-6)
    with fwAD.dual_level():
        dual = fwAD.unpack_dual(flat_state(layer, params, fwAD.make_dual(x, direction))).tangent
    torch.testing.assert_close(dual, expected, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kind", ["conv", "multitier"])
def test_double_backward_jvp_is_refused_with_a_pointer_to_forward_mode(kind):
    """torch.autograd.functional.jvp differentiates a vjp (double backward): refused, and the
    message names the forward-mode APIs that work."""
    from splitting import UnsupportedDerivativeError

    layer, x = build(kind)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    names, values = list(params), tuple(params.values())
    with pytest.raises(UnsupportedDerivativeError, match="torch.func.jvp"):
        torch.autograd.functional.jvp(lambda *flat: flat_state(layer, dict(zip(names, flat)), x),
                                      values, tuple(torch.randn_like(v) for v in values))
