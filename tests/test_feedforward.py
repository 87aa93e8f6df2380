"""The zoo's plain-CNN reference (``"cnn"``): the single-conv architecture with W = 0 is the
feedforward network relu(Ux + b) → pool → head, trains by the same command, and stays so."""

from __future__ import annotations

import torch

from mondeq.models import MODELS, build_model


def _cnn(seed: int = 0):
    torch.manual_seed(seed)
    return build_model({"model": "cnn", "channels": 6, "dataset": "fashion-mnist", "tol": 1e-10,
                        "max_iter": 100}).double()


def test_the_cnn_is_registered_and_its_w_is_zero() -> None:
    assert "cnn" in MODELS
    model = _cnn()
    z = (torch.randn(3, 6, 30, 30, dtype=torch.float64),)
    assert all(torch.count_nonzero(w) == 0 for w in model.layer.linear.operator().mv(z))
    assert not model.layer.linear.F.requires_grad and not model.layer.linear.G.requires_grad


def test_its_equilibrium_is_the_feedforward_layer() -> None:
    """logits = head(pool(relu(Ux + b))): one layer, computed here without the solver."""
    model = _cnn().eval()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    bias = model.layer.linear.bias(model.layer_input(x))  # U x̂ + b, the layer's input term
    state = tuple(torch.relu(b) for b in (bias if isinstance(bias, tuple) else (bias,)))
    expected = model.logits_from_state(state)
    assert torch.allclose(model(x), expected, atol=1e-8, rtol=0)


def test_training_steps_keep_the_coupling_at_zero() -> None:
    model = _cnn(1).train()
    model.layer.tol = 1e-4
    x, y = torch.rand(2, 1, 28, 28, dtype=torch.float64), torch.arange(2)
    before = model.head.weight.detach().clone()
    for _ in range(2):  # plain gradient steps on every parameter that trains
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
    assert not torch.equal(model.head.weight, before)
    assert model.layer.linear.F.abs().max() == 0 and model.layer.linear.G.abs().max() == 0


def test_the_training_command_counts_only_the_parameters_that_train(tmp_path, capsys) -> None:
    """The CNN is compared with a monDEQ 'of similar size': its count must leave out the frozen
    zero F and G, which a monDEQ of the same width trains."""
    from mondeq.cli import train as train_cli

    report = train_cli.main(["--model", "cnn", "--channels", "4", "--epochs", "1", "--train-limit", "32",
                             "--test-limit", "8", "--batch-size", "32", "--epsilons", "0.1", "--device", "cpu",
                             "--out", str(tmp_path)])
    model = build_model({"model": "cnn", "channels": 4, "dataset": "mnist"})
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = model.layer.linear.F.numel() + model.layer.linear.G.numel()
    assert report["parameters"] == trained == sum(p.numel() for p in model.parameters()) - frozen
    assert f"plain CNN (W = 0), {trained} trained parameters" in capsys.readouterr().out
