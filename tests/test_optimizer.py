"""The training programs' optimizer (mondeq.training.adam): Adam, fused where PyTorch can."""
import copy

import pytest
import torch

from mondeq import fc_mondeq, lipschitz_bound, pairwise_lipschitz
from mondeq.training import adam


def _gradients(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)


def test_adam_is_fused_on_the_cpu_and_makes_adams_update():
    """Fused on CPU float parameters, and five steps equal PyTorch's default Adam's to rounding."""
    torch.manual_seed(0)
    model = fc_mondeq(6, 5, 3).double()
    reference, initial = copy.deepcopy(model), copy.deepcopy(model)
    ours, theirs = adam(model.parameters(), lr=1e-2), torch.optim.Adam(reference.parameters(), lr=1e-2)
    assert ours.param_groups[0]["fused"] is True
    for step in range(5):
        for m, opt in ((model, ours), (reference, theirs)):
            _gradients(m, step)
            opt.step()
    with torch.no_grad():
        assert min(float((p - q).abs().max()) for p, q in zip(model.parameters(), initial.parameters())) > 1e-3
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_an_older_checkpoints_optimizer_resumes_with_the_adam_it_started_with():
    """A state saved from PyTorch's default Adam, loaded into ``adam``, keeps stepping as that
    Adam did, bit for bit (checkpoints of runs made before the fused optimizer resume exactly)."""
    torch.manual_seed(0)
    model = fc_mondeq(6, 5, 3)
    old = torch.optim.Adam(model.parameters(), lr=1e-2)
    _gradients(model, 0)
    old.step()
    resumed_model = copy.deepcopy(model)
    resumed = adam(resumed_model.parameters(), lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(old.state_dict()))
    assert resumed.param_groups[0]["fused"] is None
    for m, opt in ((model, old), (resumed_model, resumed)):
        _gradients(m, 1)
        opt.step()
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_frozen_parameters_stay_in_the_optimizer_and_unchanged():
    """Every parameter is handed to Adam (a checkpoint's optimizer state lines up with the model
    as before); one without a gradient is not moved."""
    model = fc_mondeq(6, 5, 3)
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    before = frozen.clone()
    opt = adam(model.parameters(), lr=1e-2)
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(frozen, before)


@pytest.mark.parametrize("options", [{"fused": True}, {"foreach": True}, {}])
def test_bounds_follow_the_weights_after_any_optimizer_step(options):
    """Fused optimizers update parameters without moving their version counters: the library's
    cached bounds (‖U‖₂, ‖I − W‖₂, the joint constants) must still be those of the new weights,
    equal to a fresh copy's, after a step of any torch.optim optimizer."""
    torch.manual_seed(0)
    model = fc_mondeq(6, 5, 3).double()
    first = (lipschitz_bound(model), pairwise_lipschitz(model))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.5, **options)
    _gradients(model, 0)
    optimizer.step()
    after = (lipschitz_bound(model), pairwise_lipschitz(model))
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(model.state_dict())
    assert after[0] == lipschitz_bound(fresh) != first[0]
    torch.testing.assert_close(after[1], pairwise_lipschitz(fresh), rtol=0, atol=0)
