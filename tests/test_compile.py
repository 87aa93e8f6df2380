"""``torch.compile`` of a classifier: the solve is one opaque eager call, so a compiled training
step gives the eager step's numbers, compiles once (no recompilation across steps) and prints
nothing; the only graph break is the deliberate one at :func:`splitting.equilibrium`."""
from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
from torch._dynamo.utils import counters
from torch.nn import functional as nnf

from mondeq import fc_mondeq


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)  # the dtype users train in (conftest's default is float64)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(previous)


def train(model, forward, xs, ys):
    """Adam steps on the given batches; the losses and the final parameters."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for x, y in zip(xs, ys):
        loss = nnf.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()]


def check_compiled_matches_eager(steps: int, caplog) -> None:
    torch.manual_seed(0)
    model = fc_mondeq(784, 32, 10, tol=1e-4, max_iter=200)
    compiled_model = copy.deepcopy(model)
    xs, ys = torch.rand(steps, 64, 784), torch.randint(0, 10, (steps, 64))
    eager_losses, eager_params = train(model, model, xs, ys)
    with warnings.catch_warnings(record=True) as caught, \
            torch._dynamo.config.patch(error_on_recompile=True), \
            caplog.at_level(logging.WARNING, logger="torch"):
        warnings.simplefilter("always")
        losses, params = train(compiled_model, torch.compile(compiled_model), xs, ys)
    shown = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not shown, shown  # no dynamo advice, no solver warning
    torch.testing.assert_close(losses, eager_losses, rtol=1e-4, atol=1e-5)
    for p, q in zip(params, eager_params):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    breaks = counters["graph_break"]
    # one deliberate boundary, met once per nested frame (classifier → layer): never per step
    assert breaks and all("equilibrium" in reason for reason in breaks), dict(breaks)
    assert sum(breaks.values()) <= 3, dict(breaks)
    noisy = [r.getMessage()[:300] for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, noisy


def test_compiled_step_matches_eager_and_breaks_only_at_the_solve(caplog):
    check_compiled_matches_eager(1, caplog)


@pytest.mark.slow
def test_compiled_training_matches_eager_without_recompiling(caplog):
    check_compiled_matches_eager(4, caplog)
