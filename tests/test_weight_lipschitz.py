"""The weight Lipschitz bound: perturbing W, U, b moves each equilibrium by no more than the bound
(float64, equilibria solved to 1e-12), the bound is attained where the derivation is tight, and
it is within a modest factor of the measured change otherwise."""
import copy

import pytest
import torch

import mondeq
from mondeq import MonDEQ, MonotoneConv, MonotoneLinear, weight_lipschitz_bound
from mondeq.errors import InvalidSettingError
from splitting import LeakyReLU, ReLU, Sigmoid, Tanh
from test_structure import Unstructured

TIGHT = {"tol": 1e-12, "max_iter": 5000}


def _perturb(layer: MonDEQ, scale: float, *, only: str | None = None, seed: int = 1) -> MonDEQ:
    other = copy.deepcopy(layer)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in other.linear.named_parameters():
            if only is None or name.startswith(only):
                p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return other


def _moved(layer: MonDEQ, other: MonDEQ, x: torch.Tensor) -> torch.Tensor:
    z, s = layer.forward_with_stats(x)
    z2, s2 = other.forward_with_stats(x)
    assert s.forward.converged and s2.forward.converged
    return torch.cat([(t - t2).reshape(len(x), -1) for t, t2 in zip(z, z2)], 1).norm(dim=1)


def _dense(prox, n_in=20, n=16, m=0.5) -> MonDEQ:
    return MonDEQ(MonotoneLinear(n_in, n, m=m, dtype=torch.float64), prox, **TIGHT)


def _conv(prox) -> MonDEQ:
    return MonDEQ(MonotoneConv(2, 3, 6, m=0.5, dtype=torch.float64), prox, **TIGHT)


def _multitier(prox) -> MonDEQ:
    return MonDEQ(mondeq.MonotoneMultiTier(2, (2, 3), 4, m=0.5, dtype=torch.float64), prox, **TIGHT)


@pytest.mark.parametrize("build", [_dense, _conv, _multitier], ids=["dense", "conv", "multitier"])
@pytest.mark.parametrize("prox", [ReLU(), Tanh(), Sigmoid()], ids=["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("scale", [1e-3, 0.1])
def test_equilibrium_moves_less_than_the_weight_bound(build, prox, scale):
    layer = build(prox)
    x = torch.randn(8, *layer.linear.input_shape)
    other = _perturb(layer, scale)
    moved = _moved(layer, other, x)
    cert = weight_lipschitz_bound(layer, other, x)
    assert (moved <= cert.bound * (1 + 1e-9)).all()
    ratio = (moved / cert.bound).max().item()
    print(f"{build.__name__} {prox!r} scale {scale}: measured/bound ≤ {ratio:.3f}")
    # not absurdly loose for a random perturbation of every weight (measured ≈ 0.1 for ReLU and
    # tanh; the bound cannot see that the sigmoid's slope is at most 1/4: ≈ 0.02 there)
    assert ratio > (0.01 if isinstance(prox, Sigmoid) else 0.05)


@pytest.mark.parametrize("only", ["F", "G", "U.weight", "U.bias"])
def test_each_weight_alone_stays_within_the_bound(only):
    layer = _dense(Tanh())
    x = torch.randn(8, 20)
    other = _perturb(layer, 0.2, only=only)
    cert = weight_lipschitz_bound(layer, other, x)
    assert (_moved(layer, other, x) <= cert.bound * (1 + 1e-9)).all()
    moved_part = {"F": "operator_change", "G": "operator_change", "U.weight": "input_change",
                  "U.bias": "bias_change"}[only]
    for part in ("operator_change", "input_change", "bias_change"):
        assert (getattr(cert, part) > 0) == (part == moved_part), part


def test_bound_is_attained_by_a_bias_change_of_a_linear_layer():
    """σ = identity (leaky slope 1), F = G = 0: z = (Ux + b)/m, so ‖z − z′‖ = ‖b − b′‖/m exactly."""
    layer = _dense(LeakyReLU(1.0), m=0.7)
    with torch.no_grad():
        layer.linear.F.zero_()
        layer.linear.G.zero_()
    other = _perturb(layer, 0.3, only="U.bias")
    x = torch.randn(5, 20)
    cert = weight_lipschitz_bound(layer, other, x)
    torch.testing.assert_close(_moved(layer, other, x), cert.bound, rtol=1e-10, atol=0)
    torch.testing.assert_close(cert.bound, torch.full((5,), cert.bias_change / 0.7))


def test_the_smaller_margin_orientation_is_used():
    """Different margins: the bound is the minimum of the two orientations, each sound alone."""
    layer = _dense(ReLU(), m=0.5)
    other = _perturb(layer, 0.05)
    other.linear.m = 2.0  # W′ = (1 − 2)I − F′ᵀF′ + G′ᵀ − G′: a different, more monotone network
    x = torch.randn(6, 20)
    cert = weight_lipschitz_bound(layer, other, x)
    assert cert.margins == (0.5, 2.0)
    assert (_moved(layer, other, x) <= cert.bound * (1 + 1e-9)).all()


@pytest.mark.parametrize("build", [_dense, _conv], ids=["dense", "conv"])
@pytest.mark.parametrize("solve_tol", [1e-12, 1e-1])
def test_a_posteriori_bound_is_sound_for_any_state_and_tighter(build, solve_tol):
    """With the perturbed network's computed state (tight, or crude at tol 0.1: its error is
    paid for), the bound still holds and is several times tighter than the a priori one."""
    layer = build(Tanh())
    other = _perturb(layer, 0.1)
    x = torch.randn(8, *layer.linear.input_shape)
    moved = _moved(layer, other, x)
    with mondeq.solver_settings(other, tol=solve_tol, max_iter=5000):
        state, _ = other.forward_with_stats(x)
    cert = weight_lipschitz_bound(layer, other, x, perturbed_state=state)
    assert (moved <= cert.a_posteriori * (1 + 1e-9)).all()
    torch.testing.assert_close(cert.bound, torch.minimum(cert.a_posteriori,
                                                         weight_lipschitz_bound(layer, other, x).bound))
    if solve_tol < 1e-6:
        prior = weight_lipschitz_bound(layer, other, x).bound
        assert (cert.a_posteriori < 0.5 * prior).all()
        assert (moved / cert.a_posteriori).max() > 0.25


def test_state_bound_bounds_the_equilibrium_norm():
    layer = _dense(Sigmoid())  # σ(0) = 1/2: the a priori bound needs its p term
    x = torch.randn(8, 20)
    cert = weight_lipschitz_bound(layer, _perturb(layer, 0.1), x)
    (z,), _ = layer.forward_with_stats(x)
    assert (z.norm(dim=1) <= cert.state_bounds[0] * (1 + 1e-12)).all()


def test_classifiers_take_pixel_inputs_through_their_normalisation():
    torch.manual_seed(0)
    model = mondeq.fc_mondeq(16, 10, 3, mean=0.5, std=0.25, tol=1e-12, max_iter=5000).double()
    other = copy.deepcopy(model)
    other.layer = _perturb(model.layer, 0.1)
    x = torch.rand(4, 16)
    by_classifier = weight_lipschitz_bound(model, other, x).bound
    by_layer = weight_lipschitz_bound(model.layer, other.layer, (x - 0.5) / 0.25).bound
    torch.testing.assert_close(by_classifier, by_layer)


def test_refuses_different_networks():
    layer = _dense(ReLU())
    with pytest.raises(InvalidSettingError, match="nonlinearities differ"):
        weight_lipschitz_bound(layer, _dense(Tanh()), torch.randn(2, 20))
    with pytest.raises(InvalidSettingError, match="architectures"):
        weight_lipschitz_bound(layer, _dense(ReLU(), n=8), torch.randn(2, 20))
    large = MonDEQ(Unstructured())  # no block structure of its own, too large to probe
    with pytest.raises(InvalidSettingError, match="block_structure"):
        weight_lipschitz_bound(large, copy.deepcopy(large), torch.randn(2, 2, dtype=torch.float64))
