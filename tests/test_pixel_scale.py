"""One pixel-scale convention: classifiers own their input normalisation, so certify, pgd and the
programs all take pixels and give radii and ε in pixels; a loaded run certifies exactly what it
reported; certified radii survive PGD; old checkpoints (no normalisation in their weights) load;
bad inputs raise typed errors naming what was wrong."""
import json

import pytest
import torch

import mondeq
from mondeq import build_model, certify, fc_mondeq, load_run, pgd, robust_accuracy, single_conv_mondeq
from mondeq.cli import certify as certify_cli
from mondeq.cli import train as train_cli
from mondeq.data import DATASETS, MNIST_MEAN, MNIST_STD, load_dataset, normalize
from mondeq.errors import InputScaleError, InputShapeError, InvalidSettingError, LabelError
from mondeq.layer import solver_settings
from mondeq.models import InputNormalization
from mondeq.robustness.lipschitz import layer_lipschitz_bound, lipschitz_bound
from tests.fake_datasets import write_fake_cifar10

TINY_RUN = ["--train-limit", "512", "--test-limit", "128", "--epochs", "1", "--epsilons", "0.05", "0.1", "0.3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 1-epoch MNIST FC run of the training command, in process."""
    out = tmp_path_factory.mktemp("run")
    train_cli.main([*TINY_RUN, "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def mnist_test():
    pixels, labels = load_dataset("mnist", train=False)
    return pixels[:128], labels[:128]


def _weights_without_normalisation(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("normalization.")}


# --- the model owns its normalisation ------------------------------------------------------------

def test_normalisation_is_bitwise_the_datasets_and_stays_float64():
    for name, shape in (("mnist", (5, 1, 28, 28)), ("cifar10", (5, 3, 32, 32))):
        spec = DATASETS[name]
        norm = InputNormalization(spec.mean, spec.std).to(torch.float32)
        assert norm.std.dtype == torch.float64 and norm.pixel_scale == min(spec.std)
        pixels = torch.rand(shape, dtype=torch.float32)
        expected = normalize(pixels, spec.mean, spec.std)
        assert torch.equal(norm(pixels), expected)
        assert torch.equal(norm(pixels.reshape(5, -1)), expected.reshape(5, -1))  # flat, channel-major


def test_build_model_gives_every_model_its_datasets_normalisation():
    for name in ("mnist", "cifar10", "svhn"):
        for kind in ("fc", "conv", "multitier"):
            config = {"model": kind, "dataset": name, "hidden": 4, "channels": 2 if kind == "conv" else (2, 2, 2)}
            model = build_model(config)
            assert model.normalization.mean.tolist() == list(DATASETS[name].mean)
            assert model.normalization.std.tolist() == list(DATASETS[name].std)
    assert build_model({"model": "fc", "normalize": False}).normalization is None
    assert fc_mondeq(6, 4, 3).normalization is None  # the constructors' default is the identity
    with pytest.raises(InvalidSettingError, match="both mean and std"):
        fc_mondeq(6, 4, 3, mean=0.5)


def test_lipschitz_bound_of_a_classifier_is_in_pixel_scale():
    model = single_conv_mondeq(3, 8, 4, 10, pool=2, mean=DATASETS["cifar10"].mean, std=DATASETS["cifar10"].std)
    layer = layer_lipschitz_bound(model.layer)
    assert lipschitz_bound(model.layer) == layer  # a bare layer: ‖U‖₂/m
    assert lipschitz_bound(model) == pytest.approx(layer / min(DATASETS["cifar10"].std), rel=1e-15)


# --- radii in pixels -----------------------------------------------------------------------------

def test_pixel_radius_is_the_old_normalised_radius_times_std(mnist_test):
    """MNIST: certify on pixels gives the radius the old convention gave for normalised inputs
    (``certify(bare, normalize(x))``), times std."""
    pixels, labels = mnist_test
    model = fc_mondeq(784, 16, 10, tol=1e-10, max_iter=2_000, mean=MNIST_MEAN, std=MNIST_STD)
    with torch.no_grad():
        model.head.weight.mul_(30.0)
    bare = fc_mondeq(784, 16, 10, tol=1e-10, max_iter=2_000)
    bare.load_state_dict(_weights_without_normalisation(model))
    x = pixels[:40].double()
    y = model(x).argmax(1)
    new, old = certify(model, x, y, bound="product"), certify(bare, normalize(x), y, bound="product")
    torch.testing.assert_close(new.radius, MNIST_STD * old.radius, rtol=1e-12, atol=0)
    assert float(new.radius.min()) > 0
    assert new.lipschitz == pytest.approx(old.lipschitz / MNIST_STD, rel=1e-15)


def test_no_pgd_counterexample_inside_a_certified_pixel_radius(mnist_test):
    pixels, labels = mnist_test
    model = fc_mondeq(784, 16, 10, tol=1e-10, max_iter=2_000, mean=MNIST_MEAN, std=MNIST_STD)
    with torch.no_grad():
        model.head.weight.mul_(30.0)
    x = pixels[:24].double()
    y = model(x).argmax(1)
    cert = certify(model, x, y)
    assert float(cert.radius.min()) > 0
    eps = cert.radius * 0.999
    with solver_settings(model.layer, tol=1e-10, max_iter=2_000):
        result = pgd(model, x, y, eps, steps=30, restarts=2, bounds=None,
                     generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            adversarial = model(result.x_adv).argmax(1)
    assert bool((result.distance <= cert.radius).all())
    assert not bool(result.success.any()) and bool((adversarial == y).all())
    assert float(result.distance.max()) > 0.5 * float(eps.max())  # the attack did move


# --- a trained run: what it reported is what the loaded model certifies --------------------------

def test_loaded_run_certifies_exactly_what_the_run_reported(tiny_run, mnist_test):
    report = json.loads((tiny_run / "results.json").read_text())
    model = load_run(tiny_run)
    assert model.normalization is not None and next(model.parameters()).dtype == torch.float32
    pixels, labels = mnist_test
    epsilons = report["config"]["epsilons"]
    # the per-epoch monitoring: the layer's own solve, scalar multipliers, the model's dtype
    cert = certify(model, pixels, labels, epsilons=epsilons, tol=None, dtype=None,
                   bound=report["certified_bound"], multipliers="scalar")
    assert {str(k): v for k, v in cert.certified.items()} == report["final"]["certified"]
    assert float(cert.correct.double().mean()) == report["final"]["test_accuracy"]
    assert cert.lipschitz == report["final"]["lipschitz"] == lipschitz_bound(model)
    tight = certify(model, pixels, labels, epsilons=epsilons)  # the report's certificate: the defaults
    assert {str(k): v for k, v in tight.certified.items()} == report["certified_tight"]["certified"]
    assert (tight.bound, tight.multipliers, tight.tol) == tuple(report["certified_tight"][k] for k in ("bound", "multipliers", "tol"))


def test_old_checkpoint_without_normalisation_loads_as_the_same_network(tiny_run, tmp_path, mnist_test):
    """A checkpoint written before models held their normalisation (its programs normalised the
    data) loads through load_run, compare's loader and the certify command as the same network."""
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("normalization.")}
    old = tmp_path / "old"
    old.mkdir()
    torch.save(state, old / "checkpoint.pt")
    new_model, old_model = load_run(tiny_run), load_run(old)
    assert old_model.normalization.std.tolist() == [MNIST_STD]
    pixels, _ = mnist_test
    with torch.no_grad():
        assert torch.equal(old_model(pixels[:16]), new_model(pixels[:16]))
    report = certify_cli.main([str(old), "--test-limit", "16", "--attack-limit", "4", "--steps", "2",
                               "--restarts", "1", "--epsilons", "0.1", "--device", "cpu"])
    assert report["counterexamples"] == 0 and len(report["table"]) == 1


def test_certify_command_handles_other_datasets(tmp_path):
    root = tmp_path / "data"
    write_fake_cifar10(root, 64, 16, seed=0)
    out = tmp_path / "run"
    train_cli.main(["--dataset", "cifar10", "--data-root", str(root), "--epochs", "1", "--hidden", "8",
                    "--batch-size", "32", "--epsilons", "0.1", "--out", str(out)])
    report = certify_cli.main([str(out), "--data-root", str(root), "--test-limit", "8", "--attack-limit", "2",
                               "--steps", "2", "--restarts", "1", "--epsilons", "0.1", "--device", "cpu"])
    assert report["config"]["dataset"] == "cifar10" and report["counterexamples"] == 0
    model = load_run(out)
    assert report["lipschitz"] == pytest.approx(lipschitz_bound(model.double()), rel=1e-12)


# --- typed errors --------------------------------------------------------------------------------

@pytest.fixture
def small_model():
    return fc_mondeq(784, 8, 10, mean=MNIST_MEAN, std=MNIST_STD).eval()


@pytest.mark.parametrize("labels, match", [
    (torch.tensor([0, 1, 10, 2]), r"0\.\.9.*from 0 to 10"), (torch.tensor([0, -1, 2, 3]), "from -1"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer"), (torch.tensor([0, 1, 2]), r"shape \(4,\)"),
])
def test_bad_labels_raise_label_error(small_model, labels, match):
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(LabelError, match=match):
        certify(small_model, x, labels)
    with pytest.raises(LabelError, match=match):
        pgd(small_model, x, labels, 0.1, steps=1)
    with pytest.raises(LabelError, match=match):
        robust_accuracy(small_model, x, labels, [0.1], steps=1)


def test_bad_batch_size_and_input_shape_are_named(small_model):
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    with pytest.raises(InvalidSettingError, match="batch_size must be a whole number ≥ 1"):
        certify(small_model, x, y, batch_size=0)
    cifar = torch.rand(4, 3, 32, 32)
    for call in (lambda: certify(small_model, cifar, y), lambda: small_model(cifar),
                 lambda: pgd(small_model, cifar, y, 0.1, steps=1)):
        with pytest.raises(InputShapeError, match=r"\(batch, 784\).*\(4, 3, 32, 32\)"):
            call()


def test_the_old_scale_options_are_refused(small_model):
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    with pytest.raises(InputScaleError, match="owns its input normalisation"):
        certify(small_model, x, y, input_scale=MNIST_STD)
    with pytest.raises(InputScaleError, match="owns its input normalisation"):
        pgd(small_model, x, y, 0.1, mean=MNIST_MEAN, std=MNIST_STD)
    assert issubclass(InputScaleError, mondeq.MonDEQError)
