"""Dense hollow monotone couplings: structure, every method's unique fixed point, clamping, gradients."""
import pytest
import torch

from splitting import SOLVERS
from splitting.state import flatten
from mondeq.categorical.dense import HollowDense
from mondeq.categorical.implicit import categorical_equilibrium
from mondeq.categorical.prox import Clamp, SimplexEntropy, grouped, one_hot_state

TIERS = ((4, 3), (3, 2), (1, 4))
METHODS = {"fb": 0.3, "pr": 1.0, "dr": 0.7, "anderson-pr": 1.0, "anderson-fb": 0.3}


def coupling(m=0.3, seed=0):
    torch.manual_seed(seed)
    return HollowDense(TIERS, rank=6, m=m, scale=2.0).double()


def blocks_of(w):
    start = 0
    for v, k in TIERS:
        for _ in range(v):
            yield w[start:start + k, start:start + k]
            start += k


def test_w_is_symmetric_hollow_and_i_minus_w_is_at_least_m():
    c = coupling()
    w = c.operator().as_matrix().detach()
    assert torch.equal(w, w.T)
    # hollow: each diagonal block is D_i − A_iᵀA_i, zero up to the round-off of that cancellation
    assert max(float(b.abs().max()) for b in blocks_of(w)) <= 1e-15 * float(w.abs().max())
    assert torch.linalg.eigvalsh(torch.eye(len(w), dtype=w.dtype) - w).min() >= c.m - 1e-12
    # the block structure (what bounds read) gives ‖I − W‖₂ of the dense matrix, under the operator's L
    norm = float(torch.linalg.matrix_norm(torch.eye(len(w), dtype=w.dtype) - w, ord=2))
    assert abs(float(c.block_structure().operator_norm()) - norm) <= 1e-12 and norm <= c.operator().lipschitz()
    # mv agrees with the dense matrix, and the resolvent inverts I + α(I − W)
    op = c.operator()
    z = op.zeros(3)
    z = tuple(torch.randn_like(t) for t in z)
    assert torch.allclose(flatten(op.mv(z)), flatten(z) @ w.T, atol=1e-12)
    r = op.resolvent(0.7).solve(z)
    assert torch.allclose(flatten(r) @ ((1.7) * torch.eye(len(w), dtype=w.dtype) - 0.7 * w).T, flatten(z), atol=1e-10)


def problem(batch=3, seed=1, clamped=True):
    c = coupling(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    bias = tuple(2 * torch.randn(batch, *s, generator=gen, dtype=torch.float64) for s in c.state_shape)
    clamp = None
    if clamped:  # two of the four tier-0 variables observed, per sample
        mask = torch.zeros(batch, 4, dtype=torch.bool)
        mask[:, :2] = True
        values = one_hot_state(torch.randint(0, 3, (batch, 4), generator=gen), 3).double()
        clamp = Clamp([mask, None, None], [values, None, None])
    return c, bias, SimplexEntropy(c.sizes, clamp=clamp)


def blockwise_residual(op, prox, bias, q):
    target = prox.apply(tuple(a + b for a, b in zip(op.mv(q), bias)))
    return max(float((grouped(t - s, k)).norm(dim=2).max()) for t, s, k in zip(q, target, prox.sizes))


@pytest.mark.parametrize("name", list(METHODS))
@torch.no_grad()
def test_every_method_reaches_the_same_fixed_point_from_ten_random_starts(name):
    c, bias, prox = problem()
    op = c.operator()
    starts = 10  # one batch: sample s·3 + i is problem i from start s (samples are solved independently)
    bias = tuple(b.repeat(starts, 1) for b in bias)
    prox.clamp = Clamp([prox.clamp.masks[0].repeat(starts, 1), None, None],
                       [prox.clamp.values[0].repeat(starts, 1), None, None])
    gen = torch.Generator().manual_seed(5)
    z0 = tuple(torch.rand(3 * starts, *s, generator=gen, dtype=torch.float64) for s in c.state_shape)
    q, stats = categorical_equilibrium(op, prox, bias, solver=SOLVERS[name], alpha=METHODS[name],
                                       tol=1e-10, max_iter=3000, z0=z0)
    assert stats.forward.converged
    # the promise: converged ⇔ true residual ≤ tol; each variable's block meets mean field
    assert blockwise_residual(op, prox, bias, q) <= 1e-10 * float(flatten(q).norm(dim=1).max())
    # clamped variables are exactly their one-hot values
    assert torch.equal(grouped(q[0], 3)[:, :2], grouped(prox.clamp.values[0], 3)[:, :2])
    solutions = flatten(q).view(starts, 3, -1)
    assert (solutions - solutions[:1]).abs().max() <= 1e-8


@torch.no_grad()
def test_methods_agree_with_each_other():
    c, bias, prox = problem(clamped=False)
    op = c.operator()
    answers = [flatten(SOLVERS[n](op, prox, bias, alpha=a, tol=1e-10, max_iter=3000).z) for n, a in METHODS.items()]
    for a in answers[1:]:
        assert (a - answers[0]).abs().max() <= 1e-8


@pytest.mark.parametrize("name", ["pr", "fb"])
def test_implicit_gradients_match_finite_differences(name):
    c, bias, prox = problem(batch=2)
    weights = tuple(torch.randn_like(b) for b in bias)

    def loss(a, b0):
        c.a.data.copy_(a)
        q, _ = categorical_equilibrium(c.operator(), prox, (b0, *bias[1:]), solver=SOLVERS[name],
                                       alpha=METHODS[name], tol=1e-12, max_iter=5000)
        return sum((w * t).sum() for w, t in zip(weights, q))

    a0 = c.a.detach().clone()
    b0 = bias[0].clone().requires_grad_(True)
    c.a.data.copy_(a0)
    value = loss(a0, b0)
    grad_a, grad_b = torch.autograd.grad(value, (c.a, b0))
    direction_a, direction_b = torch.randn_like(a0), torch.randn_like(b0)
    eps = 1e-6
    with torch.no_grad():
        fd = (loss(a0 + eps * direction_a, b0 + eps * direction_b)
              - loss(a0 - eps * direction_a, b0 - eps * direction_b)) / (2 * eps)
    c.a.data.copy_(a0)
    analytic = (grad_a * direction_a).sum() + (grad_b * direction_b).sum()
    assert abs(float(analytic - fd)) <= 1e-6 * max(1.0, abs(float(fd)))
    # the clamped variables get no gradient through the bias
    assert torch.equal(grouped(grad_b, 3)[:, :2], torch.zeros_like(grouped(grad_b, 3)[:, :2]))
