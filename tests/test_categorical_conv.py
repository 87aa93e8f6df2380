"""Multi-tier convolutional hollow couplings: exact structure (strided couplings included), the
resolvent, every method's unique fixed point, and implicit gradients."""
import pytest
import torch

from splitting import SOLVERS
from splitting.state import flatten, unflatten
from mondeq.categorical.conv import HollowMultiTier
from mondeq.categorical.implicit import categorical_equilibrium
from mondeq.categorical.prox import Clamp, SimplexEntropy, one_hot_state

from tests.conftest import central_difference

# pixels (2 bins, 8×8), hidden (2 groups of 2 at 4×4), hidden (2 groups of 3 at 2×2), label (3 values)
TIERS = ((2, 8, 8, 2), (4, 4, 4, 2), (6, 2, 2, 3), (3, 1, 1, 3))
KERNELS = ((0, 0, 3), (1, 0, 3), (1, 1, 3), (2, 0, 3), (2, 1, 3), (2, 2, 1), (3, 2, 2), (3, 3, 1))


def coupling(seed=0, m=0.3):
    return HollowMultiTier(TIERS, KERNELS, m=m, scale=2.0, generator=torch.Generator().manual_seed(seed)).double()


def variable_blocks(tiers=TIERS):
    """Index sets of every variable (tier, group, position) in the flattened state."""
    start = 0
    for c, h, wd, k in tiers:
        idx = torch.arange(c * h * wd).view(c // k, k, h, wd) + start
        for g in range(c // k):
            for y in range(h):
                for x in range(wd):
                    yield idx[g, :, y, x]
        start += c * h * wd


def test_w_is_symmetric_exactly_hollow_with_strided_couplings_and_i_minus_w_at_least_m():
    c = coupling()
    op = c.operator()
    with torch.no_grad():
        w = op.as_matrix()
    scale = float(w.abs().max())
    assert float((w - w.T).abs().max()) <= 1e-14 * scale  # Aᵀ is the exact adjoint of A
    assert max(float(w[i][:, i].abs().max()) for i in variable_blocks()) <= 1e-14 * scale
    # different variables at one position do couple, and strided couplings are present
    assert float(w.abs().max()) > 0.05
    eye = torch.eye(len(w), dtype=w.dtype)
    assert torch.linalg.eigvalsh(eye - (w + w.T) / 2).min() >= c.m - 1e-12
    assert torch.linalg.matrix_norm(eye - w, ord=2) <= op.lipschitz()
    # the block structure (what bounds read) gives ‖I − W‖₂ of the dense matrix
    norm = float(torch.linalg.matrix_norm(eye - w, ord=2))
    assert abs(float(c.block_structure().operator_norm().detach()) - norm) <= 1e-12 * norm
    # the resolvent solves (I + α(I − W)) x = r
    r = unflatten(torch.randn(2, len(w), dtype=w.dtype), op.zeros(2))
    with torch.no_grad():
        x = op.resolvent(0.8).solve(r)
    assert torch.allclose(flatten(x) @ (1.8 * eye - 0.8 * w).T, flatten(r), atol=1e-10)


# the methods' grid runs on a smaller chain (4×4 pixels, 2×2 hidden, label), strided couplings kept
SMALL_TIERS = ((2, 4, 4, 2), (4, 2, 2, 2), (3, 1, 1, 3))
SMALL_KERNELS = ((0, 0, 3), (1, 0, 3), (1, 1, 1), (2, 1, 2), (2, 2, 1))


def problem(batch=2, seed=1, small=False):
    c = (HollowMultiTier(SMALL_TIERS, SMALL_KERNELS, m=0.3, scale=2.0, generator=torch.Generator().manual_seed(seed)).double()
         if small else coupling(seed))
    grid = c.tiers[0][1]
    gen = torch.Generator().manual_seed(seed)
    bias = tuple(torch.randn(batch, *s, generator=gen, dtype=torch.float64) for s in c.state_shape)
    mask = torch.rand(batch, 1, grid, grid, generator=gen) < 0.4
    values = one_hot_state(torch.randint(0, 2, (batch, 1, grid, grid), generator=gen), 2).double()
    free = [None] * (len(c.tiers) - 1)
    clamp = Clamp([mask, *free], [values, *free])
    return c, bias, SimplexEntropy(c.sizes, clamp=clamp)


METHODS = {"fb": 0.5, "pr": 1.0, "dr": 1.0, "anderson-pr": 1.0, "anderson-fb": 0.5}


@pytest.mark.parametrize("name", list(METHODS))
@torch.no_grad()
def test_every_method_reaches_one_fixed_point_from_ten_starts_on_the_conv_model(name):
    c, bias, prox = problem(batch=1, small=True)
    op = c.operator()
    starts = 10
    bias = tuple(b.repeat(starts, 1, 1, 1) for b in bias)
    prox.clamp = Clamp([prox.clamp.masks[0].repeat(starts, 1, 1, 1), None, None],
                       [prox.clamp.values[0].repeat(starts, 1, 1, 1), None, None])
    z0 = tuple(torch.rand(starts, *s, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
               for s in c.state_shape)
    q, stats = categorical_equilibrium(op, prox, bias, solver=SOLVERS[name], alpha=METHODS[name],
                                       tol=1e-10, max_iter=2000, z0=z0)
    assert stats.forward.converged
    mask = prox.clamp.masks[0].unsqueeze(2).expand(-1, -1, 2, -1, -1).reshape(q[0].shape)
    assert torch.equal(q[0][mask], prox.clamp.values[0][mask])
    assert (flatten(q) - flatten(q)[:1]).abs().max() <= 1e-8


def test_implicit_gradients_match_finite_differences_on_the_conv_model():
    c, bias, prox = problem(small=True)
    weights = tuple(torch.randn_like(b) for b in bias)
    params = list(c.weights)
    directions = [torch.randn_like(p) for p in params]

    def loss():
        q, _ = categorical_equilibrium(c.operator(), prox, bias, solver=SOLVERS["fb"], alpha=0.5,
                                       tol=1e-12, max_iter=2000)
        return sum((w * t).sum() for w, t in zip(weights, q))

    grads = torch.autograd.grad(loss(), params)
    analytic = sum((g * d).sum() for g, d in zip(grads, directions))
    numeric = central_difference(loss, params, directions)
    assert abs(float(analytic) - numeric) <= 1e-6 * max(1.0, abs(float(analytic)))


@pytest.mark.parametrize("tiers,kernels", [
    (((6, 6, 6, 3),), ((0, 0, 3),)),                                   # one convolution, two groups of 3
    (((2, 4, 6, 2), (4, 4, 6, 2)), ((0, 0, 3), (1, 0, 3), (1, 1, 1))),  # two tiers on one grid
])
def test_shift_invariant_couplings_get_the_exact_fft_resolvent(tiers, kernels):
    c = HollowMultiTier(tiers, kernels, m=0.2, scale=2.0, generator=torch.Generator().manual_seed(0)).double()
    op = c.operator()
    with torch.no_grad():
        w = op.as_matrix()
        resolvent = op.resolvent(0.6)
        assert type(resolvent).__name__ == "FourierResolvent"
        r = unflatten(torch.randn(3, len(w), dtype=w.dtype), op.zeros(3))
        x = resolvent.solve(r)
    eye = torch.eye(len(w), dtype=w.dtype)
    assert max(float(w[i][:, i].abs().max()) for i in variable_blocks(tiers)) <= 1e-14 * float(w.abs().max())
    assert torch.allclose(flatten(x) @ (1.6 * eye - 0.6 * w).T, flatten(r), atol=1e-11)


def test_label_from_every_tier_keeps_w_symmetric_hollow_monotone_and_couples_label_to_pixels():
    from mondeq.categorical.build import build_dbm, model_config

    paper, direct = (build_dbm(model_config(architecture="conv", image=(12, 12), channels=(4, 8), m=0.2,
                                            label_from=label_from), dtype=torch.float64)
                     for label_from in ("last", "all"))
    for model in (paper, direct):
        tiers = model.coupling.tiers
        with torch.no_grad():
            w = model.coupling.operator().as_matrix()
        scale = float(w.abs().max())
        assert float((w - w.T).abs().max()) <= 1e-14 * scale
        assert max(float(w[i][:, i].abs().max()) for i in variable_blocks(tiers)) <= 1e-14 * scale
        eye = torch.eye(len(w), dtype=w.dtype)
        assert torch.linalg.eigvalsh(eye - w).min() >= model.coupling.m - 1e-12
        pixels = 2 * 12 * 12
        label_to_pixels = float(w[-10:, :pixels].abs().max())
        # the paper's label reads the pixels only through the hidden tiers; "all" couples them
        assert label_to_pixels == 0.0 if model is paper else label_to_pixels > 1e-3
