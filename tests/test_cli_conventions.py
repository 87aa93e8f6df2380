"""One convention across the command and the programs in experiments/: load errors say what
actually failed (never "corrupt" for a good file), no command silently overwrites a run, every
program ends a mistake in one error line, the run is the first positional argument and its data
root is reused, `mondeq --version`, and help that documents every option with its default once."""
from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mondeq
from mondeq.cli import train as train_cli
from mondeq.cli.compare import main as compare_main
from mondeq.cli.main import SUBCOMMANDS, main
from mondeq.cli import reproduce as reproduce_module
from mondeq.cli.reproduce import main as reproduce_main
from mondeq.errors import CheckpointError, DeviceUnavailableError, RunExistsError
from mondeq.training import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = sorted((REPO / "experiments").glob("*.py"))
TINY = ["--hidden", "8", "--epochs", "1", "--train-limit", "64", "--test-limit", "16", "--batch-size", "32",
        "--epsilons", "0.1", "--device", "cpu"]
MISLEADING = ("corrupt", "delete")


@pytest.fixture(autouse=True)
def keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["mondeq"])  # main() renames the program in sys.argv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished one-epoch run trained with --data-root (a copy of the checkout's MNIST folder
    under another name), beside stale outputs of an earlier run that --overwrite must remove."""
    data = tmp_path_factory.mktemp("data")
    (data / "mnist").symlink_to(REPO / "data" / "mnist")
    out = tmp_path_factory.mktemp("run")
    (out / "results.json").write_text(json.dumps({"config": {"dataset": "mnist", "model": "fc", "epochs": 9},
                                                  "history": [], "complete": True}))
    (out / "certify.json").write_text("{}")  # describes the replaced model
    with pytest.raises(RunExistsError, match="--overwrite"):
        train_cli.main([*TINY, "--data-root", str(data), "--out", str(out)])
    assert (out / "certify.json").exists()  # the refusal touched nothing
    train_cli.main([*TINY, "--data-root", str(data), "--out", str(out), "--overwrite"])
    return out


def command(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) <= 1, err
    return status, lines[0] if lines else ""


# --- 1. a load error says what failed --------------------------------------------------------

def test_a_good_checkpoint_on_a_missing_device_names_the_device_not_corruption(run):
    for load in (lambda: mondeq.load_run(run, map_location="cuda:99"),
                 lambda: read_checkpoint(run, map_location="cuda:99")):
        with pytest.raises(DeviceUnavailableError) as info:
            load()
        text = str(info.value)
        assert "cuda:99" in text and "map_location='cpu'" in text and "--device cpu" in text
        assert not any(word in text for word in MISLEADING)
    assert mondeq.load_run(run).run_config["hidden"] == 8  # the file was good all along


def test_a_results_json_given_as_a_checkpoint_is_named_as_such(run, capsys, tmp_path):
    results = run / "results.json"
    with pytest.raises(CheckpointError, match="results.json") as info:
        mondeq.load_run(results)
    assert str(run / "checkpoint.pt") in str(info.value)  # where the checkpoint is
    (tmp_path / "checkpoint.pt").write_bytes(results.read_bytes())  # a results.json under the wrong name
    for argv in (["certify", str(results)], ["compare", str(results), "--out", str(tmp_path / "c")],
                 ["spectrum", str(results)], ["train", "--resume", "--out", str(tmp_path)]):
        status, line = command(capsys, *argv, "--device", "cpu")
        assert status == 1 and "results.json" in line, line
        assert not any(word in line for word in MISLEADING), line


@pytest.mark.parametrize("content, said", [
    (b"", "empty"), (b"\x89PNG\r\n\x1a\n", "PNG image"), (b"# notes\n", "text file"),
    ("truncated", "truncated or damaged"), ("half", "truncated or damaged"), ("state_dict", "bare state_dict"), ("module", "pickled model"),
])
def test_only_a_file_proven_damaged_is_called_damaged(run, tmp_path, content, said):
    path = tmp_path / "checkpoint.pt"
    if content in ("truncated", "half"):
        data = (run / "checkpoint.pt").read_bytes()
        path.write_bytes(data[:2000] if content == "truncated" else data[:len(data) // 2])
    elif content == "state_dict":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    elif content == "module":
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=said) as info:
        mondeq.load_run(path)
    assert "delete" not in str(info.value)
    assert ("damaged" in str(info.value)) == (content in ("truncated", "half"))


def test_a_dbm_run_and_a_classifier_run_are_each_named_when_given_to_the_other_loader(run, tmp_path, capsys):
    from mondeq.categorical import build_dbm, load_dbm
    from mondeq.categorical.build import model_config
    from mondeq.training import save_checkpoint

    dbm = build_dbm(model_config(hidden=3, rank=4))
    save_checkpoint(tmp_path / "checkpoint.pt", model=dbm, optimizer=torch.optim.Adam(dbm.parameters()),
                    epoch=1, history=[], config={"model": model_config(hidden=3, rank=4), "observed": 0.4})
    with pytest.raises(CheckpointError, match="mondeq dbm.*load_dbm"):
        mondeq.load_run(tmp_path)
    status, line = command(capsys, "certify", str(tmp_path), "--device", "cpu")
    assert status == 1 and "load_dbm" in line and "unknown model" not in line, line
    with pytest.raises(CheckpointError, match="mondeq train.*load_run"):
        load_dbm(run)
    assert load_dbm(tmp_path).coupling.sizes == dbm.coupling.sizes


def test_a_misspelt_pretrained_name_is_answered_with_the_names_it_resembles(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="did you mean 'mnist-fc' or 'mnist-certified-fc-1.58'"):
        mondeq.load_run("mnist-fc-1.58")
    with pytest.raises(ValueError, match=r"did you mean 'mnist-fc'"):
        mondeq.pretrained("mnist-fcc")
    status, line = command(capsys, "certify", "mnist-fcc", "--device", "cpu")
    assert status == 1 and "did you mean 'mnist-fc'" in line, line
    with pytest.raises(FileNotFoundError, match="no checkpoint at zzz") as info:  # nothing like a name
        mondeq.load_run("zzz")
    assert "did you mean" not in str(info.value)
    (tmp_path / "mnist-fcc").mkdir()  # a folder of that name is a run folder, never a misspelling
    with pytest.raises(FileNotFoundError, match="holds no checkpoint|no checkpoint") as info:
        mondeq.load_run("mnist-fcc")
    assert "did you mean" not in str(info.value)


# --- 2. no silent overwrite --------------------------------------------------------------------

def test_out_holding_a_run_is_refused_without_resume_or_overwrite(run, capsys):
    before = (run / "checkpoint.pt").read_bytes()
    status, line = command(capsys, "train", *TINY, "--hidden", "16", "--out", str(run))
    assert status == 1 and "--resume" in line and "--overwrite" in line and "1 of 1 epochs, finished" in line
    assert (run / "checkpoint.pt").read_bytes() == before
    status, line = command(capsys, "train", "--resume", "--overwrite", "--out", str(run))
    assert status == 2 and "--resume" in line and "--overwrite" in line


def test_overwrite_replaced_the_run_and_removed_its_stale_outputs(run):
    saved = json.loads((run / "results.json").read_text())
    assert saved["config"]["hidden"] == 8 and saved["complete"]
    assert "overwrite" not in saved["config"]  # --resume must never inherit it
    assert not (run / "certify.json").exists()


def test_reproduce_and_compare_refuse_to_overwrite_results(tmp_path, monkeypatch):
    (tmp_path / "mnist-fc").mkdir()
    (tmp_path / "mnist-fc" / "results.json").write_text("{}")
    with pytest.raises(RunExistsError, match="--overwrite"):
        reproduce_main(["--row", "mnist-fc", "--runs", str(tmp_path), "--device", "cpu"])
    assert not (tmp_path / "mnist-fc" / "log.txt").exists()  # nothing ran
    ran = []
    monkeypatch.setattr(reproduce_module, "run_row", lambda row, **kw: ran.append((row.name, kw)))
    for how in (["--overwrite"], ["--", "--overwrite"], ["--", "--resume"]):
        reproduce_main(["--row", "mnist-fc", "--runs", str(tmp_path), "--device", "cpu", *how])
    assert [name for name, _ in ran] == ["mnist-fc"] * 3 and ran[0][1]["overwrite"]
    (tmp_path / "comparison.csv").write_text("")
    with pytest.raises(RunExistsError, match="--overwrite"):
        compare_main(["--out", str(tmp_path), "--device", "cpu"])


def test_certify_of_a_pretrained_name_writes_under_runs_not_here_nor_into_the_package(tmp_path, monkeypatch,
                                                                                   capsys):
    from mondeq.pretrained import registry

    monkeypatch.chdir(tmp_path)
    shipped = sorted(p.name for p in registry.WEIGHTS.iterdir())
    name = "mnist-certified-fc-1.58"  # scalar multipliers: its certificate takes milliseconds
    argv = ["certify", name, "--test-limit", "4", "--attack-limit", "1", "--steps", "1", "--restarts",
            "1", "--epsilons", "0.1", "--soundness-checks", "0", "--data-root", str(REPO / "data"),
            "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "replacing" not in capsys.readouterr().out
    assert (tmp_path / "runs" / "pretrained" / name / "certify.json").is_file()
    assert not (tmp_path / "certify.json").exists()
    assert sorted(p.name for p in registry.WEIGHTS.iterdir()) == shipped
    assert main(argv) == 0
    assert "(replacing the previous report there)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, option", [
    (["train", "--model", "fc", "--channels", "8"], "--channels"),
    (["train", "--model", "conv", "--hidden", "8"], "--hidden"),
    (["compare", "RUN", "--model", "conv"], "--model"), (["compare", "RUN", "--train-limit", "9"], "--train-limit"),
])
def test_an_option_that_would_be_silently_unused_is_refused(capsys, argv, option):
    status, line = command(capsys, *argv)
    assert status == 2 and option in line


# --- 3. every program in experiments/ ends a mistake in one error line --------------------------

#: A mistake per program that fails fast, beyond argparse's own refusals (an unknown option, below).
MISTAKES = {
    "train.py": ["--solver", "fb", "--alpha", "10", "--train-limit", "128", "--test-limit", "10", "--hidden",
                 "8", "--epochs", "1", "--device", "cpu", "--out", "{tmp}/fb"],
    "certify.py": ["{tmp}", "--device", "cpu"],
    "compare_splitting.py": ["{tmp}/missing", "--device", "cpu", "--out", "{tmp}/c"],
    "pr_spectrum.py": ["{tmp}/missing", "--device", "cpu"],
    "reproduce.py": ["--row", "mnist-fc", "--device", "cuda:99", "--runs", "{tmp}"],
    "bench_fc.py": ["--steps", "1", "--device", "cpu", "--data-root", "{tmp}"],
    "bench_multitier.py": ["--steps", "0"],
    "bench_ddp.py": ["--nproc", "0"],
}


def run_program_file(path: Path, argv: list[str], capsys) -> tuple[int, str]:
    sys.argv = [str(path), *argv]
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    err = capsys.readouterr().err
    return exit_info.value.code, err


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_every_program_ends_a_mistake_in_one_error_line(program, capsys, tmp_path):
    for argv in (["--no-such-option"], [a.format(tmp=tmp_path) for a in MISTAKES.get(program.name, [])]):
        if not argv:
            continue
        status, err = run_program_file(program, argv, capsys)
        assert status in (1, 2), (program.name, argv, err)
        assert "Traceback" not in err
        assert len([line for line in err.splitlines() if "error:" in line]) == 1, err


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_every_program_goes_through_the_commands_error_handling_and_takes_device(program):
    """A mistake deeper than argparse (a missing file, a diverged run) is one line only when the
    program's entry runs under mondeq.cli.main's handling; and every program takes --device."""
    source = program.read_text()
    assert "run_program(" in source or "run_command(" in source, f"{program.name}: wrap main in run_program"
    if "run_command(" not in source:  # a subcommand's options are checked with the subcommand's
        assert '"--device"' in source, f"{program.name} has no --device option"


@pytest.mark.parametrize("module", [m for m in sorted((REPO / "mondeq" / "cli").rglob("*.py"))
                                    if '__name__ == "__main__"' in m.read_text()], ids=lambda m: m.name)
def test_python_dash_m_runs_a_command_under_the_same_handling(module):
    """``python -m mondeq.cli.train`` is what reproduce's rows run: its mistakes are one line too."""
    main_block = module.read_text().split('__name__ == "__main__"')[1]
    assert "run_command(" in main_block or "run_program(" in main_block, module.name


def test_out_of_memory_and_interrupts_end_in_one_line(capsys):
    from mondeq.cli.main import run_program

    def oom(argv):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_program(oom, []) == 1
    assert run_program(interrupted, []) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: out of memory (CUDA out of memory)") and "--batch-size" in err[0]
    assert err[1] == "error: interrupted"
    with pytest.raises(RuntimeError, match="a bug"):  # anything else is a bug: its traceback is kept
        run_program(lambda argv: (_ for _ in ()).throw(RuntimeError("a bug")), [])


def test_the_readme_command_reports_a_mistake_in_one_line_from_a_process(tmp_path):
    """The real program, in its own process (what a user runs): no traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "experiments/train.py", "--resume", "--out", str(tmp_path),
                           "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: no checkpoint at") and len(proc.stderr.strip().splitlines()) == 1


# --- 4. the run first, its data root reused ------------------------------------------------------

def test_the_run_is_the_first_argument_of_every_command_that_reads_one(run, capsys, tmp_path):
    for name in ("certify", "compare", "spectrum"):
        status, line = command(capsys, name, str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "o")) \
            if name == "compare" else command(capsys, name, str(tmp_path), "--device", "cpu")
        assert status == 1 and "holds no checkpoint.pt" in line, (name, line)
    status, line = command(capsys, "spectrum", "--checkpoint", str(tmp_path), "--device", "cpu")
    assert status == 1 and "holds no checkpoint.pt" in line  # the former spelling still works
    status, line = command(capsys, "spectrum", str(run), "--checkpoint", str(run))
    assert status == 2 and "once" in line


def test_a_run_trained_with_data_root_finds_its_data_again(run, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MONDEQ_DATA", str(tmp_path))  # the default rule now finds no MNIST
    monkeypatch.chdir(tmp_path)
    status = main(["spectrum", str(run), "--batch-size", "2", "--alphas", "1", "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    status = main(["certify", str(run), "--test-limit", "4", "--attack-limit", "2", "--looseness-limit", "0",
                   "--steps", "2", "--restarts", "1", "--epsilons", "0.1", "--device", "cpu",
                   "--out", str(tmp_path / "cert")])
    assert status == 0, capsys.readouterr().err


# --- 5. version and help ---------------------------------------------------------------------------

def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mondeq {mondeq.__version__}"


def parsers_of(argv: list[str], monkeypatch) -> list[argparse.ArgumentParser]:
    """Every parser that prints help for ``argv`` (a subcommand's, and its own subcommands')."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.print_help
    monkeypatch.setattr(argparse.ArgumentParser, "print_help",
                        lambda self, file=None: (seen.append(self), original(self, file))[1])
    assert main(argv) == 0
    found = list(seen)
    for parser in seen:
        for action in parser._actions:  # argparse has no public accessor for its actions
            if isinstance(action, argparse._SubParsersAction):
                found += action.choices.values()
    return found


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_option_has_help_and_says_its_default_once(name, capsys, monkeypatch):
    for parser in parsers_of([name, "--help"], monkeypatch):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            label = "/".join(action.option_strings) or action.dest
            assert action.help, f"mondeq {name}: {label} has no help"
            text = formatter._expand_help(action)
            assert text.count("(default") <= 1, f"mondeq {name}: {label}: {text}"
            assert "(default: None)" not in text, f"mondeq {name}: {label}: {text}"
    options = {o for parser in parsers_of([name, "--help"], monkeypatch) for a in parser._actions
               for o in a.option_strings}
    assert "--device" in options, f"mondeq {name} has no --device"
    capsys.readouterr()


def test_the_training_report_counts_capped_solves_out_of_all(run, capsys):
    history = json.loads((run / "results.json").read_text())["history"]
    assert history[0]["train_solves"] == 2 and history[0]["test_solves"] == 1  # 64 / 32 steps, 16 test images
    assert train_cli.capped_solves(history).startswith("0 of 2 forward, 0 of 2 backward solves (train), 0 of 1")
