"""Command-line errors: one `error: ...` line on stderr, exit status 2 for a bad option and 1 for
a bad file or a failed run, never a traceback; and one vocabulary of options across commands."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mondeq.cli.certify import parse_args as certify_args
from mondeq.cli.compare import parse_args as compare_args
from mondeq.cli.compare.command import load_checkpoint_model
from mondeq.cli.main import main
from mondeq.models import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["mondeq"])  # main() renames the program in sys.argv


def command(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_train_out_that_is_a_file_is_a_bad_option(capsys):
    status, err = command(capsys, "train", "--out", str(REPO / "README.md"))
    assert status == 2
    assert "--out" in one_error_line(err) and "is a file" in err


def test_train_data_root_that_is_a_file_is_a_bad_option(capsys):
    status, err = command(capsys, "train", "--data-root", str(REPO / "README.md"), "--epochs", "1")
    assert status == 2
    line = one_error_line(err)
    assert "--data-root" in line and "is a file" in line and "mnist/" in line


def test_train_without_data_names_the_data_root_options_not_the_python_api(capsys, tmp_path):
    status, err = command(capsys, "train", "--data-root", str(tmp_path), "--epochs", "1",
                          "--out", str(tmp_path / "run"), "--device", "cpu")
    assert status == 1
    line = one_error_line(err)
    assert "--data-root" in line and "MONDEQ_DATA" in line and "download=True" not in line


def test_compare_checkpoint_folder_without_checkpoint(capsys, tmp_path):
    status, err = command(capsys, "compare", "--checkpoint", str(tmp_path))
    assert status == 1
    assert "holds no checkpoint.pt" in one_error_line(err)


def test_spectrum_checkpoint_that_is_not_one(capsys):
    status, err = command(capsys, "spectrum", "--checkpoint", str(REPO / "README.md"))
    assert status == 1
    assert "cannot read checkpoint" in one_error_line(err)


def test_compare_accepts_a_run_folder_or_its_file(tmp_path):
    torch.manual_seed(0)
    model = build_model({"model": "fc", "hidden": 8})
    torch.save({"config": {"model": "fc", "hidden": 8}, "model": model.state_dict()}, tmp_path / "checkpoint.pt")
    for run in (tmp_path, tmp_path / "checkpoint.pt"):
        loaded, config = load_checkpoint_model(run, device=torch.device("cpu"))
        assert torch.equal(loaded.layer.linear.F, model.layer.linear.F)
        assert config["hidden"] == 8


def test_certify_folder_without_checkpoint(capsys, tmp_path):
    status, err = command(capsys, "certify", str(tmp_path))
    assert status == 1
    assert "holds no checkpoint.pt" in one_error_line(err)


def test_certify_a_file_that_is_not_a_checkpoint(capsys):
    status, err = command(capsys, "certify", str(REPO / "README.md"))
    assert status == 1
    assert "cannot read checkpoint" in one_error_line(err)


def test_certify_negative_epsilon_is_a_bad_option(capsys, tmp_path):
    status, err = command(capsys, "certify", str(tmp_path), "--epsilons", "-1")
    assert status == 2
    assert "--epsilons" in one_error_line(err)


def test_resume_from_a_damaged_checkpoint(capsys, tmp_path):
    """A checkpoint with every top-level key but an empty configuration (once a raw KeyError)."""
    torch.save({"model": {}, "optimizer": {}, "epoch": 0, "history": [], "config": {}},
               tmp_path / "checkpoint.pt")
    status, err = command(capsys, "train", "--resume", "--out", str(tmp_path))
    assert status == 1
    line = one_error_line(err)
    assert "damaged" in line and "checkpoint.pt" in line


def test_old_option_spellings_are_hidden_aliases():
    assert compare_args(["--batch", "16"]).batch_size == 16
    assert compare_args(["--batch-size", "16"]).batch_size == 16
    args = certify_args(["RUN", "--data", "/d"])
    assert args.data_root == Path("/d")
    assert certify_args(["RUN"]).data_root is None


@pytest.mark.parametrize("name", ["train", "certify", "compare", "spectrum"])
def test_every_command_speaks_one_vocabulary(capsys, name):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--device" in out
    assert "--batch " not in out and "--data " not in out  # the former spellings stay hidden
    if name in ("certify", "compare", "spectrum"):
        assert "--batch-size" in out
    if name in ("train", "certify"):
        assert "--data-root" in out


def test_compare_negative_alpha_is_a_bad_option(capsys):
    status, err = command(capsys, "compare", "--alphas", "1", "-1")
    assert status == 2
    assert "--alphas" in one_error_line(err)


def test_compare_without_data_names_the_data_root_and_downloads_nothing(capsys, tmp_path, no_network):
    status, err = command(capsys, "compare", "--data-root", str(tmp_path), "--device", "cpu",
                          "--out", str(tmp_path / "out"))
    assert status == 1
    line = one_error_line(err)
    assert "--data-root" in line and "is missing" in line
