"""Property tests of the dense operator: adjoint, mv vs as_matrix, resolvent, monotonicity."""
import pytest
import torch

from splitting import DenseOperator, InvalidSettingError
from tests.conftest import make_dense


def sym_min_eig(weight: torch.Tensor) -> float:
    eye = torch.eye(weight.shape[0], dtype=weight.dtype)
    a = eye - weight
    return float(torch.linalg.eigvalsh(0.5 * (a + a.T)).min())


def test_adjoint_identity():
    op = make_dense(n=7, scale=2.0).operator()
    u, v = torch.randn(4, 7), torch.randn(4, 7)
    lhs = (op.mv((u,))[0] * v).sum(dim=1)
    rhs = (u * op.rmv((v,))[0]).sum(dim=1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_mv_matches_as_matrix():
    linear = make_dense(n=7)
    op = linear.operator()
    z = torch.randn(3, 7)
    torch.testing.assert_close(op.mv((z,))[0], z @ op.as_matrix().T)
    # the generic column-by-column as_matrix agrees with the stored one
    from splitting.operator import LinearOperator
    torch.testing.assert_close(LinearOperator.as_matrix(op), op.as_matrix())


def test_weight_has_the_three_pieces():
    linear = make_dense(n=5, m=0.3)
    eye = torch.eye(5)
    expected = 0.7 * eye - linear.F.T @ linear.F + linear.G.T - linear.G
    torch.testing.assert_close(linear.weight(), expected)


@pytest.mark.parametrize("alpha", [0.05, 1.0, 7.0])
def test_resolvent_matches_dense_solve(alpha):
    op = make_dense(n=6, scale=1.5).operator()
    w = op.as_matrix()
    eye = torch.eye(6)
    r = torch.randn(5, 6)
    res = op.resolvent(alpha)
    expected = torch.linalg.solve(eye + alpha * (eye - w), r.T).T
    expected_t = torch.linalg.solve(eye + alpha * (eye - w.T), r.T).T
    torch.testing.assert_close(res.solve((r,))[0], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.solve_t((r,))[0], expected_t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.transpose().solve((r,))[0], expected_t, rtol=1e-10, atol=1e-12)


def test_transposed_operator_is_the_transpose():
    op = make_dense(n=6).operator()
    torch.testing.assert_close(op.transpose().as_matrix(), op.as_matrix().T)
    from splitting.operator import LinearOperator
    torch.testing.assert_close(LinearOperator.as_matrix(op.transpose()), op.as_matrix().T)


def test_lipschitz_is_norm_of_i_minus_w():
    op = make_dense(n=6, scale=2.0).operator()
    eye = torch.eye(6)
    assert op.lipschitz() == pytest.approx(float(torch.linalg.svdvals(eye - op.as_matrix().detach())[0]), rel=1e-10)


@pytest.mark.parametrize("m", [0.01, 0.5, 1.0, 3.0])
def test_monotone_for_random_parameters(m):
    linear = make_dense(n=9, m=m, scale=5.0)
    assert sym_min_eig(linear.weight().detach()) >= m - 1e-8


def test_monotone_after_large_adam_steps():
    m = 0.2
    linear = make_dense(n_in=8, n=10, m=m)
    opt = torch.optim.Adam(linear.parameters(), lr=0.5)
    x = torch.randn(16, 8)
    target = torch.randn(16, 10)
    for _ in range(200):
        opt.zero_grad()
        w = linear.weight()
        # a random loss that pushes W anywhere it likes, including towards non-monotone matrices
        loss = ((linear.bias(x)[0] @ w.T - target) ** 2).sum() + (w * torch.randn_like(w)).sum() * 10
        loss.backward()
        opt.step()
        assert sym_min_eig(linear.weight().detach()) >= m - 1e-8


def test_dense_operator_rejects_bad_settings():
    with pytest.raises(InvalidSettingError, match="m must be > 0"):
        DenseOperator(torch.eye(3), 0.0)
    with pytest.raises(InvalidSettingError, match="square"):
        DenseOperator(torch.ones(3, 4), 1.0)
    with pytest.raises(InvalidSettingError, match="alpha must be > 0"):
        DenseOperator(torch.eye(3) * 0.5, 0.5).resolvent(0.0)
