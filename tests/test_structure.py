"""Every family's block structure is W, U and their norms exactly: the blocks reproduce the dense
matrices built by probing (an independent path), their gradients match finite differences, and a
user-defined family that implements the interface (or relies on the probed fallback) gets the
joint bound, its training loss, the exact penalty and the weight-Lipschitz bound."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mondeq
from mondeq import MonDEQ, MonotoneParametrisation
from mondeq.errors import StructureTooLargeError
from mondeq.operators.structure import BlockStructure, expand_input_scale, probed_structure
from mondeq.robustness.joint_bound import joint_constants
from mondeq.robustness.joint_training import differentiable_joint_constants, training_bound
from mondeq.training.regularisers import OperatorNormPenalty, operator_norm
from splitting import DenseOperator, LinearOperator

from tests.conftest import central_difference


class TwoBlock(MonotoneParametrisation):
    r"""A user-defined family: two independent dense monDEQ blocks on the two halves of the state,
    each fed by its half of the input. It gives :math:`I - W` directly (no factor)."""

    def __init__(self, half_in: int = 3, half: int = 4, *, m: float = 0.7) -> None:
        super().__init__(m)
        self.input_shape = (2 * half_in,)
        self.F = nn.Parameter(0.6 * torch.randn(2, half, half, dtype=torch.float64))
        self.G = nn.Parameter(0.6 * torch.randn(2, half, half, dtype=torch.float64))
        self.U = nn.Parameter(torch.randn(2, half, half_in, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(2 * half, dtype=torch.float64))

    def _x(self) -> torch.Tensor:  # I − W per block
        eye = torch.eye(self.F.shape[-1], dtype=self.F.dtype)
        return self.m * eye + self.F.mT @ self.F + self.G - self.G.mT

    def bias(self, x):
        halves = x.reshape(len(x), 2, -1)
        return (torch.einsum("bij,nbj->nbi", self.U, halves).reshape(len(x), -1) + self.b,)

    def operator(self):
        w = torch.eye(2 * self.F.shape[-1], dtype=self.F.dtype) - torch.block_diag(*self._x())
        return DenseOperator(w, self.m)

    def block_structure(self, *, input_scale=None) -> BlockStructure:
        u = self.U * expand_input_scale(input_scale, 2 * self.U.shape[-1], self.U).view(2, 1, -1)
        return BlockStructure(self.m, u, torch.ones(2, dtype=u.dtype), lambda c: c.reshape(len(c), 2, -1),
                              torch.arange(self.F.shape[-1]), identity_minus_w=self._x())


class Probed(TwoBlock):
    """The same family without its own structure: the probed dense fallback serves it."""

    block_structure = MonotoneParametrisation.block_structure


class _DiagonalOperator(LinearOperator):
    """W = (1 − m − d²) elementwise: cheap to build at any size."""

    def __init__(self, d: torch.Tensor, m: float) -> None:
        self.d, self.m, self.state_shape = d, m, ((len(d),),)

    dtype = property(lambda self: self.d.dtype)
    device = property(lambda self: self.d.device)

    def mv(self, z):
        return (z[0] * (1 - self.m - self.d ** 2),)

    rmv = mv

    def resolvent(self, alpha):
        raise NotImplementedError

    def lipschitz(self):
        return float((self.m + self.d ** 2).max())


class Unstructured(MonotoneParametrisation):
    """A large user family without its own block structure (a diagonal W on ``n`` units)."""

    def __init__(self, n: int = 4100, n_in: int = 2) -> None:
        super().__init__(0.5)
        self.input_shape = (n_in,)
        self.d = nn.Parameter(torch.rand(n, dtype=torch.float64))
        self.U = nn.Parameter(torch.rand(n, n_in, dtype=torch.float64))

    def bias(self, x):
        return (x @ self.U.T,)

    def operator(self):
        return _DiagonalOperator(self.d, self.m)


def _layer(kind: str) -> MonotoneParametrisation:
    torch.manual_seed(0)
    layers = {
        "dense": lambda: mondeq.MonotoneLinear(5, 6, m=0.5, dtype=torch.float64),
        "conv": lambda: mondeq.MonotoneConv(2, 3, 5, m=0.5, dtype=torch.float64),
        "conv-padded": lambda: mondeq.MonotoneConv(2, 2, 4, padding=1, m=0.5, dtype=torch.float64),
        "multitier": lambda: mondeq.MonotoneMultiTier(2, (2, 3), 4, m=0.5, dtype=torch.float64),
        "user": lambda: TwoBlock(),
    }
    linear = layers[kind]()
    with torch.no_grad():
        for p in linear.parameters():
            p.mul_(2.0)
    return linear


KINDS = ["dense", "conv", "conv-padded", "multitier", "user"]
SCALE = {"dense": [2.0], "conv": [2.0, 0.5], "conv-padded": [3.0], "multitier": [2.0, 0.5], "user": [1.5, 0.5]}


def _form(structure: BlockStructure, blocks: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """cᵀAc for every row of c, from A's blocks: Σ_b w_b ĉ_bᴴ A_b ĉ_b."""
    coords = structure.to_blocks(c).to(blocks.dtype)
    return (torch.einsum("kbi,bij,kbj->kb", coords.conj(), blocks, coords).real * structure.weights).sum(-1)


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_reproduce_the_dense_w_and_u_built_by_probing(kind):
    linear = _layer(kind)
    scale = torch.tensor(SCALE[kind], dtype=torch.float64)
    structured = linear.block_structure(input_scale=scale)
    dense = probed_structure(linear, input_scale=scale)
    n = dense.size
    c = torch.randn(5, n, dtype=torch.float64)
    # the basis is unitary: the weighted coordinates keep the norm
    coords = structured.to_blocks(c)
    assert torch.allclose(((coords.abs() ** 2).sum(-1) * structured.weights).sum(-1), (c ** 2).sum(-1), rtol=1e-12)
    # quadratic forms of I − W, (I − W)ᵀ(I − W) and P = (UD)(UD)ᵀ, block by block against dense
    x, xd = structured.identity_minus_w_blocks(), dense.identity_minus_w_blocks()
    for blocks, reference in [(x, xd), (x.mH @ x, xd.mT @ xd)]:
        torch.testing.assert_close(_form(structured, blocks, c), _form(dense, reference, c), rtol=1e-11, atol=1e-11)
    p, pd = _form(structured, structured.input_gram_blocks(), c), _form(dense, dense.input_gram_blocks(), c)
    if kind == "conv-padded":  # zero padding is an isometry E: the circular P ⪰ U E Eᵀ Uᵀ
        assert bool((p >= pd * (1 - 1e-12)).all()) and bool((p > pd * 1.01).any())
    else:
        torch.testing.assert_close(p, pd, rtol=1e-11, atol=1e-11)
    # the symmetric form from the factor (or X) is S's
    torch.testing.assert_close((structured.symmetric_form(coords) * structured.weights).sum(-1),
                               _form(dense, dense.symmetric_blocks(), c), rtol=1e-11, atol=1e-11)
    # norms against a dense SVD
    w = linear.operator().as_matrix().detach()
    exact_l = torch.linalg.matrix_norm(torch.eye(n, dtype=w.dtype) - w, ord=2)
    torch.testing.assert_close(structured.operator_norm().detach(), exact_l, rtol=1e-12, atol=0)
    u_dense = dense.input_map[0].detach()
    if kind == "conv-padded":  # the circular U on the padded grid dominates the padded map
        assert float(structured.input_norm().detach()) >= float(torch.linalg.matrix_norm(u_dense, ord=2)) * (1 - 1e-12)
    else:
        torch.testing.assert_close(structured.input_norm().detach(), torch.linalg.matrix_norm(u_dense, ord=2),
                                   rtol=1e-12, atol=0)
        torch.testing.assert_close(linear.input_norm().detach(), linear.block_structure().input_norm().detach(),
                                   rtol=1e-12, atol=0)
    assert structured.unit.shape == (structured.size,) and int(structured.unit.min()) >= 0


@pytest.mark.parametrize("kind", KINDS)
def test_block_gradients_match_finite_differences_of_the_dense_quantities(kind):
    """d/dt of ‖I − W‖₂ + ‖UD‖₂ + cᵀ S c + cᵀ P c along a random parameter direction: autograd
    through the blocks against central differences of the probed dense matrices."""
    linear = _layer(kind)
    scale = torch.tensor(SCALE[kind], dtype=torch.float64)
    c = torch.randn(3, probed_structure(linear).size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def value(structure: BlockStructure) -> torch.Tensor:
        out = structure.operator_norm() + _form(structure, structure.symmetric_blocks(), c).sum()
        if kind == "conv-padded":  # its U is the circular map on the padded grid, not the probed one
            return out
        return out + structure.input_norm() + _form(structure, structure.input_gram_blocks(), c).sum()

    params = list(linear.parameters())
    directions = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
    grads = torch.autograd.grad(value(linear.block_structure(input_scale=scale)), params, allow_unused=True)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, directions) if g is not None)

    numeric = central_difference(lambda: value(probed_structure(linear, input_scale=scale)), params, directions)
    assert analytic == pytest.approx(numeric, rel=1e-6)


def _classifier(linear: MonotoneParametrisation, classes: int = 3) -> mondeq.MonDEQClassifier:
    torch.manual_seed(1)
    n = sum(t[0] for t in linear.operator().state_shape)
    model = mondeq.MonDEQClassifier(MonDEQ(linear, tol=1e-10, max_iter=5000),
                                    nn.Linear(n, classes, dtype=torch.float64))
    with torch.no_grad():
        model.head.weight.normal_()
    return model


@pytest.mark.parametrize("family", [TwoBlock, Probed])
def test_a_user_defined_family_gets_every_bound_penalty_and_loss(family):
    model = _classifier(family())
    reference = _classifier(Probed())  # same draws: the same weights, read by probing
    reference.load_state_dict(model.state_dict())
    # the joint bound and its training loss: the certificate's constants, with a graph
    scalar = joint_constants(model, multipliers="scalar")
    torch.testing.assert_close(scalar, joint_constants(reference, multipliers="scalar"), rtol=1e-9, atol=1e-12)
    off = ~torch.eye(3, dtype=torch.bool)
    assert bool((joint_constants(model, multipliers="diagonal")[off] <= scalar[off] * (1 + 1e-12)).all())
    trained = differentiable_joint_constants(model)
    assert trained.requires_grad and training_bound(model, "auto") == "joint"
    torch.testing.assert_close(trained.detach()[off], scalar[off], rtol=1e-10, atol=0)
    # the exact penalty
    penalty = OperatorNormPenalty(model, 1.0)
    assert penalty.exact
    w = model.layer.linear.operator().as_matrix().detach()
    assert float(penalty.norm().detach()) == pytest.approx(float(torch.linalg.matrix_norm(torch.eye(len(w), dtype=w.dtype) - w, ord=2)), rel=1e-12)
    # the weight-Lipschitz bound holds on solved equilibria
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.layer.linear.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(4, 6, dtype=torch.float64)
    bound = mondeq.weight_lipschitz_bound(model, other, x)
    z, z2 = model.layer(x)[0], other.layer(x)[0]
    assert bool(((z - z2).norm(dim=1) <= bound.bound * (1 + 1e-9)).all())
    # and certificates with the joint bound hold against PGD
    cert = mondeq.certify(model, x, tol=1e-10, bound="joint")
    assert bool((cert.radius >= mondeq.certify(model, x, tol=1e-10).radius).all())


def test_the_probed_fallback_refuses_a_large_layer_with_a_typed_error():
    layer = Unstructured()
    with pytest.raises(StructureTooLargeError, match="block_structure"):
        layer.block_structure()
    with pytest.raises(StructureTooLargeError):
        operator_norm(layer)
    model = _classifier(layer)
    assert training_bound(model, "auto") == "product"
    with pytest.raises(StructureTooLargeError):
        differentiable_joint_constants(model)


def test_multitier_joint_training_steps_reach_every_kernel_and_lower_the_loss():
    """A few certified-training steps with the joint bound on a small multi-tier model."""
    torch.manual_seed(0)
    model = mondeq.multitier_mondeq(1, 8, (2, 3), 3, pool_size=2, mean=0.1, std=0.4, tol=1e-6, max_iter=200)
    model.double()
    loss_fn = mondeq.robustness.certified_losses.make_certified_loss("margin", model, 0.3, bound="joint")
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(16) % 3
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        losses.append(float(loss.detach()))
        opt.step()
    linear = model.layer.linear
    for p in (*linear.A, *linear.S, linear.U.weight, model.head.weight):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    assert losses[-1] < losses[0]
