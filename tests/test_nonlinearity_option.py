"""--nonlinearity: one registry from names to proxes; a run's config carries the name, so
load_run / build_model rebuild the same σ, --resume checks it, and runs saved before the key
existed load (and resume) as ReLU. Certificates stay sound for a tanh monDEQ (float64, PGD)."""
import pytest
import torch

from mondeq import build_model, certify, fc_mondeq, load_run, pgd, solver_settings
from mondeq.cli import train
from mondeq.errors import InvalidSettingError
from mondeq.models.nonlinearities import NONLINEARITIES, make_nonlinearity
from mondeq.training import read_checkpoint, save_checkpoint
from splitting import Prox, ReLU, Tanh

TINY = ["--train-limit", "64", "--test-limit", "16", "--batch-size", "32", "--epsilons", "0.1",
        "--hidden", "6", "--epochs", "1"]
SMALL_FC = {"model": "fc", "in_channels": 1, "image_size": 3, "num_classes": 2, "hidden": 4}


@pytest.mark.parametrize("name", list(NONLINEARITIES))
def test_every_registered_name_builds_a_prox_that_the_config_rebuilds(name, tmp_path):
    config = {**SMALL_FC, "nonlinearity": name}
    model = build_model(config)
    assert isinstance(model.layer.nonlinearity, Prox)
    assert repr(model.layer.nonlinearity) == repr(make_nonlinearity(name))
    save_checkpoint(tmp_path / "checkpoint.pt", model=model,
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epoch=1, history=[], config=config)
    loaded = load_run(tmp_path)
    assert repr(loaded.layer.nonlinearity) == repr(model.layer.nonlinearity)
    x = torch.rand(5, 9)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_a_config_without_the_key_is_relu_and_an_unknown_name_is_refused():
    assert isinstance(build_model(SMALL_FC).layer.nonlinearity, ReLU)
    with pytest.raises(InvalidSettingError, match="unknown nonlinearity 'swish'.*'tanh'"):
        build_model({**SMALL_FC, "nonlinearity": "swish"})


def test_cli_refuses_an_unknown_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--nonlinearity", "swish"])
    assert exit_info.value.code == 2 and "--nonlinearity" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tanh_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tanh_run")
    train.main([*TINY, "--nonlinearity", "tanh", "--out", str(out)])
    return out


def test_a_tanh_run_saves_its_nonlinearity_and_loads_with_it(tanh_run):
    assert read_checkpoint(tanh_run / "checkpoint.pt")["config"]["nonlinearity"] == "tanh"
    assert isinstance(load_run(tanh_run).layer.nonlinearity, Tanh)


def test_resume_checks_the_nonlinearity(tanh_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", "--out", str(tanh_run), "--nonlinearity", "relu"])
    assert "--nonlinearity relu (the run has tanh)" in str(exit_info.value.code)
    assert train.main(["--resume", "--out", str(tanh_run), "--nonlinearity", "tanh"]) == {}


def test_a_run_saved_before_the_option_is_relu_on_load_and_on_resume(tanh_run, tmp_path):
    """Strip the key from a checkpoint (as an old run): it loads as ReLU, and --resume with
    --nonlinearity tanh is refused as contradicting the run."""
    state = torch.load(tanh_run / "checkpoint.pt", weights_only=False)
    del state["config"]["nonlinearity"]
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "checkpoint.pt")
    assert isinstance(load_run(tmp_path / "old").layer.nonlinearity, ReLU)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", "--out", str(tmp_path / "old"), "--nonlinearity", "tanh"])
    assert "--nonlinearity tanh (the run has relu)" in str(exit_info.value.code)


def _blobs(n=120, d=10, classes=3):
    g = torch.Generator().manual_seed(0)
    centres = 0.5 + 0.25 * torch.randn(classes, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    return (centres[y] + 0.08 * torch.randn(n, d, generator=g, dtype=torch.float64)).clamp(0, 1), y


def test_no_pgd_counterexample_inside_the_certified_radii_of_a_tanh_model():
    """The ‖U‖₂/m bound and the solver-error slack only use the monotonicity of ∂f, so they hold
    for tanh = prox_f: PGD at each certified radius changes no prediction, and well outside it
    it does."""
    x, y = _blobs()
    model = fc_mondeq(10, 16, 3, m=0.5, nonlinearity=Tanh(), tol=1e-4, max_iter=500)
    with torch.no_grad():
        model.layer.linear.F.mul_(2.0)  # strongly coupled: the equilibrium is no single layer
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = x[:60], y[:60]
    cert = certify(model, x, y, tol=1e-10, max_iter=5_000)
    idx = (cert.radius > 0).nonzero().squeeze(1)
    assert len(idx) >= 30, "the test needs certified examples"
    with solver_settings(model.layer, tol=1e-10, max_iter=5_000):
        inside = pgd(model, x[idx], y[idx], cert.radius[idx] * (1 - 1e-9), steps=40, restarts=5,
                     bounds=None, generator=torch.Generator().manual_seed(0))
        assert not bool(inside.success.any())
        outside = pgd(model, x[idx], y[idx], 6 * cert.radius[idx] + 0.5, steps=40, bounds=None)
    assert float(outside.success.double().mean()) > 0.5

