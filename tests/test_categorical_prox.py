"""The simplex-entropy prox: against an independent minimisation, its α → 1 limit, its Jacobian."""
import math

import pytest
import torch

from mondeq.categorical.simplex import jacobian_apply, jacobian_weights, linearised_prox, simplex_prox

torch.set_default_dtype(torch.float64)


def objective(q, v, alpha):
    return alpha * (torch.special.xlogy(q, q).sum(-1) - 0.5 * (q * q).sum(-1)) + 0.5 * ((q - v) ** 2).sum(-1)


def bisection_prox(v, alpha):
    """Nested bisection on the KKT system (no Newton): (1 − α)q + α log q = v − ν, Σq = 1."""
    def q_of(c):  # bisection on x = log q for (1 − α)eˣ + αx = c
        lo, hi = torch.full_like(c, -1e4), torch.full_like(c, 50.0)
        for _ in range(110):
            mid = (lo + hi) / 2
            above = (1 - alpha) * torch.exp(mid) + alpha * mid > c
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        return torch.exp((lo + hi) / 2)
    lo = torch.full_like(v[..., :1], -1e3) + v.amin(-1, keepdim=True)
    hi = torch.full_like(lo, 1e3) + v.amax(-1, keepdim=True)
    for _ in range(90):
        mid = (lo + hi) / 2
        big = q_of(v - mid).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    return q_of(v - (lo + hi) / 2)


@pytest.mark.parametrize("alpha", [1e-3, 0.125, 0.9])
@pytest.mark.parametrize("k", [2, 16])
def test_prox_equals_an_independent_high_precision_minimisation(alpha, k):
    gen = torch.Generator().manual_seed(k)
    v = torch.cat([torch.randn(6, k, generator=gen), 30 * torch.randn(2, k, generator=gen),
                   torch.full((1, k), 700.0), torch.linspace(-400, 400, k).unsqueeze(0)])
    q = simplex_prox(v, alpha)
    assert torch.allclose(q.sum(-1), torch.ones(len(v)), atol=1e-14)
    reference = bisection_prox(v, alpha)
    assert torch.allclose(q, reference, atol=1e-10, rtol=1e-8)
    # and it minimises the objective over the simplex: no feasible perturbation does better
    for _ in range(20):
        d = torch.randn(len(v), k, generator=gen)
        d = d - d.mean(-1, keepdim=True)
        step = 1e-3 * q.amin(-1, keepdim=True) / d.abs().amax(-1, keepdim=True)
        assert bool((objective(q + step * d, v, alpha) >= objective(q, v, alpha) - 1e-12).all())


def test_prox_is_softmax_at_one_and_tends_to_it():
    v = torch.randn(7, 4, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.equal(simplex_prox(v, 1.0), torch.softmax(v, -1))
    gaps = [float((simplex_prox(v, 1 - e) - torch.softmax(v, -1)).abs().max()) for e in (1e-2, 1e-4, 1e-6)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-5


@pytest.mark.parametrize("alpha", [0.05, 0.5, 1.0])
def test_closed_form_jacobian_matches_finite_differences(alpha):
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(3, 6, generator=gen) * 2
    q = simplex_prox(v, alpha)
    g = jacobian_weights(q, alpha)
    for i in range(6):
        e = torch.zeros(6)
        e[i] = 1e-6
        fd = (simplex_prox(v + e, alpha) - simplex_prox(v - e, alpha)) / 2e-6
        assert torch.allclose(jacobian_apply(g, e.expand(3, 6) / 1e-6), fd, atol=1e-8)


@pytest.mark.parametrize("beta", [0.1, 0.7, 1.0])
def test_backward_prox_is_j_over_beta_plus_one_minus_beta_j_on_the_spectrum(beta):
    q = torch.softmax(torch.randn(2, 5, generator=torch.Generator().manual_seed(1)), -1)
    r = torch.randn(2, 5, generator=torch.Generator().manual_seed(2))
    for b in range(2):
        jac = torch.diag(q[b]) - torch.outer(q[b], q[b])
        lam, vec = torch.linalg.eigh(jac)
        lam = lam.clamp(min=0)
        expected = vec @ torch.diag(lam / (beta + (1 - beta) * lam)) @ vec.T @ r[b]
        assert torch.allclose(linearised_prox(q, r, beta)[b], expected, atol=1e-12)
