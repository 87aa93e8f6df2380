"""Per-epoch logs of the training command: metrics.csv, results.json after every epoch, and the
optional TensorBoard events (mondeq.training.logs)."""
import csv
import json
import shutil
import sys

import pytest
import torch

from mondeq.errors import MissingDependencyError
from mondeq.training.logs import CSV_NAME, EpochLog

TINY = ["--train-limit", "256", "--test-limit", "64", "--schedule", "constant", "--epsilons", "0.1", "0.5"]


@pytest.fixture
def float32():
    torch.set_default_dtype(torch.float32)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_csv_holds_history(out):
    """Every CSV row is one epoch of results.json, with the same figures (exactly: floats are
    written with repr precision)."""
    history = json.loads((out / "results.json").read_text())["history"]
    rows = read_csv(out / CSV_NAME)
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history]
    for row, h in zip(rows, history):
        for key in ("train_loss", "train_accuracy", "test_accuracy", "forward_iterations",
                    "backward_iterations", "alpha", "lipschitz", "step_time_ms"):
            assert float(row[key]) == h[key], key
        for eps, acc in h["certified"].items():
            assert float(row[f"certified_eps={eps}"]) == acc


def test_csv_has_one_row_per_epoch_with_the_figures_of_results_json(tmp_path, float32):
    from mondeq.cli import train
    train.main([*TINY, "--epochs", "2", "--out", str(tmp_path)])
    assert_csv_holds_history(tmp_path)
    header = next(csv.reader(open(tmp_path / CSV_NAME)))
    assert header[:4] == ["epoch", "train_loss", "train_accuracy", "test_accuracy"]
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is True


def test_epoch_rerun_after_a_lost_checkpoint_has_no_duplicate_row(tmp_path, float32):
    """A crash after epoch 2's row was written but before its checkpoint (simulated by putting
    the epoch-1 checkpoint back) re-runs epoch 2: its row is replaced, not added."""
    from mondeq.cli import train
    train.main([*TINY, "--epochs", "1", "--out", str(tmp_path)])
    shutil.copy(tmp_path / "checkpoint.pt", tmp_path / "after_epoch_1.pt")
    train.main(["--resume", "--epochs", "2", "--out", str(tmp_path)])
    assert [int(r["epoch"]) for r in read_csv(tmp_path / CSV_NAME)] == [1, 2]
    shutil.copy(tmp_path / "after_epoch_1.pt", tmp_path / "checkpoint.pt")
    train.main(["--resume", "--epochs", "2", "--out", str(tmp_path)])
    assert [int(r["epoch"]) for r in read_csv(tmp_path / CSV_NAME)] == [1, 2]
    assert_csv_holds_history(tmp_path)


class _Crash(Exception):
    pass


def test_results_json_and_csv_exist_after_epoch_one_of_a_killed_run(tmp_path, float32, monkeypatch):
    from mondeq.cli import train
    step, calls = torch.optim.Adam.step, [0]
    steps_per_epoch = 256 // 128

    def crashing_step(self, *a, **k):
        calls[0] += 1
        if calls[0] == steps_per_epoch + 1:  # the first step of epoch 2
            raise _Crash
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", crashing_step)
    with pytest.raises(_Crash):
        train.main([*TINY, "--epochs", "2", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [1] and saved["final"]["epoch"] == 1
    assert saved["complete"] is False
    assert_csv_holds_history(tmp_path)


def test_tensorboard_without_the_package_is_a_clear_error_before_training(tmp_path, float32, monkeypatch):
    from mondeq.cli import train
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.raises(MissingDependencyError, match="pip install tensorboard"):
        train.main([*TINY, "--epochs", "1", "--tensorboard", "--out", str(tmp_path)])
    assert not (tmp_path / "checkpoint.pt").exists()
    with pytest.raises(ImportError):  # also catchable as the built-in error
        EpochLog(tmp_path, tensorboard=True)


def test_tensorboard_events_hold_the_csv_scalars(tmp_path, float32):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mondeq.cli import train
    train.main([*TINY, "--epochs", "2", "--tensorboard", "--out", str(tmp_path)])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = read_csv(tmp_path / CSV_NAME)
    for tag, column in (("test_accuracy", "test_accuracy"), ("train_loss", "train_loss"),
                        ("certified_accuracy/eps=0.1", "certified_eps=0.1")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([float(r[column]) for r in rows], rel=1e-6)


def test_optional_columns_appear_when_the_record_has_them(tmp_path):
    log = EpochLog(tmp_path)
    base = {"epoch": 1, "train_loss": 0.5, "test_accuracy": 0.9, "alpha": 1.0, "certified": {"0.1": 0.8},
            "note": "text is left out"}
    log.write([base, {**base, "epoch": 2, "failed_solves": 3}])
    rows = read_csv(tmp_path / CSV_NAME)
    assert list(rows[0]) == ["epoch", "train_loss", "test_accuracy", "certified_eps=0.1", "failed_solves", "alpha"]
    assert rows[0]["failed_solves"] == "" and rows[1]["failed_solves"] == "3"
