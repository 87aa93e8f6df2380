"""The main job's command line: bad values are refused with a message naming the option, --resume
keeps the saved configuration and refuses contradicting options, --out follows the model, --amp."""
from pathlib import Path

import pytest
import torch

from mondeq import fc_mondeq
from mondeq.training import train_epoch
from mondeq.cli import train as train_module

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-limit", "64", "--test-limit", "16", "--batch-size", "32", "--epsilons", "0.1"]


@pytest.fixture(scope="module")
def train():
    return train_module


@pytest.mark.parametrize("argv, option", [
    (["--train-limit", "-200"], "--train-limit"), (["--test-limit", "0"], "--test-limit"),
    (["--hidden", "0"], "--hidden"), (["--certified-eps", "nan"], "--certified-eps"),
    (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"), (["--lr", "nan"], "--lr"), (["--tol=-1e-3"], "--tol"),
    (["--max-iter", "0"], "--max-iter"), (["--alpha", "0"], "--alpha"), (["--alpha", "inf"], "--alpha"),
    (["--m", "0"], "--m"), (["--m", "inf"], "--m"), (["--epsilons", "0.1", "inf"], "--epsilons"),
    (["--certify-tol", "0"], "--certify-tol"), (["--channels", "0"], "--channels"),
    (["--model", "conv", "--channels", "8", "8"], "--channels"), (["--gamma", "2"], "--gamma"),
    (["--milestones", "3", "2"], "--milestones"), (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--device", "nonsense"], "--device"),
])
def test_bad_values_are_refused_naming_the_option(train, capsys, argv, option):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2
    assert f"error: {option}" in capsys.readouterr().err


def test_default_out_follows_dataset_and_model(train):
    assert train.parse_args([]).out == Path("runs/mnist_fc")
    assert train.parse_args(["--model", "conv"]).out == Path("runs/mnist_conv")
    assert train.parse_args(["--dataset", "svhn", "--model", "conv"]).out == Path("runs/svhn_conv")
    assert train.parse_args(["--out", "x"]).out == Path("x")


@pytest.fixture(scope="module")
def saved_run(train, tmp_path_factory):
    """A finished one-epoch run with the default (87-hidden, PR, cosine) configuration."""
    out = tmp_path_factory.mktemp("run")
    train.main([*TINY, "--epochs", "1", "--out", str(out)])
    return out


@pytest.mark.parametrize("argv, named", [
    (["--solver", "fb"], "--solver fb (the run has pr)"),
    (["--hidden", "50"], "--hidden 50 (the run has 87)"),
    (["--hidden", "50", "--lr", "0.1"], "--lr 0.1 (the run has 0.003)"),
])
def test_resume_refuses_options_that_contradict_the_saved_run(train, saved_run, argv, named):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", "--out", str(saved_run), *argv])
    message = str(exit_info.value.code)
    assert named in message and str(saved_run / "checkpoint.pt") in message


def test_resume_accepts_options_equal_to_the_saved_ones(train, saved_run, capsys):
    assert train.main(["--resume", "--out", str(saved_run), "--hidden", "87", "--solver", "pr"]) == {}
    assert "nothing to do: checkpoint already at epoch 1 of 1" in capsys.readouterr().out


def test_resume_refuses_to_stretch_a_cosine_schedule(train, saved_run):
    with pytest.raises(SystemExit, match="cosine schedule is planned over all epochs"):
        train.main(["--resume", "--out", str(saved_run), "--epochs", "2"])


def test_extending_a_constant_schedule_run_equals_the_longer_run(train, tmp_path):
    """--epochs extends a run whose schedule does not depend on its length: 1 epoch, then
    --resume --epochs 2, ends bit-identical to a 2-epoch run."""
    common = [*TINY, "--schedule", "constant", "--hidden", "12"]
    train.main([*common, "--epochs", "2", "--out", str(tmp_path / "long")])
    train.main([*common, "--epochs", "1", "--out", str(tmp_path / "short")])
    train.main(["--resume", "--epochs", "2", "--out", str(tmp_path / "short")])
    long, short = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("long", "short"))
    assert short["epoch"] == 2 and short["config"]["epochs"] == 2
    for key, value in long["model"].items():
        assert torch.equal(value, short["model"][key]), key


def test_amp_step_runs_the_head_in_bfloat16_and_the_solve_in_float32():
    torch.manual_seed(0)
    model = fc_mondeq(12, 7, 3).float()
    dtypes = {}
    model.readout.register_forward_hook(lambda m, i, out: dtypes.update(state=i[0][0].dtype))
    model.head.register_forward_hook(lambda m, i, out: dtypes.update(logits=out.dtype))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(16, 12, dtype=torch.float32), torch.randint(0, 3, (16,))
    stats = train_epoch(model, torch.optim.Adam(model.parameters(), lr=1e-2), [(x, y)], steps=1,
                        amp=True, progress=False)
    assert dtypes == {"state": torch.float32, "logits": torch.bfloat16}
    assert torch.isfinite(torch.tensor(stats.loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_step_milestones_are_epochs(train, tmp_path):
    """--schedule step --milestones 1 --gamma 0.5: the lr halves once, after epoch 1's last step."""
    train.main([*TINY, "--hidden", "12", "--epochs", "2", "--schedule", "step", "--milestones", "1",
                "--gamma", "0.5", "--lr", "0.004", "--out", str(tmp_path)])
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.002, rel=1e-12)
    assert state["scheduler"]["milestones"] == {64 // 32: 1}
