"""Sound ℓ2 certificates: the equilibrium error bound, soundness against PGD, the solver slack,
input normalisation, and certified training."""
import pytest
import torch

from mondeq import (LipschitzMarginLoss, equilibrium_error_bound, fc_mondeq, lipschitz_bound, pgd,
                    solver_settings)
from mondeq.robustness.attacks import margins
from mondeq.robustness.certification import certify, state_residual
from mondeq.robustness.losses import InputNormEstimate, head_matrix, margin_lipschitz_matrix
from mondeq.models import single_conv_mondeq
from mondeq.training import train_epoch
from splitting import DenseOperator, ReLU, SoftThreshold, peaceman_rachford
from splitting.state import batch_norm

TIGHT = dict(tol=1e-12, max_iter=5_000)
#: the product bound at the layer's own solve (what certify did by default before the one rule)
PRODUCT = dict(bound="product", dtype=None)
LOOSE = dict(tol=None, **PRODUCT)


def blobs(n=300, dim=10, classes=3, spread=0.7, generator=None):
    """Gaussian blobs around random centres: an easy, separable classification problem."""
    g = generator or torch.Generator().manual_seed(1)
    centres = 2.0 * torch.randn(classes, dim, generator=g)
    y = torch.arange(n) % classes
    return centres[y] + spread * torch.randn(n, dim, generator=g), y


def train(model, x, y, *, steps=300, loss_fn=None, lr=1e-2, batch=60):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)

    def data():
        for _ in range(steps):
            idx = torch.randint(len(x), (batch,), generator=g)
            yield x[idx], y[idx]

    train_epoch(model, optimizer, data(), steps=steps, loss_fn=loss_fn, desc="test")
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    x, y = blobs()
    model = fc_mondeq(10, 16, 3, m=0.5, tol=1e-2, max_iter=200)
    with torch.no_grad():  # a strongly coupled W, so that the equilibrium is not one ReLU layer
        model.layer.linear.F.mul_(2.0)
    train(model, x, y, steps=200, loss_fn=LipschitzMarginLoss(model, 1.0, ramp_steps=60))
    torch.set_default_dtype(previous)
    return model, x, y


# --- the equilibrium error bound -------------------------------------------------------------

@pytest.mark.parametrize("prox", [ReLU(), SoftThreshold(0.1)], ids=repr)
@pytest.mark.parametrize("m", [0.05, 0.5, 2.0])
def test_error_bound_holds_for_any_point(prox, m):
    """‖z − z*‖ ≤ c(m, L)·‖z − σ(Wz + b)‖ for arbitrary z, with c ≤ (1 + L)/m."""
    n = 12
    F, G = torch.randn(n, n), torch.randn(n, n)
    weight = (1 - m) * torch.eye(n) - F.T @ F / n + (G.T - G) / n
    op = DenseOperator(weight, m)
    bias = (3 * torch.randn(200, n),)
    z_star = peaceman_rachford(op, prox, bias, alpha=1.0, **TIGHT).z
    scales = torch.logspace(-4, 1, 200)[:, None]
    z = (z_star[0] + scales * torch.randn(200, n),)
    e = batch_norm(tuple(a - b for a, b in zip(z, prox.apply((z[0] @ weight.T + bias[0],)))))
    bound = equilibrium_error_bound(e, m, op.lipschitz())
    error = (z[0] - z_star[0]).norm(dim=1)
    assert bool((error <= bound * (1 + 1e-9)).all())
    assert bool((bound <= (1 + op.lipschitz()) / m * e * (1 + 1e-12)).all())


@pytest.mark.parametrize("m", [0.1, 0.5, 1.0])
def test_error_bound_is_attained(m):
    """For W = (1 − m)I and σ = identity, e = m(z − z*) and the bound is exactly ‖e‖/m."""
    n = 5
    op = DenseOperator((1 - m) * torch.eye(n), m)
    b = torch.randn(3, n)
    z_star, z = b / m, b / m + torch.randn(3, n)
    e = z - (z @ op.weight.T + b)
    bound = equilibrium_error_bound(e.norm(dim=1), m, op.lipschitz())
    torch.testing.assert_close(bound, (z - z_star).norm(dim=1))


def test_state_residual_is_that_of_the_state_the_head_reads(trained):
    model, x, _ = trained
    z, stats = model.layer.forward_with_stats(x)
    # the head reads the solver's state ẑ itself, whose true residual the stopping rule confirmed
    op = model.layer.linear.operator()
    assert torch.equal(z[0].detach(), stats.forward.z[0])
    expected = (z[0] - torch.relu(z[0] @ op.weight.T + model.layer.linear.bias(x)[0])).norm(dim=1)
    torch.testing.assert_close(state_residual(model.layer, x, z), expected)


# --- soundness ---------------------------------------------------------------------------------

def test_no_pgd_counterexample_inside_certified_radii(trained):
    model, x, y = trained
    x, y = x[:60], y[:60]
    cert = certify(model, x, y, tol=1e-10, max_iter=5_000)
    certified = cert.radius > 0
    assert int(certified.sum()) >= 30, "the test needs certified examples"
    idx = certified.nonzero().squeeze(1)
    with solver_settings(model.layer, tol=1e-10, max_iter=5_000):
        inside = pgd(model, x[idx], y[idx], cert.radius[idx] * (1 - 1e-9), steps=40, restarts=5,
                     bounds=None, generator=torch.Generator().manual_seed(0))
        assert not bool(inside.success.any())
        assert bool((inside.distance <= cert.radius[idx] * (1 + 1e-9)).all())
        # the attack is not toothless: well outside the radius it does find examples
        outside = pgd(model, x[idx], y[idx], 6 * cert.radius[idx] + 0.5, steps=40, bounds=None)
    assert float(outside.success.double().mean()) > 0.5
    # the certificates are not vacuous either: at the radius PGD eats most of some margins
    clean = margins(model(x[idx]).detach(), y[idx])
    assert float((inside.margin / clean).min()) < 0.5


def test_logits_never_move_faster_than_the_lipschitz_bound(trained):
    model, x, _ = trained
    x1 = x[torch.randint(len(x), (500,))]
    x2 = torch.cat([x[torch.randint(len(x), (250,))], x1[250:] + 1e-2 * torch.randn(250, 10)])
    with solver_settings(model.layer, **TIGHT), torch.no_grad():
        h1, h2 = model(x1), model(x2)
    head = model.head_matrix()
    bound = torch.linalg.matrix_norm(head, ord=2) * lipschitz_bound(model.layer)
    ratio = (h1 - h2).norm(dim=1) / (x1 - x2).norm(dim=1)
    assert float(ratio.max()) <= float(bound) * (1 + 1e-9)
    k = margin_lipschitz_matrix(model).detach()  # every pairwise margin too
    dm = (h1[:, :, None] - h1[:, None, :]) - (h2[:, :, None] - h2[:, None, :])
    assert bool((dm.abs() <= k * (x1 - x2).norm(dim=1)[:, None, None] * (1 + 1e-9) + 1e-12).all())


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_certificate_is_below_the_exact_one_and_sound_for_every_layer(kind):
    """Slacked radii from a loose solve never exceed the radii of the exact equilibrium."""
    if kind == "dense":
        model, x = fc_mondeq(8, 10, 3, m=0.3, tol=0.2, max_iter=3), torch.randn(64, 8)
    else:
        model = single_conv_mondeq(1, 6, 3, 3, padding=0, pool=2, m=0.3, tol=0.2, max_iter=3)
        x = torch.randn(64, 1, 6, 6)
    with torch.no_grad():
        model.head.weight.mul_(5.0)
    loose = certify(model, x, **LOOSE)
    exact = certify(model, x, **TIGHT, **PRODUCT)
    assert float(exact.state_error.max()) < 1e-8
    assert float(loose.state_error.min()) > 0
    same = loose.prediction == exact.prediction
    assert bool((loose.radius[same] <= exact.radius[same] + 1e-9).all())
    assert bool((loose.radius[~same] == 0).all())
    torch.testing.assert_close(loose.slack, loose.state_error / loose.lipschitz)


def test_slack_is_needed_with_a_loose_solve():
    """With a deliberately loose solve the unslacked certificate claims radii around points where
    the exact network predicts another class; the slacked certificate never does."""
    model = fc_mondeq(6, 12, 4, m=0.1, tol=0.5, max_iter=1)
    with torch.no_grad():
        model.layer.linear.F.mul_(3.0)
        model.layer.linear.U.weight.mul_(3.0)
        model.head.weight.mul_(5.0)
    x = torch.randn(2000, 6)
    loose = certify(model, x, **LOOSE)  # certifies the (loose) prediction
    exact = certify(model, x, **TIGHT, **PRODUCT)
    wrong = loose.prediction != exact.prediction
    # x itself lies in every claimed ball: an unslacked radius > 0 there is a false certificate
    assert int((wrong & (loose.radius_unsound > 0)).sum()) >= 10
    assert bool((loose.radius[wrong] == 0).all())
    # and where the predictions agree, the slacked radius stays below the exact certificate
    assert bool((loose.radius[~wrong] <= exact.radius[~wrong] + 1e-9).all())
    assert bool((loose.radius_unsound[~wrong] > exact.radius[~wrong] + 1e-6).any())


def test_tighter_solve_shrinks_the_slack(trained):
    model, x, y = trained
    loose, tight = certify(model, x, y, **LOOSE), certify(model, x, y, tol=1e-8, **PRODUCT)
    assert float(tight.slack.max()) < 1e-3 * float(loose.slack.mean())
    assert float(tight.radius.mean()) >= float(loose.radius.mean())
    assert model.layer.tol == 1e-2 and model.layer.max_iter == 200  # settings restored
    assert set(certify(model, x, y, epsilons=[0.1, 1.0]).certified) == {0.1, 1.0}


def test_misclassified_examples_get_zero_radius(trained):
    model, x, y = trained
    cert = certify(model, x, (y + 1) % 3, tol=1e-8)
    assert bool((cert.radius[cert.prediction != cert.label] == 0).all())


# --- input scale ---------------------------------------------------------------------------------

def test_pixel_radius_is_normalised_radius_times_std():
    mean, std = 0.13, 0.31
    model = fc_mondeq(10, 8, 3, m=0.5, tol=1e-10, max_iter=2_000, mean=mean, std=std)
    with torch.no_grad():
        model.head.weight.mul_(4.0)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("normalization.")}
    bare = fc_mondeq(10, 8, 3, m=0.5, tol=1e-10, max_iter=2_000)  # fed normalised inputs
    bare.load_state_dict(weights)
    pixels = torch.rand(200, 10)
    y = model(pixels).argmax(1)
    normalised = certify(bare, (pixels - mean) / std, y)
    in_pixels = certify(model, pixels, y)
    torch.testing.assert_close(in_pixels.radius, std * normalised.radius)
    # the same network written on pixels: U' = U/std, b' = b − U·mean/std
    pixel_model = fc_mondeq(10, 8, 3, m=0.5, tol=1e-10, max_iter=2_000)
    pixel_model.load_state_dict(weights)
    with torch.no_grad():
        u = pixel_model.layer.linear.U
        u.bias.sub_(u.weight.sum(1) * mean / std)
        u.weight.div_(std)
    torch.testing.assert_close(certify(pixel_model, pixels, y).radius, in_pixels.radius)
    assert float(in_pixels.radius.max()) > 0


# --- certified training --------------------------------------------------------------------------

def test_margin_constants_are_differentiable_for_every_layer():
    for model in (fc_mondeq(8, 6, 3), single_conv_mondeq(1, 6, 2, 3, padding=0, pool=2)):
        k = margin_lipschitz_matrix(model)
        torch.testing.assert_close(head_matrix(model).detach(), model.head_matrix())
        torch.testing.assert_close(k.detach(), torch.cdist(model.head_matrix(), model.head_matrix())
                                   * lipschitz_bound(model.layer))
        k.sum().backward()
        assert float(model.head.weight.grad.abs().sum()) > 0
        assert float(model.layer.linear.U.weight.grad.abs().sum()) > 0
        assert torch.isfinite(model.head.weight.grad).all()


def test_power_iteration_estimates_the_input_norm_from_below():
    for model in (fc_mondeq(20, 6, 3), single_conv_mondeq(1, 6, 2, 3, padding=1, pool=2)):
        linear = model.layer.linear
        estimate = InputNormEstimate(linear, iterations=300)()
        exact = float(linear.input_norm().detach())
        assert float(estimate.detach()) <= exact * (1 + 1e-9)
        assert float(estimate.detach()) > 0.9 * exact  # padding makes the exact value a bound
        estimate.backward()
        assert float(linear.U.weight.grad.abs().sum()) > 0
    dense = fc_mondeq(20, 6, 3).layer.linear
    torch.testing.assert_close(InputNormEstimate(dense, iterations=300)().detach(), dense.input_norm().detach())


def test_loss_schedule_and_plain_cross_entropy():
    model = fc_mondeq(8, 6, 3)
    loss = LipschitzMarginLoss(model, 2.0, warmup_steps=2, ramp_steps=4)
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    logits = model(x)
    seen = []
    for _ in range(8):
        seen.append(loss.current_eps())
        value = loss(logits, y)
        if seen[-1] == 0:
            torch.testing.assert_close(value, torch.nn.functional.cross_entropy(logits, y))
        else:
            assert float(value.detach()) > float(torch.nn.functional.cross_entropy(logits, y).detach())
    assert seen == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def test_certified_training_enlarges_certified_radii():
    x, y = blobs(spread=1.0)
    plain = train(fc_mondeq(10, 16, 3), x, y, steps=150)
    robust_model = fc_mondeq(10, 16, 3)
    robust = train(robust_model, x, y, steps=150,
                   loss_fn=LipschitzMarginLoss(robust_model, 1.5, ramp_steps=60, power_iterations=2))
    r_plain, r_robust = certify(plain, x, y, tol=1e-8), certify(robust, x, y, tol=1e-8)
    assert float(r_robust.radius.median()) > 1.25 * float(r_plain.radius.median())
    assert r_robust.accuracy_at([1.5])[1.5] > r_plain.accuracy_at([1.5])[1.5] + 0.1
    assert float(r_robust.correct.double().mean()) > 0.8


# --- the command-line programs -----------------------------------------------------------------

def test_certified_training_job_and_certify_script(tmp_path, capsys):
    torch.set_default_dtype(torch.float32)
    from mondeq.cli import certify as certify_job, train as train_job
    report = train_job.main(["--epochs", "1", "--train-limit", "512", "--test-limit", "128",
                             "--batch-size", "64", "--certified-eps", "1.58", "--out", str(tmp_path)])
    assert "1.58" in report["final"]["certified"] and report["config"]["certify_tol"] == 1e-5
    assert report["history"][-1]["train_eps"] > 0
    result = certify_job.main([str(tmp_path), "--test-limit", "64", "--steps", "5", "--restarts", "1",
                               "--epsilons", "0.1", "1.58"])
    assert (tmp_path / "certify.json").is_file() and (tmp_path / "certify.png").is_file()
    assert result["counterexamples"] == 0
    for row in result["table"]:
        assert row["certified"] <= row["pgd_robust"] <= row["clean"]
    assert "PGD counterexamples inside certified radii: 0" in capsys.readouterr().out


def test_a_printed_certificate_is_a_summary_of_its_figures():
    """``print(certify(...))`` gives the images, accuracy, certified accuracy and the kind of
    certificate in one line, not thousands of per-example values."""
    torch.manual_seed(0)
    model = fc_mondeq(10, 8, 3)
    x, y = torch.rand(300, 10), torch.randint(0, 3, (300,))
    cert = certify(model, x, y, epsilons=[0.01])
    text = repr(cert)
    clean = 100 * float(cert.correct.double().mean())
    assert text.startswith(f"Certificate(300 images; {clean:.2f} % predicted as labelled; certified "
                           f"{100 * cert.certified[0.01]:.2f} % at ε=0.01; {cert.describe()}")
    assert "\n" not in text and len(text) < 300
