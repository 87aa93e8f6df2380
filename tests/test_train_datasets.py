"""The main job on CIFAR-10 and SVHN files in the official formats (written by the test into a
temporary data root): it trains, learns, reports pixel-scale figures with the smallest channel
std, and --augment is reproducible from the seed."""
import json
from pathlib import Path

import pytest
import torch

from mondeq.data import DATASETS
from tests.fake_datasets import write_fake_cifar10, write_fake_svhn
from mondeq.cli import train as train_module

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--hidden", "20", "--batch-size", "32", "--lr", "1e-2", "--epsilons", "0.1"]


@pytest.fixture(scope="module")
def train():
    return train_module


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_fake_cifar10(root, 200, 50, seed=0)
    write_fake_svhn(root, 200, 50, seed=1)
    return root


@pytest.mark.parametrize("dataset", ["cifar10", "svhn"])
def test_fc_learns_the_official_format_files(train, data_root, tmp_path, dataset):
    report = train.main(["--dataset", dataset, "--data-root", str(data_root), "--epochs", "3", *FAST,
                         "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["dataset"] == dataset and saved["config"]["data_root"] == str(data_root)
    assert report["final"]["test_accuracy"] >= 0.5  # ten classes: chance is 0.1
    # a 3×32×32 input: U is 20 × 3072
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["model"]["layer.linear.U.weight"].shape == (20, 3 * 32 * 32)


def test_pixel_scale_uses_the_smallest_channel_std(train, data_root, tmp_path, capsys):
    train.main(["--dataset", "cifar10", "--data-root", str(data_root), "--epochs", "1", *FAST,
                "--out", str(tmp_path)])
    final = json.loads((tmp_path / "results.json").read_text())["final"]
    pixel = final["lipschitz"]  # the reported bound is in pixel scale: ‖U‖₂/m / min σ
    out = capsys.readouterr().out
    assert f"{pixel:.3f} (pixel scale" in out
    assert f"{pixel * min(DATASETS['cifar10'].std):.3f} (‖U‖₂/m, normalised input)" in out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "checkpoint.pt", weights_only=True)["model"]


def test_augmentation_changes_training_and_is_reproducible_from_the_seed(train, data_root, tmp_path):
    args = ["--dataset", "cifar10", "--data-root", str(data_root), "--epochs", "1", "--train-limit", "64",
            "--test-limit", "16", *FAST]
    for name, extra in [("a", ["--augment"]), ("b", ["--augment"]), ("plain", []), ("seed1", ["--augment", "--seed", "1"])]:
        train.main([*args, *extra, "--out", str(tmp_path / name)])
    a, b, plain, seed1 = (_weights(tmp_path / n) for n in ("a", "b", "plain", "seed1"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], plain["head.weight"])
    assert not torch.equal(a["head.weight"], seed1["head.weight"])


def test_conv_and_multitier_run_on_three_channel_images(train, data_root, tmp_path):
    for model, channels in [("conv", ["4"]), ("multitier", ["2", "4", "4"])]:
        if model not in train.MODELS:
            pytest.skip("mondeq.models.zoo is not available")
        report = train.main(["--dataset", "svhn", "--data-root", str(data_root), "--model", model,
                             "--channels", *channels, "--epochs", "1", "--train-limit", "64",
                             "--test-limit", "16", "--batch-size", "32", "--epsilons", "0.1",
                             "--out", str(tmp_path / model)])
        assert report["final"]["forward_iterations"] >= 1
        assert report["config"]["channels"] == [int(c) for c in channels]
