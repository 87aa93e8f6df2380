"""Measured looseness: Lipschitz ratios found on actual pairs never exceed the certified K_yj
(soundness), and on a model whose bound is attained the search finds it (a real lower bound)."""
import torch

from mondeq import fc_mondeq, margin_lipschitz_matrix
from mondeq.robustness.looseness import (ascend_lipschitz_ratio, margin_of, measure_looseness,
                                         pgd_pair_ratio)


def tight_model() -> torch.nn.Module:
    r"""W = 0 (F = G = 0, m = 1) and a bias that keeps every unit active on [0, 1]^6, so
    z* = Ux + b; head rows w_0 = u_1 (top left singular vector of U), w_1 = 0: the margin
    h_0 − h_1 = u_1ᵀ(Ux + b) has gradient norm σ_1 = ‖U‖₂ = K_01 everywhere."""
    torch.manual_seed(0)
    model = fc_mondeq(6, 8, 3, m=1.0, tol=1e-12, max_iter=500).double()
    lin = model.layer.linear
    with torch.no_grad():
        lin.F.zero_()
        lin.G.zero_()
        lin.U.bias.fill_(20.0)
        u, _, _ = torch.linalg.svd(lin.U.weight)
        model.head.weight[0] = u[:, 0]
        model.head.weight[1] = 0.0
    return model.eval()


def test_ratio_ascent_attains_the_constant_where_the_bound_is_tight() -> None:
    model = tight_model()
    x = torch.rand(5, 6, dtype=torch.float64) * 0.6 + 0.2
    y = torch.zeros(5, dtype=torch.long)
    j = torch.ones(5, dtype=torch.long)
    found = ascend_lipschitz_ratio(model, x, y, j, steps=3, tol=1e-12)
    k = margin_lipschitz_matrix(model, differentiable=False)[0, 1]
    assert torch.all(found.ratio >= k * (1 - 1e-6)), (found.ratio, k)
    assert torch.all(found.ratio <= k * (1 + 1e-9))
    # the ratio is that of the returned pair, recomputed here
    g = lambda v: margin_of(model, v, y, j).detach()  # noqa: E731
    again = (g(found.a) - g(found.b)).abs() / (found.a - found.b).norm(dim=1)
    torch.testing.assert_close(again, found.ratio, rtol=1e-10, atol=0)


def test_found_ratios_never_exceed_the_certified_constant() -> None:
    torch.manual_seed(1)
    model = fc_mondeq(10, 12, 4, m=0.3, tol=1e-12, max_iter=2000).double().eval()
    with torch.no_grad():  # a strong, non-symmetric W: many activation regions
        model.layer.linear.F.mul_(2.0)
        model.layer.linear.G.mul_(3.0)
    x = torch.rand(40, 10, dtype=torch.float64)
    y = torch.randint(0, 4, (40,))
    k = margin_lipschitz_matrix(model, differentiable=False)
    found = ascend_lipschitz_ratio(model, x, y, steps=15, step_size=0.2, tol=1e-12, max_iter=2000)
    assert torch.all(found.constant == k[y, found.other])
    assert torch.all(found.ratio <= found.constant * (1 + 1e-9))
    start = ascend_lipschitz_ratio(model, x, y, steps=0, tol=1e-12, max_iter=2000)  # ≈ ‖∇g(x)‖
    assert found.ratio.mean() > 1.05 * start.ratio.mean()  # the ascent climbs past the local gradients
    result = measure_looseness(model, x, y, epsilons=[0.05, 0.2], ascent_steps=5, pgd_steps=10, tol=1e-12,
                               max_iter=2000, generator=torch.Generator().manual_seed(0))
    pairs = result.pgd_pairs
    assert torch.all(pairs.ratio <= pairs.constant * (1 + 1e-9))
    assert pairs.ratio.max() > 0
    for eps in (0.05, 0.2):  # certified accuracy is a lower bound on PGD-robust accuracy
        assert result.gap[eps] >= 0


def test_pgd_pair_ratio_is_the_pairs_own_ratio() -> None:
    model = tight_model()
    x = torch.rand(4, 6, dtype=torch.float64) * 0.6 + 0.2
    x_adv = x + 0.1 * torch.randn_like(x)
    y = torch.zeros(4, dtype=torch.long)
    pairs = pgd_pair_ratio(model, x, x_adv, y, tol=1e-12)
    with torch.no_grad():
        g = lambda v: margin_of(model, v, y, pairs.other)  # noqa: E731
        expected = (g(x) - g(x_adv)).abs() / (x - x_adv).norm(dim=1)
    torch.testing.assert_close(pairs.ratio, expected, rtol=1e-12, atol=0)
    assert torch.all(pairs.ratio <= pairs.constant * (1 + 1e-9))


def test_looseness_against_the_joint_bound_divides_by_its_smaller_constants() -> None:
    """A user who certifies with the joint bound reads found/Γ: each pair's constant is the joint
    one (never above K), every found ratio stays below it, and the report says which bound."""
    from mondeq.robustness.joint_bound import pairwise_lipschitz

    torch.manual_seed(1)
    model = fc_mondeq(10, 12, 4, m=0.3, tol=1e-12, max_iter=2000).double().eval()
    with torch.no_grad():
        model.layer.linear.F.mul_(2.0)
        model.layer.linear.G.mul_(3.0)
    x = torch.rand(30, 10, dtype=torch.float64)
    y = torch.randint(0, 4, (30,))
    runs = {bound: measure_looseness(model, x, y, epsilons=[0.05], ascent_steps=5, pgd_steps=10, tol=1e-12,
                                     max_iter=2000, generator=torch.Generator().manual_seed(0), bound=bound,
                                     multipliers="scalar")
            for bound in ("product", "joint")}
    gamma = pairwise_lipschitz(model, bound="joint", multipliers="scalar")
    joint = runs["joint"]
    assert joint.summary()["bound"] == "joint" and runs["product"].summary()["bound"] == "product"
    for pairs in (joint.ascent, joint.pgd_pairs):
        assert torch.equal(pairs.constant, gamma[pairs.label, pairs.other])
        assert torch.all(pairs.ratio <= pairs.constant * (1 + 1e-9))
    assert torch.all(gamma <= pairwise_lipschitz(model, bound="product") * (1 + 1e-12))
    assert joint.ascent.fraction.max() > runs["product"].ascent.fraction.max()
