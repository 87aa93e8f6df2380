"""The contrast the monotone DBM is about: classic parallel mean field on two binary variables with a
strong negative coupling flips forever; the monotone model reaches one fixed point from every start."""
import pytest
import torch

from splitting import SOLVERS
from splitting.state import flatten
from mondeq.categorical.dense import HollowDense
from mondeq.categorical.implicit import categorical_equilibrium
from mondeq.categorical.prox import SimplexEntropy


def test_classic_parallel_mean_field_oscillates_on_a_strong_negative_coupling():
    s = 5.0
    eye = torch.eye(2, dtype=torch.float64)
    w = torch.cat([torch.cat([0 * eye, -s * eye], 1), torch.cat([-s * eye, 0 * eye], 1)])  # hollow, symmetric
    assert torch.linalg.eigvalsh(torch.eye(4, dtype=torch.float64) - w).min() < 0  # not monotone
    q = torch.tensor([[0.9, 0.1, 0.9, 0.1]], dtype=torch.float64)  # both variables lean to value 0
    history = []
    for _ in range(200):
        q = torch.softmax((q @ w.T).view(1, 2, 2), dim=2).view(1, 4)  # q_i ← softmax(Σ_j W_ij q_j)
        history.append(q)
    # period two, far from a fixed point: both variables flip together forever
    assert torch.allclose(history[-1], history[-3], atol=1e-12)
    assert float((history[-1] - history[-2]).abs().max()) > 0.9


@pytest.mark.parametrize("name,alpha", [("fb", 0.5), ("pr", 1.0), ("dr", 1.0), ("anderson-pr", 1.0), ("anderson-fb", 0.5)])
@torch.no_grad()
def test_the_monotone_model_of_the_same_coupling_has_one_fixed_point_from_every_start(name, alpha):
    coupling = HollowDense(((2, 2),), rank=2, m=0.05).double()
    # A = [√5 I, √5 I]: W₁₂ = −A₁ᵀA₂ is the strong negative coupling, scaled (per variable,
    # symmetrically) until ‖D‖ ≤ 1 − m
    coupling.a.data = 5 ** 0.5 * torch.eye(2, dtype=torch.float64).repeat(1, 2)
    op = coupling.operator()
    w = op.as_matrix()
    assert w[0, 2] < -0.9 and torch.linalg.eigvalsh(torch.eye(4, dtype=torch.float64) - w).min() >= 0.05 - 1e-12
    starts = torch.rand(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bias = (torch.zeros(10, 4, dtype=torch.float64),)
    q, stats = categorical_equilibrium(op, SimplexEntropy((2,)), bias, solver=SOLVERS[name], alpha=alpha,
                                       tol=1e-11, max_iter=2000, z0=(starts,))
    assert stats.forward.converged
    assert (flatten(q) - flatten(q)[:1]).abs().max() <= 1e-8
