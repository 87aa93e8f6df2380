"""Data-parallel training (mondeq.training.distributed): 2 CPU processes with gloo, compared with 1 process.

One spawn of two ranks (module fixture ``two_ranks``) runs every distributed scenario and saves
what each rank ends with; the tests compare those files with single-process runs in this process.
The solves use a tight tolerance (1e-13): the solver's stopping test is per batch, so at a loose
tolerance a sample's ẑ would depend on its batch mates and halves of a batch could not match the
whole batch to 1e-10.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from splitting import ConvergenceWarning, StepSizeWarning

from mondeq import fc_mondeq, multitier_mondeq, single_conv_mondeq
from mondeq.training.data_order import epoch_order
from mondeq.training.distributed import (DistInfo, all_reduce_sum, broadcast_object, rank_batches,
                                setup, shard, teardown, unwrap, wrap_model)
from mondeq.robustness.losses import LipschitzMarginLoss
from mondeq.training import train_epoch
from mondeq.training.step_size import AlphaTuner, tune_alpha

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
# (model, solver, loss): "certified" is the Lipschitz-margin loss with its ‖U‖₂ penalty, whose
# gradient reaches U outside the DDP-wrapped forward
SCENARIOS = [("fc", "pr", "ce"), ("fc", "fb", "ce"), ("conv", "pr", "ce"), ("conv", "fb", "ce"),
             ("multitier", "pr", "ce"), ("fc", "pr", "certified")]
N_TRAIN, GLOBAL_BATCH, SEED = 24, 8, 3
N_TEST = 13  # odd: the two evaluation shards differ in size


def _model(kind: str, solver: str) -> nn.Module:
    torch.manual_seed(0)
    alpha = 1.0 if solver == "pr" else 0.05  # FB needs α < 2m/L² (≈ 0.33 and 0.22 at the start)
    settings = dict(solver=solver, alpha=alpha, tol=1e-13, max_iter=4000)
    if kind == "fc":
        return fc_mondeq(6, 5, 3, **settings)
    if kind == "multitier":
        return multitier_mondeq(1, 8, (2, 3), 3, **settings)
    return single_conv_mondeq(1, 8, 4, 3, pool=4, **settings)


def _data(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 6) if kind == "fc" else (n, 1, 8, 8)
    return torch.randn(shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def _train(kind: str, solver: str, loss: str, info: DistInfo) -> dict[str, torch.Tensor]:
    """Two epochs of Adam on this rank's shares of the global batches; the bare model's weights."""
    model = wrap_model(_model(kind, solver), info, torch.device("cpu"))
    loss_fn = (LipschitzMarginLoss(unwrap(model), eps=0.5, lipschitz_penalty=0.1) if loss == "certified"
               else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = _data(kind, N_TRAIN, seed=1)
    with warnings.catch_warnings():
        # a solve that stops short of tol, or an FB step outside its range, fails the test
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("error", StepSizeWarning)
        for epoch in range(2):
            steps = rank_batches(epoch_order(N_TRAIN, seed=SEED, epoch=epoch), GLOBAL_BATCH, info)
            train_epoch(model, optimizer, [(x[i], y[i]) for i in steps], steps=len(steps), loss_fn=loss_fn)
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def _correct(model: nn.Module, info: DistInfo) -> tuple[int, int]:
    """Correct predictions and samples over the test set, summed over ranks."""
    x, y = _data("fc", N_TEST, seed=2)
    idx = shard(N_TEST, info)
    with torch.no_grad():
        correct = (unwrap(model)(x[idx]).argmax(1) == y[idx]).sum()
    counts = all_reduce_sum(torch.stack([correct, torch.tensor(len(idx))]))
    return int(counts[0]), int(counts[1])


def _tuning_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _data("fc", 16, seed=10 + rank)
    return (1.0 + 4.0 * rank) * x, y  # very different batches: different iteration counts


def _tuner_choice(model: nn.Module, rank: int):
    torch.manual_seed(5)  # the backward probe ḡ comes from the global generator
    tuner = AlphaTuner(every=1)
    tuner(model, *_tuning_batch(rank))
    return unwrap(model).layer.alpha, tuner.log[0][1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    info, device = setup("cpu")
    result = {"info": info, "device": str(device)}
    for kind, solver, loss in SCENARIOS:
        result[f"{kind}-{solver}-{loss}"] = _train(kind, solver, loss, info)
    model = wrap_model(_model("fc", "pr"), info, device)
    result["correct"] = _correct(model, info)
    unwrap(model).layer.tol = 1e-6
    result["alpha"] = _tuner_choice(model, info.rank)
    result["broadcast"] = broadcast_object({"from": info.rank})
    torch.save(result, Path(out) / f"rank{rank}.pt")
    teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned children
    try:
        for attempt in range(2):
            try:
                mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
                break
            except mp.ProcessRaisedException as error:
                # another program may take the free port before rank 0 binds it: retry once
                if attempt or "address already in use" not in str(error).lower():
                    raise
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_setup_reads_torchrun_environment(two_ranks):
    assert [r["info"] for r in two_ranks] == [DistInfo(0, 2, 0), DistInfo(1, 2, 1)]
    assert two_ranks[0]["info"].is_main and not two_ranks[1]["info"].is_main
    assert [r["broadcast"] for r in two_ranks] == [{"from": 0}] * 2


def test_setup_without_torchrun_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = setup("cpu")
    assert info == DistInfo(0, 1, 0) and info.is_main and device == torch.device("cpu")
    t = torch.arange(3.0)
    assert all_reduce_sum(t) is t and broadcast_object("x") == "x"
    model = nn.Linear(2, 2)
    assert wrap_model(model, info, device) is model and unwrap(model) is model


@pytest.mark.parametrize("kind,solver,loss", SCENARIOS)
def test_ddp_on_halves_matches_one_process_on_whole_batches(two_ranks, kind, solver, loss):
    """The implicit backward under DDP: 6 Adam steps on halves = 6 steps on the whole batches."""
    reference = _train(kind, solver, loss, DistInfo(0, 1, 0))
    initial = _model(kind, solver).state_dict()
    for rank in two_ranks:
        params = rank[f"{kind}-{solver}-{loss}"]
        assert params.keys() == reference.keys()
        for name, value in reference.items():
            assert (value - initial[name]).abs().max() > 1e-3  # training moved every parameter
            torch.testing.assert_close(params[name], value, rtol=0, atol=1e-10, msg=name)


def test_reduced_accuracy_equals_single_process_accuracy(two_ranks):
    model = _model("fc", "pr")
    x, y = _data("fc", N_TEST, seed=2)
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    assert [r["correct"] for r in two_ranks] == [(correct, N_TEST)] * 2


def test_alpha_tuner_picks_rank0_alpha_on_every_rank(two_ranks):
    model = _model("fc", "pr")
    model.layer.tol = 1e-6
    searches = []
    for rank in range(WORLD):
        torch.manual_seed(5)
        searches.append(tune_alpha(model.layer, _tuning_batch(rank)[0]))
    # the ranks' batches alone would give different searches ...
    assert searches[0].trials != searches[1].trials
    # ... but both ranks take rank 0's
    for rank in two_ranks:
        alpha, search = rank["alpha"]
        assert alpha == searches[0].alpha == search.alpha
        assert search.trials == searches[0].trials


def test_rank_batches_partition_every_global_batch():
    order = epoch_order(23, seed=1, epoch=0)
    single = rank_batches(order, 6, DistInfo(0, 1, 0))
    assert [len(b) for b in single] == [6, 6, 6, 5]
    for world in (2, 3, 4):
        parts = [rank_batches(order, 6, DistInfo(r, world, r)) for r in range(world)]
        assert len({len(p) for p in parts}) == 1  # same number of steps on every rank
        for step, batch in enumerate(single):
            sizes = [len(p[step]) for p in parts]
            assert max(sizes) - min(sizes) <= 1
            assert torch.equal(torch.cat([p[step] for p in parts]), batch)
    # a last global batch smaller than the number of ranks is dropped on every rank
    order = epoch_order(14, seed=1, epoch=0)  # global batches of 6, 6 and 2
    parts = [rank_batches(order, 6, DistInfo(r, 2, r)) for r in range(2)]
    assert [len(p) for p in parts] == [3, 3]
    parts = [rank_batches(order, 6, DistInfo(r, 4, r)) for r in range(4)]
    assert [len(p) for p in parts] == [2] * 4


def test_evaluation_shards_cover_the_test_set_once():
    for world in (1, 2, 3):
        shards = [shard(10, DistInfo(r, world, r)) for r in range(world)]
        assert torch.equal(torch.cat(shards), torch.arange(10))


def test_epoch_order_is_a_reproducible_permutation_that_changes_each_epoch():
    a = epoch_order(50, seed=7, epoch=3)
    assert torch.equal(torch.sort(a).values, torch.arange(50))
    assert torch.equal(a, epoch_order(50, seed=7, epoch=3))
    assert not torch.equal(a, epoch_order(50, seed=7, epoch=4))
    assert not torch.equal(a, epoch_order(50, seed=8, epoch=3))
    torch.manual_seed(123)  # independent of the global generator
    assert torch.equal(a, epoch_order(50, seed=7, epoch=3))


def test_torchrun_main_job_two_processes_rank0_writes_results(tmp_path):
    """``torchrun --nproc_per_node 2 experiments/train.py`` on a slice of MNIST, gloo on CPU."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "experiments" / "train.py"), "--device", "cpu", "--epochs", "1",
               "--train-limit", "256", "--test-limit", "101", "--batch-size", "64", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "curves.png", "metrics.csv", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["world_size"] == 2
    assert [h["epoch"] for h in results["history"]] == [1]
    assert 0.0 <= results["final"]["test_accuracy"] <= 1.0
    # test accuracy is a count over all 101 test images, summed over the two shards (51 + 50)
    assert round(results["final"]["test_accuracy"] * 101, 6) == round(results["final"]["test_accuracy"] * 101)
    assert done.stdout.count("final report") == 1  # only rank 0 prints
