"""The data-root rule (argument, $MONDEQ_DATA, checkout's data/, user cache), per-channel
normalisation and the dataset registry; a regular (non-editable) install never points into
site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mondeq import data
from mondeq.data import (DATASETS, ENV_VAR, MissingDatasetError, denormalize, load_dataset,
                         mnist_root, normalize, normalize_dataset, resolve_data_root)
from mondeq.data import root as root_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def _fake_tree(path: Path, *, setup_cfg: bool, mnist: bool) -> Path:
    path.mkdir(parents=True)
    if setup_cfg:
        (path / "setup.cfg").write_text("[metadata]\nname = mondeq\n")
    if mnist:
        (path / "data" / "mnist").mkdir(parents=True)
    return path


def test_order_argument_env_checkout_cache(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    tree = _fake_tree(clean_env / "checkout", setup_cfg=True, mnist=True)
    monkeypatch.setattr(root_module, "_SOURCE_TREE", tree)
    assert resolve_data_root() == tree / "data"
    monkeypatch.setenv(ENV_VAR, str(clean_env / "env"))
    assert resolve_data_root() == clean_env / "env"
    assert resolve_data_root(clean_env / "arg") == clean_env / "arg"
    assert resolve_data_root(str(clean_env / "arg")) == clean_env / "arg"
    monkeypatch.setenv(ENV_VAR, "")                       # empty counts as unset
    assert resolve_data_root() == tree / "data"


@pytest.mark.parametrize("setup_cfg, mnist", [(False, True), (True, False), (False, False)])
def test_not_a_checkout_falls_back_to_the_cache(monkeypatch: pytest.MonkeyPatch, clean_env: Path,
                                                setup_cfg: bool, mnist: bool) -> None:
    tree = _fake_tree(clean_env / "site-packages", setup_cfg=setup_cfg, mnist=mnist)
    monkeypatch.setattr(root_module, "_SOURCE_TREE", tree)
    assert resolve_data_root() == clean_env / "xdg" / "mondeq"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(clean_env / "home"))
    assert resolve_data_root() == clean_env / "home" / ".cache" / "mondeq"
    assert mnist_root() == clean_env / "home" / ".cache" / "mondeq" / "mnist"


def test_this_checkout_is_recognised(clean_env: Path) -> None:
    assert resolve_data_root() == REPO / "data"
    assert data.DEFAULT_ROOT == REPO / "data" / "mnist" == mnist_root()


def test_load_dataset_reads_the_named_subfolder(monkeypatch: pytest.MonkeyPatch,
                                                clean_env: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(clean_env / "empty"))
    with pytest.raises(MissingDatasetError, match=str(clean_env / "empty" / "svhn")):
        load_dataset("svhn", train=False)
    with pytest.raises(MissingDatasetError, match=str(clean_env / "other" / "mnist")):
        load_dataset("mnist", clean_env / "other", train=False)
    with pytest.raises(ValueError, match="known"):
        load_dataset("imagenet")
    images, labels = load_dataset("mnist", REPO / "data", train=False)
    assert images.shape == (10000, 1, 28, 28) and labels.dtype == torch.int64


def test_regular_install_uses_the_cache_not_site_packages(tmp_path: Path) -> None:
    """`pip install --no-deps --target` a clean copy of the sources (no build isolation: no
    network here), then ask the installed copy for its data root from a folder outside the repo."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("mondeq", "splitting"):
        shutil.copytree(REPO / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(PYTHONPATH=str(target), XDG_CACHE_HOME=str(tmp_path / "cache"))
    program = ("import mondeq.data as d; print(d.__file__); print(d.resolve_data_root()); "
               "print(d.mnist_root())")
    out = subprocess.run([sys.executable, "-c", program], check=True, capture_output=True,
                         text=True, cwd=tmp_path, env=env).stdout.split("\n")
    assert Path(out[0]).is_relative_to(target)                      # the installed copy ran
    assert Path(out[1]) == tmp_path / "cache" / "mondeq"
    assert Path(out[2]) == tmp_path / "cache" / "mondeq" / "mnist"


def test_registry() -> None:
    assert set(DATASETS) == {"mnist", "fashion-mnist", "cifar10", "svhn"}
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.num_classes == 10
        assert len(spec.mean) == len(spec.std) == spec.in_channels
        assert spec.flip == (name in ("cifar10", "fashion-mnist"))  # clothes mirror; digits do not
    assert (DATASETS["mnist"].in_channels, DATASETS["mnist"].image_size) == (1, 28)
    assert (DATASETS["svhn"].in_channels, DATASETS["cifar10"].image_size) == (3, 32)
    with pytest.raises(Exception):
        DATASETS["mnist"].flip = True                                  # frozen


def test_per_channel_normalize_matches_a_loop_and_inverts() -> None:
    x = torch.rand(4, 3, 5, 6, dtype=torch.float64)
    spec = DATASETS["cifar10"]
    y = normalize_dataset(x, "cifar10")
    for c in range(3):
        assert torch.allclose(y[:, c], (x[:, c] - spec.mean[c]) / spec.std[c])
    assert torch.allclose(denormalize(y, spec.mean, spec.std), x)
    assert torch.equal(normalize(x[:, :1], 0.5, 0.25), (x[:, :1] - 0.5) / 0.25)
    m = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    assert torch.equal(normalize_dataset(m, "mnist"), normalize(m))      # scalar default = MNIST
    assert torch.equal(normalize_dataset(m.float(), "mnist"), normalize(m.float()))  # bit for bit
    with pytest.raises(ValueError, match="per-channel"):
        normalize(torch.rand(2, 1, 4, 4), spec.mean, spec.std)
    with pytest.raises(ValueError, match="positive"):
        normalize(x, (0.1, 0.2, 0.3), (1.0, 0.0, 1.0))
