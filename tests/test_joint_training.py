"""Certified training with the joint bound: the loss's constants are the certificate's, their
gradients are those of the certificate's constants, and the loss never asks for more margin than
the product bound."""
from __future__ import annotations

import pytest
import torch

from mondeq.errors import InvalidSettingError
from mondeq.robustness.certified_losses import make_certified_loss
from mondeq.robustness.joint_bound import joint_constants
from mondeq.robustness.joint_training import differentiable_joint_constants
from mondeq.robustness.lipschitz import margin_lipschitz_matrix
from tests.conftest import central_difference
from test_joint_bound import build

CASES = [("fc", 0), ("conv", 0), ("conv", 1), ("multitier", 0)]


@pytest.mark.parametrize("kind,padding", CASES)
def test_the_loss_constants_are_the_certificates_scalar_joint_constants(kind, padding):
    torch.manual_seed(0)
    model = build(kind, padding=padding)
    reference = joint_constants(model, multipliers="scalar")
    got = differentiable_joint_constants(model)
    assert got.requires_grad
    off = ~torch.eye(len(got), dtype=torch.bool)
    assert torch.allclose(got.detach()[off], reference[off], rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind,padding", CASES)
def test_gradients_match_finite_differences_of_the_certificates_constants(kind, padding):
    """d/dt of Σ w_yj Γ_yj along a random direction in F, U and the head: the graph's value
    against central differences of the certificate's (graph-free) joint constants."""
    torch.manual_seed(1)
    model = build(kind, padding=padding)
    params = [p for p in model.parameters() if p.requires_grad]
    directions = [torch.randn_like(p) for p in params]
    k = model.head.weight.shape[0]
    weights = torch.rand(k, k, dtype=torch.float64)
    value = (weights * differentiable_joint_constants(model)).sum()
    grads = torch.autograd.grad(value, params, allow_unused=True)  # G drops out of sym(I − W)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, directions) if g is not None)

    numeric = central_difference(lambda: (weights * joint_constants(model, multipliers="scalar")).sum(),
                                 params, directions)
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_joint_margins_never_exceed_product_margins_so_the_loss_is_no_larger():
    torch.manual_seed(2)
    model = build("fc")
    logits = torch.randn(16, 4, dtype=torch.float64)
    labels = torch.randint(0, 4, (16,))
    losses = {}
    for bound in ("product", "joint"):
        loss = make_certified_loss("margin", model, 0.5, bound=bound)
        losses[bound] = float(loss(logits, labels).detach())
    assert losses["joint"] < losses["product"]
    product = margin_lipschitz_matrix(model).detach()
    joint = differentiable_joint_constants(model).detach()
    assert bool((torch.minimum(product, joint) <= product).all())
    assert bool((joint < product).any())


def test_a_training_step_with_the_joint_bound_reaches_f_u_and_the_head():
    torch.manual_seed(3)
    model = build("conv")
    model.layer.tol = 1e-6
    loss_fn = make_certified_loss("offset-ce", model, 0.3, bound="joint")
    x = torch.rand(4, *model.layer.linear.input_shape, dtype=torch.float64)
    loss = loss_fn(model(x), torch.randint(0, 4, (4,)))
    loss.backward()
    for p in (model.layer.linear.F, model.layer.linear.U.weight, model.head.weight):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_unknown_bounds_are_refused_with_the_fix():
    with pytest.raises(InvalidSettingError, match="bound must be one of"):
        make_certified_loss("offset-ce", build("fc"), 0.3, bound="tight")


def test_auto_trains_with_the_joint_bound_where_the_loss_has_it_and_the_cli_defaults_to_it():
    from mondeq.cli.train_options import parse_args
    from mondeq.robustness.joint_training import training_bound

    assert training_bound(build("fc"), "auto") == "joint"
    assert training_bound(build("conv"), "auto") == "joint"
    assert training_bound(build("multitier"), "auto") == "joint"
    assert training_bound(build("multitier"), "product") == "product"
    with pytest.raises(InvalidSettingError):
        training_bound(build("fc"), "tight")
    assert parse_args(["--certified-eps", "0.3"]).certified_bound == "auto"


def test_a_layer_whose_margins_ignore_the_input_has_zero_constants():
    model = build("fc")
    with torch.no_grad():
        model.layer.linear.U.weight.zero_()
    assert torch.equal(differentiable_joint_constants(model), torch.zeros(4, 4, dtype=torch.float64))
