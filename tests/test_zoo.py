"""The model zoo: every registered model builds from a saved config, and a run loads in one call
to the very model that was trained (same outputs), without touching the global RNG."""
import pytest
import torch

import mondeq
from mondeq.errors import CheckpointError, InvalidSettingError
from mondeq.models import MODELS, build_model
from mondeq.training import save_checkpoint

SMALL = {
    "fc": {"model": "fc", "hidden": 7},
    "conv": {"model": "conv", "channels": [3]},
    "multitier": {"model": "multitier", "channels": [2, 3, 3]},
    "cnn": {"model": "cnn", "channels": [3]},
}


def save_run(tmp_path, config):
    torch.manual_seed(1)
    model = build_model(config)
    with torch.no_grad():  # weights unlike a fresh build from any seed
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.layer.alpha = 0.25
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", model=model, optimizer=optimizer, epoch=1,
                    history=[], config=config)
    return model


def test_every_registered_model_is_covered():
    assert set(SMALL) == set(MODELS)


@pytest.mark.parametrize("kind", sorted(SMALL))
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_registered_model_round_trips_through_a_checkpoint(kind, dataset, tmp_path):
    config = {**SMALL[kind], "dataset": dataset, "m": 0.5, "solver": "pr", "tol": 1e-4,
              "max_iter": 200}
    trained = save_run(tmp_path, config).eval()
    rng_before = torch.get_rng_state()
    torch.set_default_dtype(torch.float32)  # the saved dtype (float64 here) wins over the default
    try:
        loaded = mondeq.load_run(tmp_path / "run")
    finally:
        torch.set_default_dtype(torch.float64)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not loaded.training and loaded.layer.alpha == 0.25 and loaded.layer.tol == 1e-4
    assert loaded.run_config == config
    shape = (3, 1, 28, 28) if dataset == "mnist" else (3, 3, 32, 32)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x), rtol=0, atol=0)
    # the checkpoint file itself works as well as its folder
    with torch.no_grad():
        torch.testing.assert_close(mondeq.load_run(tmp_path / "run" / "checkpoint.pt")(x), trained(x),
                                   rtol=0, atol=0)


def test_build_model_is_the_constructors_with_the_configs_settings():
    torch.manual_seed(0)
    built = build_model({"model": "conv", "dataset": "svhn", "channels": [4], "alpha": 0.5})
    torch.manual_seed(0)
    from mondeq.data import DATASETS

    svhn = DATASETS["svhn"]  # the dataset's input normalisation comes with the model
    direct = mondeq.single_conv_mondeq(3, 32, 4, 10, alpha=0.5, mean=svhn.mean, std=svhn.std)
    assert built.layer.alpha == 0.5
    assert list(built.state_dict()) == list(direct.state_dict())
    for (name, a), (_, b) in zip(built.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), name


def test_build_model_takes_explicit_shapes_for_other_datasets():
    model = build_model({"model": "fc", "in_channels": 2, "image_size": 5, "num_classes": 4, "hidden": 6})
    assert model(torch.randn(2, 2, 5, 5)).shape == (2, 4)


@pytest.mark.parametrize("config, match", [
    ({"model": "resnet"}, "unknown model"),
    ({"dataset": "imagenet"}, "unknown dataset"),
    ({"model": "conv", "channels": [3, 4]}, "one width"),
])
def test_bad_configs_are_refused_by_name(config, match):
    with pytest.raises(InvalidSettingError, match=match):
        build_model(config)


def test_load_run_of_an_empty_folder_or_a_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no checkpoint.pt"):
        mondeq.load_run(tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.txt"):
        mondeq.load_run(tmp_path / "notes.txt")
