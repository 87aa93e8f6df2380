"""Exact resume: a run killed at any moment and resumed with --resume is the uninterrupted run.

The kill is a real SIGKILL of a training subprocess (nothing is flushed or cleaned up), delivered
at a chosen moment (mid-epoch; during a checkpoint write); the resumed run's final weights must
equal the uninterrupted run's bit for bit (torch.equal), on CPU, one thread.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mondeq import fc_mondeq
from mondeq.training import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from mondeq.training.step_size import AlphaTuner

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "experiments" / "train.py")
SMALL = ["--train-limit", "256", "--test-limit", "64", "--epochs", "3", "--hidden", "20",
         "--batch-size", "32", "--epsilons", "0.1"]
STEPS_PER_EPOCH = 256 // 32

# Runs train.py and SIGKILLs itself at the KILL_AT-th call of KILL_IN ("step": Adam.step, "save":
# the checkpoint write, after the temporary file is complete and before the rename).
KILLER = r"""
import os, runpy, signal, sys
import torch
import mondeq.training.checkpoint as ckpt
kill_at, where, calls = int(os.environ["KILL_AT"]), os.environ["KILL_IN"], [0]
def maybe_kill():
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
if where == "step":
    step = torch.optim.Adam.step
    def killing_step(self, *a, **k):
        maybe_kill()
        return step(self, *a, **k)
    torch.optim.Adam.step = killing_step
else:
    replace = os.replace
    def killing_replace(src, dst):
        maybe_kill()
        return replace(src, dst)
    ckpt.os.replace = killing_replace
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start(args, out, **env):
    return subprocess.Popen([sys.executable, TRAIN, *args, "--out", str(out)], cwd=ROOT, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _killed(args, out, *, kill_at, where):
    return subprocess.Popen([sys.executable, "-c", KILLER, TRAIN, *args, "--out", str(out)], cwd=ROOT,
                            env=_env(KILL_AT=str(kill_at), KILL_IN=where),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc):
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _same_run(a: Path, b: Path) -> None:
    sa, sb = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (a, b))
    assert sa["epoch"] == sb["epoch"] == 3
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    clock = {"step_time_ms", "epoch_time_s", "images_per_s"}
    for ha, hb in zip(sa["history"], sb["history"], strict=True):  # all but the wall-clock figures
        assert {k: v for k, v in ha.items() if k not in clock} == {k: v for k, v in hb.items() if k not in clock}


def test_sigkilled_run_resumes_to_bit_identical_weights(tmp_path):
    """SIGKILL mid-epoch 2; resume; SIGKILL that run while it writes epoch 2's checkpoint; resume
    again: the weights after epoch 3 equal the uninterrupted run's, bit for bit."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    uninterrupted = _start(SMALL, full)  # in parallel with the interrupted chain
    code, log = _finish(_killed(SMALL, cut, kill_at=STEPS_PER_EPOCH + 3, where="step"))
    assert code == -signal.SIGKILL, log
    assert read_checkpoint(cut / "checkpoint.pt")["epoch"] == 1  # killed in epoch 2
    code, log = _finish(_killed(["--resume"], cut, kill_at=1, where="save"))
    assert code == -signal.SIGKILL, log
    assert "after epoch 1" in log and "epoch 2:" in log  # epoch 2 ran again, its save was cut
    assert read_checkpoint(cut / "checkpoint.pt")["epoch"] == 1  # the old checkpoint survived
    code, log = _finish(_start(["--resume"], cut))
    assert code == 0, log
    assert "resumed from" in log and "after epoch 1" in log
    code, log = _finish(uninterrupted)
    assert code == 0, log
    _same_run(full, cut)


def test_checkpoint_restores_alpha_tuner_and_rng(tmp_path):
    torch.manual_seed(0)
    model = fc_mondeq(12, 7, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    tuner = AlphaTuner(2)
    x = torch.randn(16, 12)
    for _ in range(3):
        tuner(model, x, None)
    model.layer.alpha = 0.125
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, epoch=1, history=[], config={},
                    extra={"tuner": tuner.state_dict()})
    expected = torch.rand(5)  # what the global RNG draws next after the save
    torch.manual_seed(123)
    other = fc_mondeq(12, 7, 3)
    state = load_checkpoint(tmp_path / "c.pt", model=other)
    assert torch.equal(torch.rand(5), expected)
    assert other.layer.alpha == 0.125
    restored = AlphaTuner(2)
    restored.load_state_dict(state["extra"]["tuner"])
    assert restored.steps == tuner.steps == 3
    assert [(s, a.alpha, a.trials) for s, a in restored.log] == [(s, a.alpha, a.trials) for s, a in tuner.log]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_corrupt_checkpoint_error_names_the_file(tmp_path, content):
    model = fc_mondeq(12, 7, 3)
    path = tmp_path / "checkpoint.pt"
    if content == "truncated":
        save_checkpoint(path, model=model, optimizer=torch.optim.Adam(model.parameters()), epoch=1,
                        history=[], config={})
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path, model=model)


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    model = fc_mondeq(12, 7, 3)
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=torch.optim.Adam(model.parameters()),
                    epoch=1, history=[], config={})
    with pytest.raises(CheckpointError, match="different architecture"):
        load_checkpoint(tmp_path / "c.pt", model=fc_mondeq(12, 5, 3))


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = fc_mondeq(12, 7, 3)
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, epoch=1, history=[], config={})

    def failing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, epoch=2, history=[], config={})
    assert read_checkpoint(tmp_path / "c.pt")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


class _Crash(Exception):
    pass


def _crash_and_resume(tmp_path, monkeypatch, args, *, crash_at: int, every: int) -> dict:
    """Train ``args`` uninterrupted into ``full/``; train them again into ``cut/`` with
    ``--checkpoint-every every``, crashing (an exception) at the ``crash_at``-th optimizer step;
    resume ``cut/`` under a different global seed and check it ends as ``full/`` did. Returns the
    checkpoint the crash left behind."""
    from mondeq.cli import train
    train.main([*args, "--out", str(tmp_path / "full")])
    step, calls = torch.optim.Adam.step, [0]

    def crashing_step(self, *a, **k):
        calls[0] += 1
        if calls[0] == crash_at:
            raise _Crash
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", crashing_step)
    with pytest.raises(_Crash):
        train.main([*args, "--checkpoint-every", str(every), "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    state = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    torch.manual_seed(999)  # the resumed run must not depend on the process's RNG state
    train.main(["--resume", "--out", str(tmp_path / "cut")])
    _same_run(tmp_path / "full", tmp_path / "cut")
    return state


def test_checkpoint_every_n_steps_resumes_inside_the_epoch(tmp_path, monkeypatch):
    """--checkpoint-every 3: a crash at step 5 of epoch 2 resumes from step 3 of epoch 2, and the
    finished run (weights and per-epoch figures) equals the uninterrupted one. In-process, with an
    exception as the crash; the SIGKILL test above covers a real kill."""
    args = [*SMALL, "--augment", "--schedule", "onecycle", "--tune-alpha-every", "4"]
    state = _crash_and_resume(tmp_path, monkeypatch, args, crash_at=STEPS_PER_EPOCH + 5, every=3)
    assert state["epoch"] == 1 and (state["extra"]["partial"]["epoch"], state["extra"]["partial"]["step"]) == (2, 3)


def test_epoch_order_is_the_epoch_th_permutation_of_one_generator():
    from mondeq.training.data_order import epoch_order
    generator = torch.Generator().manual_seed(7)
    for epoch in range(0, 4):
        assert torch.equal(epoch_order(100, seed=7, epoch=epoch), torch.randperm(100, generator=generator))


def test_multitier_run_resumed_inside_an_epoch_ends_with_the_same_weights(tmp_path, monkeypatch):
    """The multi-tier model (its tier biases, stride-2 kernels and the α tuner) resumes exactly
    too: a crash in epoch 2 with --checkpoint-every 1, then --resume, equals the uninterrupted run."""
    args = ["--model", "multitier", "--channels", "2", "4", "4", "--train-limit", "96", "--test-limit", "32",
            "--epochs", "3", "--batch-size", "32", "--epsilons", "0.1", "--tune-alpha-every", "2"]
    state = _crash_and_resume(tmp_path, monkeypatch, args, crash_at=3 + 2, every=1)  # step 2 of epoch 2
    assert (state["extra"]["partial"]["epoch"], state["extra"]["partial"]["step"]) == (2, 1)
