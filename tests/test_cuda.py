"""Whole training steps on CUDA agree with the CPU: gradients, optimizer steps, certificates, PGD,
the data path, solver iteration counts, mixed precision and the host syncs of the solver loop.

Every test compares the accelerator against an independent CPU float64 computation of the same
model (copied parameters), so a wrong device path cannot pass by agreeing with itself. The tests
skip without CUDA. ``MONDEQ_TEST_DEVICE=cpu`` runs them on the CPU instead (float32 against
float64, same checks; the sync-count test still needs CUDA): a check of the tests themselves on
machines without a GPU.
"""
from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch

import simulated_cuda
from torch.nn import functional as nnf

from mondeq import fc_mondeq, pgd, single_conv_mondeq
from mondeq.robustness.certification import certify
from mondeq.operators.conv import MonotoneConv
from mondeq.data import batches, load_mnist, normalize
from mondeq.operators.dense import MonotoneLinear
from splitting import SOLVERS, STEP_LIMITS, InvalidSettingError, ReLU, peaceman_rachford

_override = os.environ.get("MONDEQ_TEST_DEVICE")
DEVICE = torch.device(_override) if _override else (torch.device("cuda") if torch.cuda.is_available()
                                                      else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no CUDA device (MONDEQ_TEST_DEVICE=cpu runs "
                                                       "these tests on the CPU)")
SIMULATED = simulated_cuda.is_active()  # MONDEQ_SIMULATE_CUDA=1: CPU values, a device that says cuda
needs_cuda = pytest.mark.skipif(DEVICE is None or DEVICE.type != "cuda" or SIMULATED,
                                reason="counts CUDA host syncs (not on the simulated device)")

try:
    from mondeq.models.zoo import multitier_mondeq
except ImportError:  # the multi-tier model is optional here
    multitier_mondeq = None

MODELS = ["dense", "conv"] + (["multitier"] if multitier_mondeq is not None else [])
TOL, REF_TOL, MAX_ITER = 1e-6, 1e-11, 2000
LR = 1e-3


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build(kind: str, solver: str, *, tol: float = TOL, alpha: float = 1.0):
    """A small float64 CPU classifier of ``kind`` and an input batch for it (seeded)."""
    torch.manual_seed(0)
    settings = dict(solver=solver, alpha=alpha, tol=tol, max_iter=MAX_ITER, backward_tol=tol,
                    backward_max_iter=MAX_ITER)
    if kind == "dense":
        model, x = fc_mondeq(12, 10, 4, **settings), torch.randn(6, 12)
    elif kind == "conv":
        model = single_conv_mondeq(1, 6, 3, 4, kernel_size=3, padding=1, pool=2, **settings)
        x = torch.randn(4, 1, 6, 6)
    else:
        model = multitier_mondeq(1, 8, (2, 3), 4, **settings)
        x = torch.randn(3, 1, 8, 8)
    return model.double(), x.double(), torch.arange(len(x)) % 4


def stable_alpha(model, solver: str) -> float:
    """α = 1 for the Rachford methods, half the step limit for the step-limited ones (FB: 2m/L²;
    FBF: 1/L)."""
    if solver in STEP_LIMITS:
        return 0.5 * STEP_LIMITS[solver](model.layer.linear.operator())
    return 1.0


def on(model, device, dtype):
    return copy.deepcopy(model).to(device=device, dtype=dtype)


def training_step(model, x, y):
    """Forward, cross entropy, backward and one Adam step; returns (loss, gradients, params after)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss = nnf.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    return loss.detach(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def cpu64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


# ---------------------------------------------------------------------------- training steps

@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("kind", MODELS)
def test_training_step_on_device_matches_cpu_float64(kind, solver):
    """Gradients of a float32 step on the device equal the CPU float64 ones to float32 accuracy,
    and Adam moves every parameter with a clear gradient sign by the same amount."""
    reference, x, y = build(kind, solver)
    alpha = stable_alpha(reference, solver)
    reference.layer.alpha = alpha
    device_model = on(reference, DEVICE, torch.float32)
    with_tight_tol = copy.deepcopy(reference)
    with_tight_tol.layer.tol = with_tight_tol.layer.backward_tol = REF_TOL
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}

    loss_ref, grads_ref, after_ref = training_step(with_tight_tol, x, y)
    loss_dev, grads_dev, after_dev = training_step(device_model, x.to(DEVICE, torch.float32), y.to(DEVICE))

    torch.testing.assert_close(cpu64(loss_dev), loss_ref, rtol=1e-5, atol=1e-6)
    assert set(grads_dev) == set(grads_ref)
    for name, g_ref in grads_ref.items():
        g_dev = grads_dev[name]
        assert g_dev.device.type == DEVICE.type and g_dev.dtype == torch.float32, name
        scale = float(g_ref.abs().max())
        # measured on the CPU in float32: at most 1e-5·max|g| off (multi-tier FB), 1e-6 typically
        torch.testing.assert_close(cpu64(g_dev), g_ref, rtol=1e-3, atol=5e-5 * scale + 1e-7,
                                   msg=lambda m: f"gradient of {name}: {m}")
        # Adam's first step is lr·g/(|g| + 1e-8): where the sign is clear, both moved alike
        clear = g_ref.abs() > 1e-2 * scale
        moved_ref = (after_ref[name] - before[name])[clear]
        moved_dev = (cpu64(after_dev[name]) - before[name])[clear]
        torch.testing.assert_close(moved_dev, moved_ref, rtol=0, atol=1e-6,
                                   msg=lambda m: f"Adam step of {name}: {m}")
        assert torch.isfinite(after_dev[name]).all()


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_joint_bound_certified_loss_on_device_matches_cpu(kind):
    """The certified-training loss with the joint bound (τ* found on the host, the stationary
    form on the device): the same loss and gradients as the CPU float64 computation, and the
    joint certificate of the result matches too."""
    from mondeq.robustness.certified_losses import make_certified_loss

    reference, x, y = build(kind, "pr")
    reference.layer.tol = reference.layer.backward_tol = REF_TOL
    device_model = on(reference, DEVICE, torch.float64)
    grads = []
    for model, xb, yb in ((reference, x, y), (device_model, x.to(DEVICE), y.to(DEVICE))):
        loss = make_certified_loss("offset-ce", model, 0.3, bound="joint")(model(xb), yb)
        model.zero_grad(set_to_none=True)
        loss.backward()
        grads.append((cpu64(loss), {n: cpu64(p.grad) for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-9, atol=1e-12)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-6, atol=1e-9 * float(g.abs().max()) + 1e-12)
    ref = certify(reference.eval(), x, y, epsilons=[0.05], tol=1e-10, bound="joint", multipliers="scalar")
    got = certify(device_model.eval(), x.to(DEVICE), y.to(DEVICE), epsilons=[0.05], tol=1e-10,
                  bound="joint", multipliers="scalar")
    torch.testing.assert_close(cpu64(got.radius), ref.radius, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------ certification and attacks

@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_certificates_on_device_match_cpu(kind):
    model, x, y = build(kind, "pr")
    model.eval()
    device_model = on(model, DEVICE, torch.float64)
    ref = certify(model, x, y, epsilons=[0.05, 0.2], tol=1e-10)
    got = certify(device_model, x.to(DEVICE), y.to(DEVICE), epsilons=[0.05, 0.2], tol=1e-10)
    assert got.radius.device.type == DEVICE.type
    torch.testing.assert_close(cpu64(got.radius), ref.radius, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(got.prediction.cpu(), ref.prediction)
    assert got.certified == pytest.approx(ref.certified)
    assert got.lipschitz == pytest.approx(ref.lipschitz, rel=1e-9)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_on_device_matches_cpu(norm):
    """The same CPU generator gives the same restarts on every device, so the attacks agree."""
    model, _, y = build("dense", "pr", tol=1e-9)
    model.eval()
    x = torch.rand(6, 12)
    device_model = on(model, DEVICE, torch.float64)
    eps = 0.5 if norm == "l2" else 0.1
    options = dict(norm=norm, steps=4, restarts=2, bounds=(0.0, 1.0))
    ref = pgd(model, x, y, eps, generator=torch.Generator().manual_seed(3), **options)
    got = pgd(device_model, x.to(DEVICE), y.to(DEVICE), eps, generator=torch.Generator().manual_seed(3),
              **options)
    assert got.x_adv.device.type == DEVICE.type
    torch.testing.assert_close(cpu64(got.x_adv), ref.x_adv, rtol=0, atol=1e-7)
    torch.testing.assert_close(cpu64(got.margin), ref.margin, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(got.success.cpu(), ref.success)
    # a generator on the device itself works too, and the result stays in the ball and the box
    own = pgd(device_model, x.to(DEVICE), y.to(DEVICE), eps,
              generator=torch.Generator(device=DEVICE).manual_seed(3), **options)
    assert bool((own.distance <= eps * (1 + 1e-9)).all())
    assert float(own.x_adv.min()) >= 0.0 and float(own.x_adv.max()) <= 1.0


# -------------------------------------------------------------------------------- data path

def test_batches_on_device_pair_every_sample_once():
    images = torch.arange(300, dtype=torch.float64).view(300, 1).expand(300, 5).to(DEVICE)
    labels = torch.arange(300, device=DEVICE)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    seen = []
    for xb, yb in batches(images, labels, 64, shuffle=True, generator=generator):
        assert xb.device.type == DEVICE.type and yb.device.type == DEVICE.type
        torch.testing.assert_close(xb[:, 0].long(), yb)  # pairs stay together
        seen.append(yb.cpu())
    assert torch.equal(torch.sort(torch.cat(seen)).values, torch.arange(300))


def test_mnist_training_epoch_on_device_matches_cpu():
    """MNIST loaded, normalised and moved to the device trains as on the CPU (same batches)."""
    pixels, labels = load_mnist(train=False)
    x, y = normalize(pixels[:96]).reshape(96, -1).double(), labels[:96]
    torch.manual_seed(0)
    reference = fc_mondeq(784, 16, 10, tol=1e-9, max_iter=MAX_ITER, backward_tol=1e-9).double()
    device_model = on(reference, DEVICE, torch.float64)
    results = []
    for model, device in ((reference, torch.device("cpu")), (device_model, DEVICE)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for xb, yb in batches(x.to(device), y.to(device), 32, shuffle=False):
            loss = nnf.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append([cpu64(p) for p in model.parameters()])
    for p_dev, p_ref in zip(results[1], results[0]):
        torch.testing.assert_close(p_dev, p_ref, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------- solver iterations

def operator_problem(kind: str):
    torch.manual_seed(1)
    if kind == "dense":
        linear, x = MonotoneLinear(7, 9, m=0.5), torch.randn(5, 7)
    else:
        linear, x = MonotoneConv(2, 3, (6, 5), m=0.5), torch.randn(4, 2, 6, 5)
    with torch.no_grad():
        linear.F.mul_(1.5)  # a problem that takes a few dozen iterations
        linear.G.mul_(1.5)
    return linear.double(), x.double()


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_iteration_count_on_device_equals_cpu(kind, solver):
    """Same float64 problem, same settings: the device reports the same count and state (the
    lagged stop flag on CUDA must not add iterations to the count)."""
    linear, x = operator_problem(kind)
    device_linear = copy.deepcopy(linear).to(DEVICE)
    alpha = 0.5 * STEP_LIMITS[solver](linear.operator()) if solver in STEP_LIMITS else 1.0
    results = []
    for lin, xin in ((linear, x), (device_linear, x.to(DEVICE))):
        with torch.no_grad():
            results.append(SOLVERS[solver](lin.operator(), ReLU(), lin.bias(xin), alpha=alpha, tol=1e-7,
                                           max_iter=3000))
    ref, got = results
    assert ref.converged and got.converged
    assert got.iterations == ref.iterations
    assert ref.iterations > 3  # a real solve, not a trivial one
    torch.testing.assert_close(cpu64(got.z[0]), ref.z[0], rtol=1e-9, atol=1e-10)


# -------------------------------------------------------------------------- mixed precision

@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_bfloat16_autocast_training_step_solves_in_float32(kind):
    """Under bf16 autocast a whole step runs; the equilibrium comes out float32 and close to the
    float32 solve without autocast (only U x and the head ran in bfloat16)."""
    model, x, y = build(kind, "pr", tol=1e-4)
    model = on(model, DEVICE, torch.float32)
    plain = copy.deepcopy(model)
    x, y = x.to(DEVICE, torch.float32), y.to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        z, stats = model.layer.forward_with_stats(x.reshape(len(x), *model.layer.linear.input_shape))
        logits = model.logits_from_state(z)
        loss = nnf.cross_entropy(logits, y)
    assert all(t.dtype == torch.float32 for t in z)
    assert all(t.dtype == torch.float32 for t in stats.forward.z)
    optimizer.zero_grad()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
    optimizer.step()
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        z_plain = plain.layer(x.reshape(len(x), *plain.layer.linear.input_shape))
    error = (z[0].detach() - z_plain[0]).norm() / z_plain[0].norm()
    assert float(error) < 5e-2  # bf16 keeps 8 bits: U x is accurate to ~1e-2


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_are_refused_clearly(low):
    model, x, _ = build("dense", "pr")
    model = on(model, DEVICE, low)
    with pytest.raises((InvalidSettingError, TypeError), match="float16|bfloat16"):
        model(x.to(DEVICE, low))


# ----------------------------------------------------------------------------- host syncs

def _syncs(fn) -> int:
    """Host syncs ``torch.cuda.set_sync_debug_mode("warn")`` reports while ``fn()`` runs."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@needs_cuda
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_solver_loop_syncs_do_not_grow_with_iterations(kind):
    """A PR solve makes a small constant number of host syncs, the same for 5 and 20 iterations
    (the stop flag is read through a non-blocking copy, one iteration late)."""
    linear, x = operator_problem(kind)
    linear = linear.to(device=DEVICE, dtype=torch.float32)
    with torch.no_grad():
        bias = linear.bias(x.to(DEVICE, torch.float32))
        op = linear.operator()

        def solve(n):
            # tol below float32 round-off: the solve runs all n iterations
            return lambda: peaceman_rachford(op, ReLU(), bias, alpha=1.0, tol=1e-12, max_iter=n)

        solve(3)()  # warm-up: one-off tables, plans and allocations
        few, many = _syncs(solve(5)), _syncs(solve(20))
    assert many == few, f"{few} syncs for 5 iterations, {many} for 20: the loop syncs per iteration"
    assert many <= 3, f"{many} host syncs in one solve"


# ---------------------------------------------------------------- forward-mode derivatives

@pytest.mark.skipif(SIMULATED, reason="forward-mode AD builds tensors in C++ (torch.func wrappers, "
                    "tangent views) that the simulated device cannot see as cuda")
@pytest.mark.parametrize("kind", MODELS)
def test_jvp_on_device_matches_cpu(kind):
    """torch.func.jvp of the logits (the implicit layer's forward-mode rule) agrees with the CPU."""
    model, x, _ = build(kind, "pr", tol=1e-10)
    model.eval()
    device_model = on(model, DEVICE, torch.float64)
    tangent = torch.randn_like(x)
    ref = torch.func.jvp(model, (x,), (tangent,))
    got = torch.func.jvp(device_model, (x.to(DEVICE),), (tangent.to(DEVICE),))
    for g, r in zip(got, ref):
        assert g.device.type == DEVICE.type
        torch.testing.assert_close(cpu64(g), r, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------ data path with augmentation

@pytest.mark.parametrize("resident", [True, False], ids=["on-device", "pinned"])
def test_device_data_with_augmentation_trains(resident):
    """DeviceData serves (image, label) pairs on the device, resident or from pinned memory,
    augmentation runs there with its own device generator, and a training step follows."""
    from mondeq.data import Augmentation
    from mondeq.training import DeviceData

    images = torch.arange(40, dtype=torch.float64).view(40, 1, 1, 1).expand(40, 1, 6, 6).contiguous()
    labels = torch.arange(40) % 4
    data = DeviceData(images, labels, DEVICE, max_fraction=0.5 if resident else 0.0)
    assert data.on_device == resident or DEVICE.type == "cpu"
    augment = Augmentation(True, padding=1, seed=0, device=DEVICE)
    model, _, _ = build("conv", "pr", tol=1e-4)
    model = on(model, DEVICE, torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    for idx, (xb, yb) in zip(order.split(16), data.batches(list(order.split(16)))):
        assert xb.device.type == DEVICE.type and yb.device.type == DEVICE.type
        torch.testing.assert_close(xb[:, 0, 0, 0].long().cpu(), idx)  # pairs stay together
        torch.testing.assert_close(yb.cpu(), idx % 4)
        xa = augment(xb)
        assert xa.device.type == DEVICE.type and xa.shape == xb.shape
        # a crop of a constant image keeps its value or the zero padding
        assert bool(((xa == xb[:, :1, :1, :1]) | (xa == 0)).all())
        loss = nnf.cross_entropy(model(xa), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() and p.device.type == DEVICE.type for p in model.parameters())
    state = augment.state_dict()
    assert state["generator"].device.type == "cpu"
    again = Augmentation(True, padding=1, seed=5, device=DEVICE)
    again.load_state_dict(state)
    x = data.images[:8].to(DEVICE)
    torch.testing.assert_close(again(x), augment(x))


# ------------------------------------------------------------------- checkpoint and resume

def test_checkpoint_resume_with_map_location(tmp_path):
    """A device checkpoint resumes on the device (default and explicit map_location) and on the
    CPU (map_location="cpu"), with equal weights and optimizer moments."""
    from mondeq.training import load_checkpoint, save_checkpoint

    model, x, y = build("dense", "pr")
    model = on(model, DEVICE, torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    training_step_with(model, optimizer, x.to(DEVICE), y.to(DEVICE))
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model=model, optimizer=optimizer, epoch=1, history=[{"loss": 1.0}],
                    config={"seed": 0}, extra={"note": torch.ones(2, device=DEVICE)})
    for target, map_location in ((DEVICE, None), (DEVICE, DEVICE), (torch.device("cpu"), "cpu")):
        fresh, _, _ = build("dense", "pr")
        fresh = on(fresh, target, torch.float64)
        fresh_opt = torch.optim.Adam(fresh.parameters(), lr=LR)
        state = load_checkpoint(path, model=fresh, optimizer=fresh_opt, map_location=map_location)
        assert state["epoch"] == 1 and state["extra"]["note"].device.type == target.type
        for p, q in zip(fresh.parameters(), model.parameters()):
            assert p.device.type == target.type
            torch.testing.assert_close(cpu64(p), cpu64(q), rtol=0, atol=0)
        moments = [v for s in fresh_opt.state.values() for k, v in s.items() if k != "step"]
        assert moments and all(m.device.type == target.type for m in moments)
        # and it trains on from there
        training_step_with(fresh, fresh_opt, x.to(target), y.to(target))


def training_step_with(model, optimizer, x, y):
    loss = nnf.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


# ----------------------------------------------------------------------------- α tuning

@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_alpha_tuner_on_device_matches_cpu(kind):
    """tune_alpha makes the same choice from the same iteration counts on the device, and
    AlphaTuner sets it on the model inside train_epoch."""
    from mondeq.training import AlphaTuner, train_epoch, tune_alpha

    model, x, y = build(kind, "pr", tol=1e-7)
    device_model = on(model, DEVICE, torch.float64)
    shape = (len(x), *model.layer.linear.input_shape)
    ref = tune_alpha(model.layer, x.reshape(shape), generator=torch.Generator().manual_seed(0))
    got = tune_alpha(device_model.layer, x.to(DEVICE).reshape(shape),
                     generator=torch.Generator().manual_seed(0))
    assert got.alpha == ref.alpha
    assert [(t.forward_iterations, t.backward_iterations) for t in got.trials] == \
           [(t.forward_iterations, t.backward_iterations) for t in ref.trials]
    tuner = AlphaTuner(every=1)
    optimizer = torch.optim.SGD(device_model.parameters(), lr=0.01)
    train_epoch(device_model, optimizer, [(x.to(DEVICE), y.to(DEVICE))], steps=1, on_batch=tuner,
                progress=False)
    assert device_model.layer.alpha == tuner.log[-1][1].alpha
