"""The robustness quantities (head matrix H, pairwise norms ‖H_i − H_j‖, margin constants K) are
computed once and agree with independent computations, for every model family (float64)."""
import math

import pytest
import torch

import mondeq
from mondeq import (LipschitzMarginLoss, lipschitz_bound, margin_lipschitz, margin_lipschitz_matrix,
                    pairwise_margin_norms)
from mondeq.robustness.lipschitz import head_matrix

MODELS = {
    "fc": lambda: mondeq.fc_mondeq(12, 7, 4),
    "conv": lambda: mondeq.single_conv_mondeq(1, 8, 3, 10),
    "multitier": lambda: mondeq.multitier_mondeq(1, 8, (2, 3), 10, pool_size=2),
}


@pytest.fixture(params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    return MODELS[request.param]().double()


def dense_jacobian(model, *, create_graph=False):
    """d logits / d (flattened state) at a random state, by autograd on the model's own map."""
    shapes = model.layer.linear.operator().state_shape
    sizes = [math.prod(s) for s in shapes]

    def logits(flat):
        tiers = torch.split(flat, sizes)
        return model.logits_from_state(tuple(t.reshape(1, *s) for t, s in zip(tiers, shapes)))[0]

    point = torch.randn(sum(sizes), dtype=torch.float64)
    return torch.autograd.functional.jacobian(logits, point, create_graph=create_graph)


def row_difference_norms(head):
    k = len(head)
    return torch.stack([torch.stack([(head[i] - head[j]).norm() if i != j else head.new_zeros(())
                                     for j in range(k)]) for i in range(k)])


def test_head_matrix_is_the_jacobian_of_the_logits_in_the_state(model):
    expected = dense_jacobian(model)
    torch.testing.assert_close(model.head_matrix(), expected)
    torch.testing.assert_close(head_matrix(model).detach(), expected)
    assert not model.head_matrix().requires_grad


def test_pairwise_norms_are_the_norms_of_row_differences(model):
    head = model.head_matrix()
    torch.testing.assert_close(pairwise_margin_norms(head), row_difference_norms(head))
    torch.testing.assert_close(margin_lipschitz(head, 2.5), 2.5 * row_difference_norms(head))


def test_the_loss_uses_the_certificates_constants(model):
    certified = margin_lipschitz_matrix(model, differentiable=False)
    assert not certified.requires_grad
    torch.testing.assert_close(certified, margin_lipschitz(model.head_matrix(), lipschitz_bound(model)))
    torch.testing.assert_close(margin_lipschitz_matrix(model).detach(), certified)
    classes = model.head.out_features
    logits, labels = torch.randn(6, classes, dtype=torch.float64), torch.randint(0, classes, (6,))
    expected = torch.nn.functional.cross_entropy(logits + 0.3 * certified[labels], labels)
    torch.testing.assert_close(LipschitzMarginLoss(model, 0.3)(logits, labels).detach(), expected)


def test_margin_constants_are_differentiable_in_the_head_and_u(model):
    linear = model.layer.linear
    classes = model.head.out_features
    weights = torch.rand(classes, classes, dtype=torch.float64)
    params = [model.head.weight, linear.U.weight]
    grads = torch.autograd.grad((margin_lipschitz_matrix(model) * weights).sum(), params)
    head = dense_jacobian(model, create_graph=True)
    independent = row_difference_norms(head) * (linear.input_norm() / linear.m)
    expected = torch.autograd.grad((independent * weights).sum(), params)
    for g, e in zip(grads, expected):
        assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0
        torch.testing.assert_close(g, e)
