"""Forward-backward that works by default: without --alpha the trainer keeps α inside FB's
convergent range 0 < α < 2m/L², failed solves are counted (not warned one by one), and a
diverging run ends in one error line."""
from __future__ import annotations

import json
import re
import sys
import warnings

import pytest
import torch

from mondeq.errors import InvalidSettingError
from mondeq.cli.main import main
from mondeq.cli.train_options import parse_args
from mondeq.models import fc_mondeq
from mondeq.training import train_epoch
from mondeq.training.step_size import HALVINGS, StableStep, tune_alpha
from splitting import STEP_LIMITS, max_stable_alpha


def small_fc(**kw):
    torch.manual_seed(0)
    return fc_mondeq(16, 12, 3, solver="fb", **kw).double()


def batches(n=4, size=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 16, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def test_stable_step_sets_alpha_inside_fb_range():
    model = small_fc(alpha=10.0)
    alpha = StableStep(0.9).apply(model)
    limit = max_stable_alpha(model.layer.linear.operator())
    assert alpha == pytest.approx(0.9 * limit) and model.layer.alpha == alpha
    with torch.no_grad():
        model.layer.linear.F.mul_(3.0)  # a larger ‖I − W‖ shrinks the range; the next step follows it
    StableStep(0.9)(model, *batches(1)[0])
    assert model.layer.alpha == pytest.approx(0.9 * max_stable_alpha(model.layer.linear.operator()))
    assert model.layer.alpha < alpha


@pytest.mark.parametrize("solver", ["fb", "anderson-fb", "fbf"])
def test_alpha_tuning_of_a_step_limited_method_stays_inside_its_range(solver):
    """The tuner's default grid for FB and FBF is the halvings of 0.9 × the method's step limit,
    so every trial converges and the chosen α is inside the range (the paper's grid from 1 would
    start far outside it)."""
    model = small_fc(alpha=0.5, tol=1e-6, max_iter=3000)
    model.layer.solver = solver
    with torch.no_grad():
        model.layer.linear.F.mul_(2.0)
    limit = STEP_LIMITS[solver](model.layer.linear.operator())
    assert limit < 0.5  # the paper's first candidates are outside the range
    search = tune_alpha(model.layer, batches(1)[0][0])
    assert all(t.converged for t in search.trials)
    assert [t.alpha for t in search.trials] == pytest.approx([0.9 * limit * a for a in HALVINGS[:len(search.trials)]])
    assert 0 < search.alpha < limit
    pr = small_fc(alpha=0.5)
    pr.layer.solver = "pr"
    assert [t.alpha for t in tune_alpha(pr.layer, batches(1)[0][0], exhaustive=True).trials] == list(HALVINGS)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_stable_step_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(InvalidSettingError, match="fraction"):
        StableStep(fraction)


def test_failed_solves_are_counted_not_warned():
    model = small_fc(alpha=0.5, tol=1e-12, max_iter=2)  # two iterations never reach 1e-12
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = train_epoch(model, optimizer, batches(), steps=4, progress=False)
    assert stats.forward_failed == 4 and stats.backward_failed == 4
    assert not [w for w in caught if "solve" in str(w.message)]


def test_fb_without_alpha_picks_its_step_and_pr_keeps_one():
    args = parse_args(["--solver", "fb"])
    assert args.auto_alpha and args.alpha is None
    args = parse_args(["--solver", "fb", "--alpha", "0.1"])
    assert not args.auto_alpha and args.alpha == 0.1
    args = parse_args([])
    assert not args.auto_alpha and args.alpha == 1.0


@pytest.fixture
def keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["mondeq"])


@pytest.mark.slow
def test_diverging_fb_run_ends_in_one_error_line(capsys, tmp_path, keep_argv):
    status = main(["train", "--solver", "fb", "--alpha", "10", "--train-limit", "512", "--test-limit", "64",
                   "--epochs", "1", "--device", "cpu", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err and "Warning" not in err
    line, = [x for x in err.splitlines() if x.startswith("error:")]
    assert "NaN/inf" in line and "diverged" in line and "omit --alpha" in line


@pytest.mark.slow
def test_fb_without_alpha_converges_on_the_main_job_model(capsys, tmp_path, keep_argv):
    status = main(["train", "--solver", "fb", "--train-limit", "1024", "--test-limit", "256", "--epochs", "1",
                   "--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    final = json.loads((tmp_path / "results.json").read_text())["final"]
    assert final["forward_failed"] == 0 and final["backward_failed"] == 0 and final["test_failed"] == 0
    assert 0 < final["alpha"] < max_stable_alpha_of(tmp_path)
    assert re.search(r"iteration cap reached +0 of \d+ forward, 0 of \d+ backward", out)
    assert final["test_accuracy"] > 0.5


def max_stable_alpha_of(run):
    from mondeq.cli.certify import load_model
    model, _ = load_model(run, torch.float64)
    return max_stable_alpha(model.layer.linear.operator())
