"""The ‖I − W‖₂ penalty: its value is the norm of the dense I − W (an independent path), its
gradient matches finite differences (float64), it lowers ‖I − W‖ in training, and a run with it
resumes bit for bit (its power vector is checkpointed)."""
import pytest
import torch

from mondeq import MonotoneConv, MonotoneLinear, MonotoneMultiTier, fc_mondeq
from mondeq.cli import train
from mondeq.errors import InvalidSettingError
from mondeq.training import train_epoch
from mondeq.training.checkpoint import read_checkpoint
from mondeq.training.regularisers import OperatorNormPenalty, operator_norm
from test_structure import Unstructured

LAYERS = {
    "dense": lambda: MonotoneLinear(6, 7, m=0.5),
    "conv": lambda: MonotoneConv(1, 2, 5, m=0.5),
    "multitier": lambda: MonotoneMultiTier(1, (2, 2), 8, m=0.5),
}


def _dense_norm(linear) -> float:
    """‖I − W‖₂ from the operator's dense matrix: independent of the penalty's code path."""
    w = linear.operator().as_matrix().detach()
    return float(torch.linalg.matrix_norm(torch.eye(w.shape[0]) - w, ord=2))


def _scaled(linear):
    with torch.no_grad():  # a less trivial W than at initialisation
        for p in linear.parameters():
            p.mul_(3.0)
    return linear


def _directional_check(linear, value_and_grad, *, h=1e-6, rtol=1e-6):
    """⟨∇N, d⟩ from autograd equals the central difference of the exact norm along d."""
    params = [p for p in linear.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(3)
    directions = [torch.randn(p.shape, generator=g) for p in params]
    value = value_and_grad()
    grads = torch.autograd.grad(value, params, allow_unused=True)
    analytic = sum(float((gr * d).sum()) for gr, d in zip(grads, directions) if gr is not None)
    with torch.no_grad():
        for p, d in zip(params, directions):
            p.add_(h * d)
        plus = _dense_norm(linear)
        for p, d in zip(params, directions):
            p.sub_(2 * h * d)
        minus = _dense_norm(linear)
        for p, d in zip(params, directions):
            p.add_(h * d)
    numeric = (plus - minus) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=rtol, abs=1e-9)


@pytest.mark.parametrize("kind", ["dense", "conv", "multitier"])
def test_exact_norm_is_the_dense_norm_and_its_gradient_matches_finite_differences(kind):
    linear = _scaled(LAYERS[kind]())
    assert float(operator_norm(linear).detach()) == pytest.approx(_dense_norm(linear), rel=1e-12)
    _directional_check(linear, lambda: operator_norm(linear))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_power_estimate_converges_to_the_norm_with_the_same_gradient(kind):
    linear = _scaled(LAYERS[kind]())
    penalty = OperatorNormPenalty(linear, 1.0, iterations=2000)
    assert not penalty.exact
    assert float(penalty.norm().detach()) == pytest.approx(_dense_norm(linear), rel=1e-10)
    _directional_check(linear, penalty, rtol=1e-5)


def test_power_estimate_approaches_from_below_and_warm_starts():
    linear = _scaled(LAYERS["multitier"]())
    assert OperatorNormPenalty(linear, 1.0).exact  # small blocks: the exact norm by default
    penalty = OperatorNormPenalty(linear, 1.0, iterations=2)
    assert penalty.iterations == 2
    exact = _dense_norm(linear)
    estimates = [float(penalty.norm().detach()) for _ in range(40)]
    assert all(e <= exact * (1 + 1e-12) for e in estimates)
    assert estimates[-1] > estimates[0] and estimates[-1] == pytest.approx(exact, rel=1e-3)


def test_state_round_trip_continues_bit_for_bit_and_leaves_the_global_rng_alone():
    linear = _scaled(LAYERS["conv"]())
    first = OperatorNormPenalty(linear, 0.5, iterations=1)
    expected_draw = torch.random.get_rng_state()
    first()
    assert torch.equal(torch.random.get_rng_state(), expected_draw)
    second = OperatorNormPenalty(linear, 0.5, iterations=1)
    second.load_state_dict(first.state_dict())
    assert torch.equal(first(), second())
    assert torch.equal(first(), second())


def _blobs(n=128, d=6):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    return torch.randn(3, d, generator=g)[y] + 0.3 * torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("iterations", [0, 2])
def test_training_with_the_penalty_ends_with_a_smaller_operator_norm(iterations):
    x, y = _blobs()
    norms = {}
    for weight in (0.0, 0.3):
        torch.manual_seed(0)
        model = fc_mondeq(6, 12, 3, m=0.5, tol=1e-6, max_iter=500)
        opt = torch.optim.Adam(model.parameters(), lr=3e-2)
        penalty = OperatorNormPenalty(model, weight, iterations=iterations) if weight else None
        batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
        for _ in range(5):
            train_epoch(model, opt, batches, steps=len(batches), regulariser=penalty, progress=False)
        norms[weight] = _dense_norm(model.layer.linear)
    assert norms[0.3] < 0.9 * norms[0.0]


def test_bad_settings_are_refused():
    with pytest.raises(InvalidSettingError, match="weight"):
        OperatorNormPenalty(LAYERS["dense"](), -1.0)
    with pytest.raises(InvalidSettingError, match="iterations"):
        OperatorNormPenalty(LAYERS["dense"](), 1.0, iterations=-1)
    with pytest.raises(InvalidSettingError, match="block_structure"):
        operator_norm(Unstructured())
    assert OperatorNormPenalty(Unstructured(), 1.0).iterations == 2  # too large to probe: power steps


def test_cli_refuses_a_negative_penalty(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--operator-penalty", "-0.1"])
    assert exit_info.value.code == 2 and "--operator-penalty" in capsys.readouterr().err


class _Crash(Exception):
    pass


def test_a_penalised_run_crashed_inside_an_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """--operator-penalty with power steps (state: the power vector): a crash at step 2 of epoch 2
    with --checkpoint-every 1 resumes from step 1 and ends bit-identical to the uninterrupted run;
    --resume refuses another λ."""
    args = ["--train-limit", "128", "--test-limit", "16", "--batch-size", "32", "--epsilons", "0.1",
            "--hidden", "8", "--epochs", "2", "--operator-penalty", "0.05",
            "--operator-penalty-iterations", "1"]
    train.main([*args, "--out", str(tmp_path / "full")])
    step, calls = torch.optim.Adam.step, [0]

    def crashing_step(self, *a, **k):
        calls[0] += 1
        if calls[0] == 4 + 2:
            raise _Crash
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", crashing_step)
    with pytest.raises(_Crash):
        train.main([*args, "--checkpoint-every", "1", "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    saved = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert saved["extra"]["partial"]["step"] == 1 and saved["extra"]["regulariser"]["v"] is not None
    with pytest.raises(SystemExit, match="--operator-penalty 0.1 \\(the run has 0.05\\)"):
        train.main(["--resume", "--out", str(tmp_path / "cut"), "--operator-penalty", "0.1"])
    torch.manual_seed(999)
    train.main(["--resume", "--out", str(tmp_path / "cut")])
    full, cut = (read_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("full", "cut"))
    for key, value in full["model"].items():
        assert torch.equal(value, cut["model"][key]), key
    assert torch.equal(full["extra"]["regulariser"]["v"][0], cut["extra"]["regulariser"]["v"][0])
    assert full["history"][-1]["operator_norm"] == cut["history"][-1]["operator_norm"]
