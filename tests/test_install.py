"""The `mondeq` console command: declared in setup.cfg, and working after a regular (non-editable)
install, from any folder, with the data found by the data-root rule."""
from __future__ import annotations

import configparser
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mondeq.cli.main import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def console_script() -> str:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    scripts = dict(line.split("=", 1) for line in
                   config["options.entry_points"]["console_scripts"].strip().splitlines())
    return {k.strip(): v.strip() for k, v in scripts.items()}["mondeq"]


def test_console_script_resolves_to_the_dispatcher():
    module, _, name = console_script().partition(":")
    assert getattr(importlib.import_module(module), name) is main


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"  {name} " in out


def test_typed_markers_are_package_data():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    data = config["options.package_data"]
    for package in ("mondeq", "splitting"):
        assert (REPO / package / "py.typed").is_file()
        assert "py.typed" in data[package]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A regular (non-editable) install of a copy of the sources into a fresh target folder."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("mondeq", "splitting"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, text=True)
    return target


def run_installed(target: Path, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(target), **env}
    environment.pop("MONDEQ_DATA", None)
    return subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def test_a_regular_install_ships_every_pretrained_model(installed, tmp_path):
    """Every manifest and weights file in the sources is package data (a setup.cfg glob list
    written on one line once matched nothing), and the installed copy loads one of them."""
    shipped = {p.name for p in (REPO / "mondeq" / "pretrained" / "weights").iterdir()}
    assert shipped, "no pretrained models in the sources"
    there = {p.name for p in (installed / "mondeq" / "pretrained" / "weights").iterdir()}
    assert shipped <= there, f"missing from the install: {sorted(shipped - there)}"
    probe = ("import mondeq; names = [e.name for e in mondeq.pretrained()]; "
             "model = mondeq.pretrained(names[0]); print(mondeq.__file__, len(names))")
    out = run_installed(installed, [sys.executable, "-c", probe], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(installed) in out.stdout and out.stdout.split()[-1] == str(len(shipped) // 2)


@pytest.mark.slow
def test_installed_command_runs_from_any_folder(installed, tmp_path):
    script = installed / "bin" / "mondeq"
    assert script.is_file()
    for command in ([str(script), "--help"], [sys.executable, "-m", "mondeq", "--help"]):
        done = run_installed(installed, command, tmp_path)
        assert done.returncode == 0, done.stderr
        assert all(name in done.stdout for name in SUBCOMMANDS)
    where = run_installed(installed, [sys.executable, "-c", "import mondeq; print(mondeq.__file__)"], tmp_path)
    assert where.stdout.strip().startswith(str(installed))  # the installed copy, not the checkout
    out = tmp_path / "run"
    done = run_installed(installed, [str(script), "train", "--train-limit", "256", "--test-limit", "64",
                                     "--epochs", "1", "--data-root", str(REPO / "data"), "--out", str(out),
                                     "--device", "cpu"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout
    assert (out / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_installed_command_without_data_says_how_to_point_at_it(installed, tmp_path):
    """An installed copy sees no checkout data/: the one-line error names --data-root and $MONDEQ_DATA."""
    done = run_installed(installed, [str(installed / "bin" / "mondeq"), "train", "--epochs", "1",
                                     "--out", str(tmp_path / "run"), "--device", "cpu"], tmp_path,
                         XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error:")
    assert "--data-root" in done.stderr and "MONDEQ_DATA" in done.stderr
