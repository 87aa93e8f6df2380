"""`mondeq pretrained`: the shipped models listed from the command line, one model's manifest in
words or JSON, and its mistakes in one line; a mistyped command is answered with the command it
resembles; a reader that leaves the pipe early is no error."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

import mondeq
from mondeq.cli import pretrained as pretrained_command
from mondeq.cli.main import main
from mondeq.pretrained.registry import entry
from mondeq.pretrained.verdicts import decode, encode


def test_the_list_has_one_line_per_shipped_model_with_its_figures(capsys):
    assert main(["pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [item.name for item in mondeq.pretrained()]
    assert [line.split(":")[0] for line in lines] == names
    assert all("clean" in line and "certified" in line and "multipliers" in line for line in lines)


def test_one_model_in_words_and_as_its_manifest(capsys):
    item = {e.name: e for e in mondeq.pretrained()}["mnist-fc"]
    assert main(["pretrained", "mnist-fc"]) == 0
    text = capsys.readouterr().out
    assert item.command in text and f"{100 * item.figures['clean']:.2f} %" in text
    assert f"{item.certify['bound']} bound, {item.certify['multipliers']} multipliers" in text
    for eps, value in item.figures["certified"].items():
        assert f"{100 * value:.2f} % at ε={eps}" in text
    assert main(["pretrained", "mnist-fc", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["sha256"] == item.sha256 and manifest["figures"] == item.figures
    assert "verdicts" not in manifest


@pytest.mark.parametrize("argv, status, said", [
    (["pretrained", "mnist-fcc"], 1, "did you mean 'mnist-fc'"),
    (["pretrained", "--json"], 2, "give its NAME"),
    (["pretraned"], 2, "did you mean 'pretrained'"),
    (["pretrained", "--verify"], 2, "give its NAME"),
    (["pretrained", "mnist-fc", "--json", "--verify"], 2, "choose one"),
])
def test_mistakes_are_one_line(argv, status, said, capsys):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_a_reader_that_stops_early_is_not_an_error():
    """`true` exits at once, long before the command (seconds of imports) writes: the write
    meets a closed pipe, which must end the command quietly with status 0."""
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m mondeq pretrained | true"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_verify_recertifies_the_recorded_images_and_finds_a_changed_verdict(capsys, monkeypatch):
    name = "mnist-certified-fc-1.58"  # scalar multipliers: seconds
    assert main(["pretrained", name, "--verify", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "verdicts identical to the recorded ones" in out and "same images" in out
    item = entry(name)
    n, key = item.verdicts["images"], f"{item.verdicts['epsilons'][-1]:g}"
    bits = decode(item.verdicts["certified"][key], n)
    bits[0] = ~bits[0]  # a manifest that claims one verdict the model does not give
    forged = dataclasses.replace(item, verdicts={**item.verdicts,
                                                 "certified": {**item.verdicts["certified"], key: encode(bits)}})
    monkeypatch.setattr(pretrained_command, "entry", lambda _: forged)
    assert main(["pretrained", name, "--verify", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "1 images differ" in out and "verdicts differ from the recorded ones" in out
