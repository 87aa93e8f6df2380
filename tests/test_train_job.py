"""The main job end to end on a small slice of MNIST: outputs, checkpoint and --resume."""
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def float32():
    torch.set_default_dtype(torch.float32)


def test_train_writes_report_and_resumes(tmp_path, float32, capsys):
    from mondeq.cli import train
    # a constant learning rate can be extended by --resume --epochs (a cosine one cannot)
    common = ["--train-limit", "512", "--test-limit", "256", "--batch-size", "64", "--schedule", "constant",
              "--out", str(tmp_path)]
    report = train.main(["--epochs", "1", *common])
    assert (tmp_path / "results.json").is_file() and (tmp_path / "curves.png").is_file()
    assert (tmp_path / "checkpoint.pt").is_file()
    final = report["final"]
    assert 0.0 <= final["test_accuracy"] <= 1.0
    assert final["forward_iterations"] >= 1 and final["backward_iterations"] >= 1
    assert final["lipschitz"] > 0
    assert set(final["certified"]) == {"0.1", "0.3", "0.5", "1.0"}
    assert final["certified"]["1.0"] <= final["certified"]["0.1"] <= final["test_accuracy"]
    resumed = train.main(["--epochs", "2", "--resume", "--out", str(tmp_path)])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["history"][0] == json.loads(json.dumps(report["history"][0]))
    out = capsys.readouterr().out
    assert "resumed from" in out and "certified ℓ2 accuracy" in out
    # the per-epoch figure is a loose monitor: its line says so, and which bound and slack it uses
    epoch_line = next(line for line in out.splitlines() if line.startswith("epoch 1:"))
    assert "(monitor: product bound" in epoch_line and "px of solver slack; re-solved tightly at the end" in epoch_line


def test_resume_without_checkpoint_fails_clearly(tmp_path, float32):
    from mondeq.cli import train
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.main(["--epochs", "1", "--resume", "--train-limit", "64", "--test-limit", "64",
                    "--out", str(tmp_path)])


def test_report_points_to_float64_certification_when_the_slack_is_large(tmp_path, float32, capsys):
    """The final report says how to certify more tightly when the solver-error slack of its
    re-solve is large next to the smallest ε (here ε = 1e-9, so any slack is), and not otherwise."""
    from mondeq.cli import train
    common = ["--epochs", "1", "--train-limit", "128", "--test-limit", "64", "--batch-size", "64"]
    train.main([*common, "--epsilons", "1e-9", "--out", str(tmp_path / "tiny")])
    assert "experiments/certify.py" in capsys.readouterr().out
    train.main([*common, "--epsilons", "100", "--out", str(tmp_path / "huge")])
    assert "experiments/certify.py" not in capsys.readouterr().out
