"""experiments/reproduce.py: the nine rows of the paper's Table 1, --list, --table, one tiny run."""
from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_reproduce():
    return importlib.import_module("mondeq.cli.reproduce")


@pytest.fixture(scope="module")
def reproduce():
    return load_reproduce()


def _value(cmd: list[str], flag: str) -> list[str]:
    """The values following ``flag`` (up to the next option) in a command line."""
    i = cmd.index(flag)
    out = []
    for token in cmd[i + 1:]:
        if token.startswith("--"):
            break
        out.append(token)
    return out


def test_rows_are_the_papers(reproduce) -> None:
    rows = reproduce.ROWS
    assert list(rows)[:12] == ["mnist-fc", "mnist-conv", "mnist-multitier", "svhn-conv", "svhn-multitier",
                               "cifar10-conv", "cifar10-multitier", "cifar10-aug-conv",
                               "cifar10-aug-multitier", "mnist-certified-fc-0.3", "mnist-certified-fc-1.58",
                               "cifar10-certified-conv"]
    fashion = [name for name in rows if name.startswith("fashion-mnist-")]  # not the paper's
    short = ["mnist-conv-short", "mnist-multitier-short"]  # the paper's conv and multi-tier, shorter
    assert fashion + short == list(rows)[12:] and {rows[n].model for n in fashion} == {"fc", "conv", "multitier", "cnn"}
    assert {rows[n].certified_eps for n in fashion} == {None, 0.1, 0.3}
    assert all(rows[n].paper is None and rows[n].dataset == "fashion-mnist" for n in fashion)
    expected = {  # row: (width, paper accuracy)
        "mnist-fc": ((87,), 98.1), "mnist-conv": ((54,), 99.1), "mnist-multitier": ((16, 32, 32), 99.0),
        "svhn-conv": ((81,), 88.7), "svhn-multitier": ((16, 32, 60), 92.4),
        "cifar10-conv": ((81,), 74.0), "cifar10-multitier": ((16, 32, 60), 72.0),
        "cifar10-aug-conv": ((200,), 82.0), "cifar10-aug-multitier": ((64, 128, 128), 89.0),
    }
    for name in short:  # the paper's model at the paper's size, on a short schedule
        paper_row = rows[name.removesuffix("-short")]
        assert (rows[name].model, rows[name].width) == (paper_row.model, paper_row.width)
        assert rows[name].epochs < paper_row.epochs and rows[name].paper is None
    for name, (width, paper) in expected.items():
        assert (rows[name].width, rows[name].paper) == (width, paper)
        assert rows[name].augment == ("aug" in name)
    certified = rows["cifar10-certified-conv"]  # not the paper's: certified training at 36/255
    assert certified.paper is None and abs(certified.certified_eps - 36 / 255) < 1e-15
    assert {"--certified-eps", "--loss"} <= set(certified.train_args())
    for eps in (0.3, 1.58):  # GloRo's two MNIST radii, the joint bound in the loss (the default)
        row = rows[f"mnist-certified-fc-{eps}"]
        assert (row.width, row.certified_eps, row.paper) == ((256,), eps, None)
        assert "--certified-bound" not in row.train_args()


def test_list_prints_every_row_with_its_command(reproduce, capsys, tmp_path: Path) -> None:
    assert reproduce.main(["--list", "--runs", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    commands = {}
    for line in out.splitlines():
        if line.startswith("    "):
            commands[name] = line.split()
        else:
            name = line.split(":")[0]
    assert list(commands) == list(reproduce.ROWS)
    for name, cmd in commands.items():
        row = reproduce.ROWS[name]
        assert _value(cmd, "--dataset") == [row.dataset] and _value(cmd, "--model") == [row.model]
        assert _value(cmd, "--out") == [str(tmp_path / name)]
        assert _value(cmd, "--solver") == ["pr"] and _value(cmd, "--tol") == ["1e-2"]
        assert _value(cmd, "--m") == ["1"] and _value(cmd, "--batch-size") == ["128"]
    aug = commands["cifar10-aug-multitier"]
    assert _value(aug, "--channels") == ["64", "128", "128"] and "--augment" in aug
    assert _value(aug, "--schedule") == ["onecycle"] and _value(aug, "--lr") == ["0.05"]
    assert _value(aug, "--epochs") == ["65"]
    svhn = commands["svhn-conv"]
    assert _value(svhn, "--milestones") == ["25"] and "--augment" not in svhn
    assert _value(commands["mnist-fc"], "--hidden") == ["87"]
    assert _value(commands["mnist-fc"], "--milestones") == ["10", "20", "30"]


def test_every_flag_it_passes_is_one_train_py_accepts(reproduce) -> None:
    help_text = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    accepted = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    for row in reproduce.ROWS.values():
        cmd = reproduce.command(row, runs=Path("r"), device="cpu", data_root=Path("d"), extra=[])
        used = {token for token in cmd if token.startswith("--")}
        assert used <= accepted, f"{row.name}: train.py lacks {sorted(used - accepted)}"


def test_table_from_json_files(reproduce, capsys, tmp_path: Path) -> None:
    summary = {"row": "mnist-conv", "accuracy": 99.213, "parameters": 84_000, "epochs": 40,
               "hardware": {"device": "cuda", "name": "NVIDIA H100", "threads": 16},
               "wall_time_s": 5400.0, "modified": False, "forwarded": []}
    (tmp_path / "mnist-conv.json").write_text(json.dumps(summary))
    quick = dict(summary, row="svhn-multitier", accuracy=12.5, epochs=1, wall_time_s=30.0,
                 modified=True, forwarded=["--epochs", "1"])
    (tmp_path / "svhn-multitier.json").write_text(json.dumps(quick))
    assert reproduce.main(["--table", "--runs", str(tmp_path)]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ")]
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[1:-1]] for l in lines[1:]}
    assert set(rows) == set(reproduce.ROWS)
    assert rows["mnist-conv"][3:] == ["99.1", "99.21", "84,000", "40", "NVIDIA H100 (cuda, 16 threads)",
                                      "90 min"]
    assert rows["svhn-multitier"][3] == "92.4" and rows["svhn-multitier"][4].startswith("12.50 (modified")
    assert "--epochs 1" in rows["svhn-multitier"][4] and rows["svhn-multitier"][8] == "30 s"
    for name in set(reproduce.ROWS) - {"mnist-conv", "svhn-multitier"}:
        assert rows[name][4] == "not run", name
    assert rows["cifar10-aug-multitier"][3] == "89.0" and rows["mnist-fc"][3] == "98.1"


def test_one_tiny_row_end_to_end(reproduce, tmp_path: Path) -> None:
    """mnist-fc for 1 epoch on 256 images: train.py runs, and the row's JSON summarises it."""
    code = reproduce.main(["--row", "mnist-fc", "--runs", str(tmp_path), "--device", "cpu", "--",
                           "--epochs", "1", "--train-limit", "256", "--test-limit", "128"])
    assert code == 0
    summary = json.loads((tmp_path / "mnist-fc.json").read_text())
    results = json.loads((tmp_path / "mnist-fc" / "results.json").read_text())
    assert summary["row"] == "mnist-fc" and summary["dataset"] == "mnist" and summary["model"] == "fc"
    assert summary["accuracy"] == pytest.approx(100 * results["final"]["test_accuracy"])
    assert summary["epochs"] == 1 and summary["modified"] is True
    # FC monDEQ with 87 units on 784 inputs: U, b, F, G, and the 10-way head.
    assert summary["parameters"] == 784 * 87 + 87 + 2 * 87 * 87 + 87 * 10 + 10
    assert summary["hardware"]["device"] == "cpu" and summary["hardware"]["threads"] >= 1
    assert summary["wall_time_s"] > 0 and (tmp_path / "mnist-fc" / "log.txt").is_file()
