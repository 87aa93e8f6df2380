"""The Lipschitz bound ‖U‖₂/m and the margin certificates built on it."""
import pytest
import torch

from mondeq import MonDEQ, certified_accuracy, certified_radius, fc_mondeq, lipschitz_bound, margin_lipschitz
from tests.conftest import make_dense


def test_input_norm_is_the_spectral_norm():
    linear = make_dense(n_in=8, n=5)
    assert abs(float(linear.input_norm().detach()) - float(torch.linalg.svdvals(linear.U.weight.detach())[0])) < 1e-12


def test_bound_holds_on_1000_random_pairs():
    linear = make_dense(n_in=10, n=12, m=0.3, scale=2.0)
    with torch.no_grad():
        linear.U.weight.mul_(3.0)
    layer = MonDEQ(linear, solver="pr", alpha=1.0, tol=1e-12, max_iter=2_000)
    bound = lipschitz_bound(layer)
    x = torch.randn(1000, 10)
    # half the pairs far apart, half close together (where the bound is tightest)
    x2 = torch.cat([torch.randn(500, 10), x[500:] + 1e-2 * torch.randn(500, 10)])
    with torch.no_grad():
        (z1,), (z2,) = layer(x), layer(x2)
    ratio = (z1 - z2).norm(dim=1) / (x - x2).norm(dim=1)
    assert float(ratio.max()) <= bound * (1 + 1e-9)
    assert float(ratio.max()) > 0.05 * bound  # the check is not vacuous


def test_margin_bound_holds_for_the_classifier():
    model = fc_mondeq(10, 12, 4, tol=1e-12, max_iter=2_000)
    margin_lip = margin_lipschitz(model.head_matrix(), lipschitz_bound(model.layer))
    x = torch.randn(500, 10)
    x2 = x + 0.1 * torch.randn(500, 10)
    with torch.no_grad():
        h1, h2 = model(x), model(x2)
    dist = (x - x2).norm(dim=1)
    for i in range(4):
        for j in range(4):
            change = ((h1[:, i] - h1[:, j]) - (h2[:, i] - h2[:, j])).abs()
            assert bool((change <= margin_lip[i, j] * dist * (1 + 1e-9) + 1e-12).all())


def test_certified_radius_matches_the_definition():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [1.0, 0.0, 4.0]])
    labels = torch.tensor([0, 1, 0])
    margin_lip = torch.tensor([[0.0, 2.0, 4.0], [2.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    radius = certified_radius(logits, labels, margin_lip)
    torch.testing.assert_close(radius, torch.tensor([min(2 / 2, 3 / 4), min(2 / 2, 0.5 / 1), 0.0]))
    torch.testing.assert_close(certified_radius(logits, labels, margin_lip, input_scale=0.3), 0.3 * radius)
    assert certified_accuracy(radius, [0.0, 0.6, 1.0]) == {0.0: 2 / 3, 0.6: 1 / 3, 1.0: 0.0}


def test_cached_norms_follow_parameter_updates():
    """‖U‖₂/m is computed once per parameter version, and an optimizer step invalidates it."""
    from mondeq import fc_mondeq, lipschitz_bound

    model = fc_mondeq(6, 5, 3).double()
    linear = model.layer.linear
    calls = []
    original = linear.input_norm
    linear.input_norm = lambda: calls.append(1) or original()
    first = lipschitz_bound(model)
    assert lipschitz_bound(model) == first and len(calls) == 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(4, 6, dtype=torch.float64)).sum().backward()
    optimizer.step()
    updated = lipschitz_bound(model)
    assert len(calls) == 2
    assert updated == pytest.approx(float(torch.linalg.matrix_norm(linear.U.weight.detach(), 2)) / linear.m)
    assert updated != first


def test_float32_bounds_are_not_below_the_exact_norms():
    """A float32 SVD can land ~1e-7 below the norm; the bounds are computed in float64 (whose own
    rounding, ~1e-16, is what the 1e-12 allows)."""
    from mondeq import multitier_mondeq, single_conv_mondeq

    torch.set_default_dtype(torch.float32)
    for seed in range(8):
        torch.manual_seed(seed)
        for model in (fc_mondeq(30, 40, 3), single_conv_mondeq(1, 6, 3, 3, pool=2),
                      multitier_mondeq(1, 8, (2, 2), 3, pool_size=2)):
            linear = model.layer.linear
            exact_u = float(copy_double(linear).input_norm())
            assert lipschitz_bound(model) * linear.m >= exact_u * (1 - 1e-12)
        op = fc_mondeq(30, 40, 3).layer.linear.operator()
        weight = op.weight.detach().double()
        exact_l = float(torch.linalg.matrix_norm(torch.eye(40, dtype=torch.float64) - weight, 2))
        assert op.lipschitz() >= exact_l * (1 - 1e-12)


def copy_double(module):
    import copy

    return copy.deepcopy(module).double()
