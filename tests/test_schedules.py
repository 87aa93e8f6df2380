"""Learning-rate schedules: documented values at given steps, β1 cycling, exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from mondeq.training.schedules import SCHEDULES, make_schedule, one_cycle, step_decay


def _adam(lr: float = 0.5) -> torch.optim.Adam:
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=lr)


def _trace(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[tuple[float, float]]:
    """(lr, β1) used by the optimizer at steps 0 .. steps−1."""
    out = []
    for _ in range(steps):
        group = optimizer.param_groups[0]
        out.append((group["lr"], group["betas"][0]))
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_values() -> None:
    opt = _adam()
    trace = _trace(opt, make_schedule("cosine", opt, total_steps=40, lr=0.2), 46)
    for k in (0, 10, 20, 33, 40, 45):
        assert trace[k][0] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * min(k, 40) / 40)))
    assert trace[20][0] == pytest.approx(0.1) and trace[40][0] == pytest.approx(0.0)
    assert all(b == 0.9 for _, b in trace)                 # β1 untouched


def test_constant_values() -> None:
    opt = _adam()
    assert {lr for lr, _ in _trace(opt, make_schedule("constant", opt, total_steps=5, lr=0.3), 9)} == {0.3}


def test_step_decay_values() -> None:
    opt = _adam(lr=1.0)
    trace = _trace(opt, step_decay(opt, milestones=[3, 7], gamma=0.1), 10)
    expected = [1.0] * 3 + [0.1] * 4 + [0.01] * 3
    assert [lr for lr, _ in trace] == pytest.approx(expected)


def test_step_default_milestones_are_quarters() -> None:
    opt = _adam()
    trace = _trace(opt, make_schedule("step", opt, total_steps=40, lr=1e-3), 40)
    lrs = [lr for lr, _ in trace]
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-4)
    assert lrs[19] == pytest.approx(1e-4) and lrs[20] == pytest.approx(1e-5)
    assert lrs[30] == pytest.approx(1e-6) and lrs[39] == pytest.approx(1e-6)


def test_one_cycle_paper_values() -> None:
    """The paper's 65-epoch run, 10 steps per epoch: knots at 0, 300, 600, 650 steps."""
    opt = _adam()
    sched = one_cycle(opt, total_steps=650, max_lr=0.05)
    trace = _trace(opt, sched, 660)
    assert sched.knots == (0, 300, 600, 650)
    expected = {0: (1e-3, 0.95), 150: (0.0255, 0.90), 300: (0.05, 0.85), 450: (0.0255, 0.90),
                600: (1e-3, 0.95), 625: (1e-3, 0.95), 659: (1e-3, 0.95)}
    for k, (lr, beta1) in expected.items():
        assert trace[k][0] == pytest.approx(lr) and trace[k][1] == pytest.approx(beta1)
    # β1 moves inversely to the lr: their normalised positions add up to one at every step.
    for lr, beta1 in trace:
        assert (lr - 1e-3) / (0.05 - 1e-3) + (beta1 - 0.85) / (0.95 - 0.85) == pytest.approx(1.0)
    lrs = [lr for lr, _ in trace]
    assert all(a < b for a, b in zip(lrs[:300], lrs[1:301]))
    assert all(a > b for a, b in zip(lrs[300:600], lrs[301:601]))
    assert opt.param_groups[0]["betas"][1] == 0.999        # β2 untouched


def test_one_cycle_by_name_and_refusals() -> None:
    opt = _adam()
    trace = _trace(opt, make_schedule("onecycle", opt, total_steps=100, lr=0.01), 100)
    assert max(lr for lr, _ in trace) == pytest.approx(0.01)
    assert min(b for _, b in trace) == pytest.approx(0.85)
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="betas"):
        one_cycle(sgd, total_steps=10, max_lr=0.1)
    one_cycle(sgd, total_steps=10, max_lr=0.1, cycle_beta1=False)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("linear", _adam(), total_steps=10, lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("cosine", _adam(), total_steps=0, lr=0.1)
    with pytest.raises(ValueError, match="milestones"):
        step_decay(_adam(), milestones=[5, 2], gamma=0.1)


@pytest.mark.parametrize("name", SCHEDULES)
def test_state_dict_resume_is_exact(name: str) -> None:
    """Stop after 13 steps, rebuild from the state dicts, continue: same lr, β1 and weights."""
    torch.manual_seed(0)
    target = torch.randn(5)

    def build():
        w = torch.nn.Parameter(torch.zeros(5))
        opt = torch.optim.Adam([w], lr=1.0)
        return w, opt, make_schedule(name, opt, total_steps=30, lr=0.05, milestones=[8, 20])

    def run(w, opt, sched, steps):
        out = []
        for _ in range(steps):
            out.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
            opt.zero_grad()
            ((w - target) ** 2).sum().backward()
            opt.step()
            sched.step()
        return out

    w, opt, sched = build()
    straight = run(w, opt, sched, 30)
    w_end = w.detach().clone()

    w1, opt1, sched1 = build()
    first = run(w1, opt1, sched1, 13)
    saved = (w1.detach().clone(), opt1.state_dict(), sched1.state_dict())
    w2, opt2, sched2 = build()
    with torch.no_grad():
        w2.copy_(saved[0])
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    assert first + run(w2, opt2, sched2, 17) == straight
    assert torch.equal(w2.detach(), w_end)
