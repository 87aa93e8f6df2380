"""`mondeq dbm`: a tiny run writes its files, resumes to bit-identical weights, and its model
completes a user's images in three lines."""
import json
import re
from pathlib import Path

import pytest
import torch

from mondeq.cli.main import main

TINY = ["--train-subset", "64", "--test-subset", "40", "--batch-size", "32", "--hidden", "6", "--rank", "12",
        "--cost-batch", "4", "--device", "cpu", "--no-progress", "--max-iter", "300"]


def fake_mnist(root, *, train, download):
    """Small stand-in for the MNIST files (the program's data path, without decoding 70 000 images)."""
    gen = torch.Generator().manual_seed(int(train))
    n = 64 if train else 40
    labels = torch.randint(0, 10, (n,), generator=gen)
    images = (torch.rand(n, 1, 28, 28, generator=gen, dtype=torch.float32) < 0.2 + 0.05 * labels.view(-1, 1, 1, 1)).float()
    return images, labels


@pytest.fixture(autouse=True, scope="module")
def small_data():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mondeq.cli.dbm.load_mnist", fake_mnist)
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_data):
    out = tmp_path_factory.mktemp("dbm") / "run"
    assert main(["dbm", *TINY, "--epochs", "2", "--baseline-epochs", "1", "--out", str(out)]) == 0
    return out


def test_a_run_writes_results_metrics_checkpoint_and_picture(run):
    results = json.loads((run / "results.json").read_text())
    assert set(results["dbm"]) >= {"label_accuracy", "bin_accuracy", "l2", "rmse", "iterations"}
    assert set(results["baselines"]) == {"mean_fill", "masked_classifier", "rbm_mean_field"}
    # the RBM gets as many hidden units as the DBM has hidden one-hot channels (6 variables × 4 values)
    assert results["baselines"]["rbm_mean_field"]["hidden_units"] == 6 * 4
    assert {(r["method"], r["tol"]) for r in results["inference_cost"]} == {
        (m, t) for m in ("fb", "pr", "anderson-pr") for t in (1e-2, 1e-4)}
    assert all(r["converged"] for r in results["inference_cost"])
    assert (run / "metrics.csv").read_text().count("\n") == 3  # header and two epochs
    assert (run / "completions.png").stat().st_size > 0


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(run, tmp_path):
    out = tmp_path / "resumed"
    assert main(["dbm", *TINY, "--epochs", "2", "--stop-after", "1", "--no-baselines", "--out", str(out)]) == 0
    assert not (out / "results.json").exists()
    assert main(["dbm", *TINY, "--epochs", "2", "--no-baselines", "--out", str(out), "--resume"]) == 0
    a = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert {k: float((a[k] - b[k]).abs().max()) for k in a} == {k: 0.0 for k in a}


def test_readme_three_lines_complete_a_users_images(run):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Monotone deep Boltzmann machines"):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert code.count("\n") == 3
    images = torch.rand(3, 28, 28)
    observed = torch.rand(3, 28, 28) < 0.4
    scope = {"images": images, "observed": observed}
    exec(compile(code.replace("runs/dbm-k2", str(run)), "README.md", "exec"), scope)
    out, filled, label = scope["out"], scope["filled"], scope["label"]
    assert filled.shape == (3, 28, 28) and label.shape == (3,)
    assert out.stats.forward.converged
    # observed pixels keep their bin: the completion there is that bin's value
    bins = (images * 2).floor().clamp(max=1).long()
    assert torch.equal(filled[observed], out.bin_values[bins][observed])
    assert out.bin_values[0] < 0.25 < 0.75 < out.bin_values[1]  # E[x | bin] of the training images


def test_a_step_with_a_non_finite_gradient_leaves_the_weights_as_they_were():
    from mondeq.categorical.build import build_dbm, model_config
    from mondeq.categorical.train import train_epoch

    model = build_dbm(model_config(image=(4, 4), hidden=3, rank=5), dtype=torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    images, labels = torch.rand(8, 4, 4, dtype=torch.float64), torch.arange(8) % 10
    before = [p.detach().clone() for p in model.parameters()]
    hook = model.bias[0].register_hook(lambda g: g * float("nan"))  # a diverged backward solve
    record = train_epoch(model, optimizer, images, labels, epoch=0, seed=0, batch_size=4, fraction=0.4,
                         progress=False)
    assert record["skipped_steps"] == 2
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    hook.remove()
    record = train_epoch(model, optimizer, images, labels, epoch=1, seed=0, batch_size=4, fraction=0.4,
                         progress=False)
    assert record["skipped_steps"] == 0
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("argv, said", [
    (["--bins", "1"], "--bins must be at least 2"),
    (["--resume", "--out", "no-such-run"], "holds no checkpoint.pt of a `mondeq dbm` run"),
])
def test_a_mistake_is_one_line_that_names_the_dbm_command(argv, said, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["dbm", *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and "mondeq train" not in err
