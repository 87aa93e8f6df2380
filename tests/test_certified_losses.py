"""The certified-training losses that read the certificate (EMMA, offset CE, logit annealing):
their formulas, the detached radius, their limits, state for exact resume, and the CLI choice."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from mondeq import fc_mondeq, margin_lipschitz_matrix
from mondeq.cli.train_options import LOSSES, parse_args
from mondeq.errors import InvalidSettingError
from mondeq.robustness.certified_losses import (CERTIFIED_LOSSES, EMMALoss, LogitAnnealingLoss,
                                                OffsetCrossEntropyLoss, emma_logits, make_certified_loss)
from mondeq.robustness.losses import LipschitzMarginLoss

ROOT = Path(__file__).resolve().parents[1]


def setup(seed=0):
    torch.manual_seed(seed)
    model = fc_mondeq(6, 8, 4, tol=1e-10, max_iter=500).double()
    x = torch.rand(12, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (12,))
    return model, x, y


def test_emma_raises_each_wrong_logit_by_its_clipped_radius() -> None:
    h = torch.tensor([[3.0, 1.0, 2.9, 5.0]], dtype=torch.float64)
    k = torch.tensor([[0.0, 2.0, 1.0, 4.0]] * 4, dtype=torch.float64)  # K_0j
    y = torch.tensor([0])
    eps = 0.5
    out = emma_logits(h, y, k, eps, floor=0.01)
    # gaps/K: j=1: 2/2 = 1 ≥ ε → ε; j=2: 0.1/1 = 0.1 → 0.1; j=3: −2/4 < 0 → floor·ε
    expected = h + torch.tensor([[0.0, eps * 2.0, 0.1 * 1.0, 0.01 * eps * 4.0]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_emma_radius_is_detached_the_constants_are_not() -> None:
    h = torch.tensor([[3.0, 1.0, 2.9, 5.0]], dtype=torch.float64, requires_grad=True)
    k = torch.tensor([[0.0, 2.0, 1.0, 4.0]] * 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0])
    loss = F.cross_entropy(emma_logits(h, y, k, 0.5), y)
    gh, gk = torch.autograd.grad(loss, (h, k))
    z = emma_logits(h, y, k, 0.5).detach()
    # ∂h̃/∂h = I (the radius ε_j is a constant): the gradient is CE's at h̃
    torch.testing.assert_close(gh, torch.softmax(z, 1) - F.one_hot(y, 4))
    # ∂h̃_j/∂K_0j = ε_j (detached), so K still receives gradient
    eps_j = (z - h.detach())[0, 1:] / k.detach()[0, 1:]
    torch.testing.assert_close(gk[0, 1:], (torch.softmax(z, 1)[0, 1:]) * eps_j)


def test_offset_ce_is_the_margin_loss_at_temperature_one_and_a_hinge_as_t_vanishes() -> None:
    model, x, y = setup()
    logits = model(x)
    margin = LipschitzMarginLoss(model, 0.3)(logits, y)
    offset = OffsetCrossEntropyLoss(model, 0.3, temperature=1.0, offset=1.0)(logits, y)
    torch.testing.assert_close(offset, margin)
    k = margin_lipschitz_matrix(model).detach()
    z = (logits + 0.3 * k[y]).detach()
    hinge = (z - z.gather(1, y[:, None])).amax(1).clamp(min=0).mean()
    cold = OffsetCrossEntropyLoss(model, 0.3, temperature=1e-4)(logits, y)
    assert abs(float(cold.detach()) - float(hinge)) < 1e-4 * math.log(4) + 1e-12


def test_logit_annealing_formula_and_its_limits() -> None:
    model, x, y = setup(1)
    logits = model(x)
    k = margin_lipschitz_matrix(model)
    eps, t, gamma = 0.3, 0.75, 5.0
    z = emma_logits(logits, y, k, eps) + eps * k[y]
    ce = F.cross_entropy(z / t, y, reduction="none")
    expected = (t * (1 - torch.exp(-ce)) ** gamma * ce).mean()
    got = LogitAnnealingLoss(model, eps)(logits, y)
    torch.testing.assert_close(got, expected)
    # γ = 0 is offset cross entropy on EMMA's logits; any γ > 0 weighs it down
    plain = LogitAnnealingLoss(model, eps, gamma=0.0)(logits, y)
    torch.testing.assert_close(plain, t * F.cross_entropy(z / t, y))
    assert float(got.detach()) < float(plain.detach())


def test_schedule_state_round_trips_for_every_loss() -> None:
    model, x, y = setup()
    for name in CERTIFIED_LOSSES:
        loss = make_certified_loss(name, model, 0.5, ramp_steps=10, power_iterations=2)
        model.train()
        for _ in range(3):
            loss(model(x), y)
        fresh = make_certified_loss(name, model, 0.5, ramp_steps=10, power_iterations=2)
        fresh.load_state_dict(loss.state_dict())
        assert fresh.step == 3 and fresh.current_eps() == loss.current_eps() == 0.15
        assert torch.equal(fresh.norm_estimate.v, loss.norm_estimate.v)
        model.eval()
        torch.testing.assert_close(fresh(model(x), y), loss(model(x), y), rtol=0, atol=0)


def test_the_registry_is_the_cli_choice_and_refuses_unknown_names() -> None:
    assert tuple(CERTIFIED_LOSSES) == LOSSES
    model, _, _ = setup()
    with pytest.raises(InvalidSettingError, match="unknown certified-training loss"):
        make_certified_loss("hinge", model, 0.1)
    with pytest.raises(InvalidSettingError):
        EMMALoss(model, 0.1, floor=2.0)
    assert parse_args(["--certified-eps", "0.3", "--loss", "emma"]).loss == "emma"


def test_a_certified_loss_without_certified_eps_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as err:
        parse_args(["--loss", "offset-ce"])
    assert err.value.code == 2
    assert "--certified-eps" in capsys.readouterr().err


def test_run_with_a_certified_loss_resumes_bit_exactly(tmp_path) -> None:
    """Two epochs straight, and one epoch then --resume, with logit annealing, power iterations
    (loss state in the checkpoint) and the joint bound in the loss: the same weights bit for bit."""
    common = ["--train-limit", "128", "--test-limit", "32", "--hidden", "12", "--batch-size", "32",
              "--epsilons", "0.1", "--certified-eps", "0.3", "--loss", "logit-annealing",
              "--power-iterations", "2", "--schedule", "constant", "--certified-ramp", "0",
              "--certified-bound", "joint"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), *a],  # noqa: E731
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    full, cut = tmp_path / "full", tmp_path / "cut"
    for args in ([*common, "--epochs", "2", "--out", str(full)], [*common, "--epochs", "1", "--out", str(cut)],
                 ["--resume", "--epochs", "2", "--out", str(cut)]):
        done = run(*args)
        assert done.returncode == 0, done.stdout + done.stderr
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (full, cut))
    assert a["epoch"] == b["epoch"] == 2 and a["config"]["loss"] == "logit-annealing"
    assert a["config"]["certified_bound"] == "joint"
    # a model loaded from the joint-trained run certifies exactly what the run reported, with the
    # bound the run names (the joint one, scalar multiplier)
    from mondeq import certify, load_run
    from mondeq.data import load_dataset
    report = json.loads((full / "results.json").read_text())
    assert report["certified_bound"] == "joint"
    x, y = load_dataset("mnist", train=False)
    cert = certify(load_run(full), x[:32], y[:32], epsilons=report["config"]["epsilons"],
                   tol=report["config"]["certify_tol"], bound="joint", multipliers="scalar", dtype=None)
    assert {str(k): v for k, v in cert.certified.items()} == report["final"]["certified"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["extra"]["loss"]["_extra_state"]["step"] == 8


def test_a_run_saved_before_loss_existed_resumes_with_the_margin_loss(tmp_path) -> None:
    from mondeq.cli.train_options import resume_config
    from mondeq.training.resume import plain

    old = parse_args(["--certified-eps", "0.3", "--out", str(tmp_path)])
    saved = {k: plain(v) for k, v in vars(old).items() if k not in ("explicit", "resume", "loss")}
    merged = resume_config(parse_args(["--resume", "--out", str(tmp_path)]), saved, tmp_path / "c.pt")
    assert merged.loss == "margin" and merged.certified_eps == 0.3
    saved["loss"] = "emma"
    assert resume_config(parse_args(["--resume", "--out", str(tmp_path)]), saved, tmp_path / "c.pt").loss == "emma"
