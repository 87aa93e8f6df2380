"""One answer everywhere: the API, the training report and ``mondeq certify`` give the same
certificate (to the example); a certificate weaker than the default says so; an attack's verdict
holds at the truth, so no PGD success ever lies inside a certified radius."""
from __future__ import annotations

import inspect
import json

import pytest
import torch

import mondeq
from mondeq import certify, fc_mondeq, load_run, pgd
from mondeq.cli import certify as certify_cli
from mondeq.cli import train as train_cli
from mondeq.data import load_dataset
from mondeq.robustness.attacks import PGD_RESTARTS, PGD_STEPS
from mondeq.robustness.certification import CERTIFY_TOL

EPSILONS = ["0.05", "0.1", "0.3"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A 1-epoch MNIST FC run (16 hidden units) of the training command, in process."""
    out = tmp_path_factory.mktemp("run")
    train_cli.main(["--train-limit", "128", "--test-limit", "64", "--epochs", "1", "--hidden", "16",
                    "--batch-size", "64", "--epsilons", *EPSILONS, "--out", str(out)])
    return out


def test_api_training_report_and_command_certify_the_same_examples(small_run, capsys):
    report = json.loads((small_run / "results.json").read_text())["certified_tight"]
    x, y = load_dataset("mnist", train=False)
    x, y = x[:64], y[:64]
    epsilons = [float(e) for e in EPSILONS]
    api = certify(load_run(small_run), x, y, epsilons=epsilons)  # the defaults: no option given
    command = certify_cli.main([str(small_run), "--test-limit", "64", "--attack-limit", "4",
                                "--steps", "2", "--epsilons", *EPSILONS])
    assert "mondeq.certify's default" in capsys.readouterr().out
    # the same certificate: bound, multipliers, tolerance and precision
    assert (api.bound, api.multipliers, api.tol, api.dtype) == \
        (report["bound"], report["multipliers"], report["tol"], report["dtype"]) == \
        tuple(command["certificate"][k] for k in ("bound", "multipliers", "tol", "dtype"))
    assert api.bound == "joint" and api.tol == CERTIFY_TOL and api.dtype == "float64"
    assert api.weaker_than_default() == [] and command["certificate"]["weaker_than_default"] == []
    # and the same verdict on every example at every ε
    radius_cmd = torch.tensor(command["radius"], dtype=torch.float64)
    for eps in epsilons:
        assert torch.equal(api.radius > eps, radius_cmd > eps), eps
    assert {str(k): v for k, v in api.certified.items()} == report["certified"]
    assert {r["eps"]: r["certified"] for r in command["table"]} == api.certified


def test_a_weaker_certificate_says_how_it_is_weaker():
    torch.manual_seed(0)
    model = fc_mondeq(6, 8, 3, tol=1e-2).double()
    x = torch.rand(10, 6, dtype=torch.float64)
    strong = certify(model, x)
    weak = certify(model.float(), x.float(), tol=None, dtype=None, bound="product")
    assert strong.weaker_than_default() == [] and strong.describe().startswith("joint bound")
    assert (weak.bound, weak.multipliers, weak.tol, weak.dtype) == ("product", None, 1e-2, "float32")
    said = " ".join(weak.weaker_than_default())
    assert "product bound" in said and "tol 0.01" in said and "float32" in said
    assert bool((weak.radius <= strong.radius.float() + 1e-6).all())


def test_the_command_and_pgd_share_the_steps_restarts_and_the_tolerance():
    parameters = inspect.signature(pgd).parameters
    args = certify_cli.parse_args(["RUN"])
    assert parameters["steps"].default == PGD_STEPS == args.steps
    assert parameters["restarts"].default == PGD_RESTARTS == args.restarts
    assert parameters["tol"].default == CERTIFY_TOL == args.tol
    assert inspect.signature(certify).parameters["tol"].default == CERTIFY_TOL


def _loosely_solved_model(seed: int):
    """A model whose own solve (one PR step at tol 0.5) is far from z*, so that a verdict taken
    at that solve misjudges points near the decision boundary."""
    torch.manual_seed(seed)
    model = fc_mondeq(6, 12, 4, m=0.1, tol=0.5, max_iter=1).double()
    with torch.no_grad():
        model.layer.linear.F.mul_(3.0)
        model.layer.linear.U.weight.mul_(3.0)
        model.head.weight.mul_(5.0)
    return model


@pytest.mark.filterwarnings("ignore::splitting.ConvergenceWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pgd_never_reports_a_success_inside_a_certified_radius(seed):
    model = _loosely_solved_model(seed)
    x = torch.randn(300, 6, dtype=torch.float64)
    cert = certify(model, x)
    y = cert.prediction
    assert bool((cert.radius > 0).all())
    eps = 0.999 * cert.radius
    attack = pgd(model, x, y, eps, steps=10, bounds=None, generator=torch.Generator().manual_seed(seed))
    assert bool((attack.distance <= cert.radius).all())
    assert not bool((attack.success & (cert.radius > eps)).any())  # the README's assertion
    # the verdict at the model's own solve (what pgd used to report) is wrong here: the test bites
    with torch.no_grad():
        at_own_solve = model(attack.x_adv).argmax(1) != y
    assert int(at_own_solve.sum()) > 10


def test_pgd_still_finds_real_counterexamples_outside_the_radius():
    model = _loosely_solved_model(0)
    model.layer.tol, model.layer.max_iter = 1e-8, 500  # an accurate attack
    x = torch.randn(40, 6, dtype=torch.float64)
    cert = certify(model, x)
    attack = pgd(model, x, cert.prediction, 3.0 * cert.radius + 0.5, steps=30, bounds=None,
                 generator=torch.Generator().manual_seed(0))
    assert float(attack.success.double().mean()) > 0.5
    assert bool((attack.margin[attack.success] < 0).all())
    assert mondeq.pgd is pgd
