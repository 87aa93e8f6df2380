"""Douglas-Rachford, Anderson acceleration, per-sample masking and α tuning."""
import warnings

import pytest
import torch

from mondeq.layer import MonDEQ
from mondeq.models import MonDEQClassifier
from mondeq.training import train_epoch
from mondeq.training.step_size import HALVINGS, AlphaTuner, tune_alpha
from splitting import (SOLVERS, STEP_LIMITS, DenseOperator, InvalidSettingError, ReLU, SoftThreshold,
                       StepSizeWarning, anderson, anderson_fb, douglas_rachford, equilibrium,
                       forward_backward, forward_backward_forward, max_stable_alpha,
                       max_stable_alpha_fbf, peaceman_rachford)
from tests.conftest import dense_weight, make_dense, random_params

NONLINEARITIES = [ReLU(), SoftThreshold(0.05)]
NEW_SOLVERS = ["dr", "anderson-pr", "anderson-fb", "fbf"]
M = 0.5


def problem(scale=1.5, batch=8, n=12, m=M):
    linear = make_dense(n_in=6, n=n, m=m, scale=scale)
    x = torch.randn(batch, 6)
    with torch.no_grad():
        return linear.operator(), linear.bias(x)


def step_size(name, op):
    """FB-based methods need α < 2m/L², FBF α < 1/L; the rest converge for any α."""
    return 0.9 * STEP_LIMITS[name](op) if name in STEP_LIMITS else 0.8


@pytest.mark.parametrize("name", NEW_SOLVERS)
@pytest.mark.parametrize("prox", NONLINEARITIES, ids=repr)
def test_new_solvers_reach_the_peaceman_rachford_fixed_point(name, prox):
    op, bias = problem()
    reference = peaceman_rachford(op, prox, bias, alpha=1.0, tol=1e-13, max_iter=5_000)
    result = SOLVERS[name](op, prox, bias, alpha=step_size(name, op), tol=1e-12, max_iter=20_000)
    assert result.converged
    torch.testing.assert_close(result.z[0], reference.z[0], atol=1e-8, rtol=0)
    assert float(result.true_residual.max()) < 1e-9


@pytest.mark.parametrize("name", ["dr", "anderson-pr"])
def test_methods_without_step_limit_converge_for_large_alpha(name):
    op, bias = problem(scale=3.0)
    alpha = 20 * max_stable_alpha(op)
    result = SOLVERS[name](op, ReLU(), bias, alpha=alpha, tol=1e-10, max_iter=20_000,
                           )
    assert result.converged


def test_anderson_accelerates_its_base_method():
    op, bias = problem(scale=2.0)
    cases = (("pr", peaceman_rachford, 1.0, 1.5), ("pr", peaceman_rachford, 1 / 16, 1.5),
             ("fb", SOLVERS["fb"], 0.9 * max_stable_alpha(op), 4.0))
    for base, plain, alpha, speedup in cases:
        accelerated = anderson(op, ReLU(), bias, base=base, alpha=alpha, tol=1e-8, max_iter=20_000,
                               )
        reference = plain(op, ReLU(), bias, alpha=alpha, tol=1e-8, max_iter=20_000, )
        assert accelerated.converged and reference.converged
        assert accelerated.iterations * speedup < reference.iterations, (base, alpha)


def test_anderson_with_memory_one_is_the_base_method():
    op, bias = problem()
    plain = peaceman_rachford(op, ReLU(), bias, alpha=0.7, tol=1e-9, max_iter=500)
    single = anderson(op, ReLU(), bias, base="pr", alpha=0.7, memory=1, tol=1e-9, max_iter=500)
    assert single.iterations == plain.iterations
    torch.testing.assert_close(single.z[0], plain.z[0], atol=1e-12, rtol=0)


def test_anderson_safeguard_rescues_a_stalling_acceleration():
    """Weak monotonicity (m = 0.05), a soft threshold and a long memory: unsafeguarded Anderson
    on FB wanders (its steps often raise the residual) and stalls far from the solution; the
    safeguard falls back to plain FB steps there and converges."""
    op, bias = problem(scale=1.0, n=20, m=0.05)
    prox = SoftThreshold(0.3)
    settings = dict(base="fb", alpha=0.9 * max_stable_alpha(op), memory=20, tol=1e-9, max_iter=1_500,
                    )
    plain = anderson(op, prox, bias, safeguard=False, **settings)
    safe = anderson(op, prox, bias, safeguard=True, **settings)
    assert not plain.converged and not float(plain.true_residual.max()) <= 1e-3  # stalls or NaN
    assert safe.converged and safe.iterations < 500
    reference = peaceman_rachford(op, prox, bias, alpha=1.0, tol=1e-12, max_iter=50_000)
    torch.testing.assert_close(safe.z[0], reference.z[0], atol=1e-7, rtol=0)


def test_anderson_survives_a_singular_least_squares_problem():
    """No regularisation: collinear residuals make the Gram system singular; no crash, no NaN."""
    op, bias = problem(n=20, m=0.05, scale=1.0)
    result = anderson(op, ReLU(), bias, base="fb", alpha=0.5 * max_stable_alpha(op), memory=10,
                      regularisation=0.0, tol=1e-9, max_iter=3_000, )
    assert result.converged and bool(torch.isfinite(result.z[0]).all())


@pytest.mark.parametrize("bad, match", [(dict(memory=0), "memory"), (dict(mixing=0.0), "mixing"),
                                        (dict(regularisation=-1.0), "regularisation"),
                                        (dict(base="gd"), "base"), (dict(check_step="maybe"), "check_step")])
def test_anderson_rejects_bad_settings(bad, match):
    op, bias = problem()
    with pytest.raises(InvalidSettingError, match=match):
        anderson(op, ReLU(), bias, **bad)


def test_anderson_fb_checks_the_step_like_fb():
    op, bias = problem()
    with pytest.raises(InvalidSettingError, match="2m/L"):
        anderson_fb(op, ReLU(), bias, alpha=10.0, check_step="raise")


# ---------------------------------------------------------------------------- implicit gradients


def equilibrium_fn(prox, name, alpha=None):
    def fn(x, U, b, F, G):
        op = DenseOperator(dense_weight(F, G, M), M)
        a = step_size(name, DenseOperator(dense_weight(F, G, M).detach(), M)) if alpha is None else alpha
        z, _ = equilibrium(op, prox, (x @ U.T + b,), solver=SOLVERS[name], alpha=a, tol=1e-13,
                           max_iter=20_000)
        return z[0]
    return fn


@pytest.mark.parametrize("name", NEW_SOLVERS)
@pytest.mark.parametrize("prox", NONLINEARITIES, ids=repr)
def test_gradcheck_all_inputs_and_parameters(name, prox):
    assert torch.autograd.gradcheck(equilibrium_fn(prox, name), random_params(), eps=1e-6, atol=1e-6,
                                    rtol=1e-5)


@pytest.mark.parametrize("name", NEW_SOLVERS)
def test_implicit_gradients_match_peaceman_rachford(name):
    params = random_params(n_in=6, n=8, batch=4)
    weights = torch.randn(4, 8)
    prox = SoftThreshold(0.05)
    grads = torch.autograd.grad((equilibrium_fn(prox, name)(*params) * weights).sum(), params)
    reference = torch.autograd.grad((equilibrium_fn(prox, "pr")(*params) * weights).sum(), params)
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", ["dr", "anderson-pr"])
def test_backward_reuses_the_forward_resolvent(name):
    layer = MonDEQ(make_dense(n_in=6, n=10, m=M, scale=1.5), solver=name, alpha=1.0, tol=1e-9,
                   max_iter=500)
    z, stats = layer.forward_with_stats(torch.randn(5, 6))
    z[0].pow(2).sum().backward()
    assert stats.backward.converged
    assert stats.backward.resolvent.transpose() is stats.forward.resolvent


# ------------------------------------------------------------------------- per-sample masking

def mixed_difficulty(bias):
    """Zero injection for the first half of the batch: z* = 0 = z0, solved at the first iteration."""
    half = bias[0].shape[0] // 2
    return (torch.cat([torch.zeros_like(bias[0][:half]), bias[0][half:]]),), half


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_masking_matches_unmasked_solve_and_reports_sample_iterations(name):
    op, bias = problem()
    bias, half = mixed_difficulty(bias)
    prox = SoftThreshold(0.05)
    settings = dict(alpha=step_size(name, op), tol=1e-10, max_iter=20_000)
    masked = SOLVERS[name](op, prox, bias, mask=True, **settings)
    unmasked = SOLVERS[name](op, prox, bias, **settings)
    assert masked.converged and unmasked.converged
    torch.testing.assert_close(masked.z[0], unmasked.z[0], atol=1e-8, rtol=0)
    for result in (masked, unmasked):
        its = result.sample_iterations
        assert its.dtype == torch.int64 and its.shape == (bias[0].shape[0],)
        assert its[:half].tolist() == [1] * half and int(its[half:].min()) > 5
    # unmasked: the solve ends when the last sample settles; masked: a sample counts only the
    # iterations it took part in, and its trace changes only in those
    assert int(unmasked.sample_iterations.max()) == unmasked.iterations
    assert int(masked.sample_iterations.max()) <= masked.iterations
    for i, k in enumerate(masked.sample_iterations.tolist()):
        trace = masked.residuals[:, i]
        changes = 1 + int((trace[1:] != trace[:-1]).sum())  # a frozen sample's trace is flat
        assert changes <= k and float(trace[-1]) <= 1e-10


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_masked_batch_equals_per_sample_solves(name):
    op, bias = problem(batch=4)
    prox = ReLU()
    settings = dict(alpha=step_size(name, op), tol=1e-6, max_iter=20_000, mask=True)
    batch = SOLVERS[name](op, prox, bias, **settings)
    for i in range(4):
        alone = SOLVERS[name](op, prox, (bias[0][i:i + 1],), **settings)
        assert alone.iterations == int(batch.sample_iterations[i])
        torch.testing.assert_close(batch.z[0][i:i + 1], alone.z[0], atol=1e-12, rtol=0)


def test_sample_iterations_reported_without_masking():
    op, bias = problem()
    result = peaceman_rachford(op, ReLU(), bias, alpha=1.0, tol=1e-6, max_iter=500)
    expected = [int((result.residuals[:, i] <= 1e-6).nonzero()[0]) + 1 for i in range(bias[0].shape[0])]
    assert result.sample_iterations.tolist() == expected
    assert max(expected) == result.iterations


def test_unconverged_samples_report_all_iterations():
    op, bias = problem()
    result = peaceman_rachford(op, ReLU(), bias, alpha=1.0, tol=1e-14, max_iter=3)
    assert result.sample_iterations.tolist() == [3] * bias[0].shape[0]


# ---------------------------------------------------------------------------------- α tuning

def test_tune_alpha_returns_a_grid_value_no_worse_than_alpha_one():
    layer = MonDEQ(make_dense(n_in=6, n=20, m=0.2, scale=2.0), solver="pr", alpha=1.0, tol=1e-6,
                   max_iter=2_000)
    x = torch.randn(16, 6)
    search = tune_alpha(layer, x)
    assert search.alpha in HALVINGS
    first = search.trials[0]
    assert first.alpha == 1.0
    assert search.best.cost <= first.cost
    assert layer.alpha == 1.0  # the layer is not modified
    full = tune_alpha(layer, x, exhaustive=True, backward=False)
    assert [t.alpha for t in full.trials] == list(HALVINGS)
    assert full.best.forward_iterations == min(t.forward_iterations for t in full.trials)


def test_tune_alpha_for_fb_moves_into_the_convergent_range():
    layer = MonDEQ(make_dense(n_in=6, n=20, m=0.5, scale=1.5), solver="fb", alpha=1.0, tol=1e-4,
                   max_iter=2_000)
    op = layer.linear.operator()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the search silences its expected warnings
        search = tune_alpha(layer, torch.randn(8, 6), grid=[2.0 ** -k for k in range(12)])
    assert not search.trials[0].converged  # α = 1 is far beyond FB's range: diverges
    assert search.best.converged and search.alpha < 1.0
    assert max_stable_alpha(op) < 1.0


def test_alpha_tuner_hook_sets_layer_alpha_every_n_steps():
    torch.manual_seed(1)
    layer = MonDEQ(make_dense(n_in=6, n=10, m=0.2, scale=2.0), solver="pr", alpha=1.0, tol=1e-4,
                   max_iter=500)
    model = MonDEQClassifier(layer, torch.nn.Linear(10, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(5)]
    tuner = AlphaTuner(every=2)
    train_epoch(model, optimizer, data, steps=5, on_batch=tuner)
    assert [step for step, _ in tuner.log] == [0, 2, 4]
    assert layer.alpha == tuner.log[-1][1].alpha
    with pytest.raises(InvalidSettingError, match="every"):
        AlphaTuner(every=0)


def test_douglas_rachford_is_registered_and_exported():
    assert SOLVERS["dr"] is douglas_rachford
    assert {"fb", "pr", "dr", "anderson-pr", "anderson-fb", "fbf"} <= set(SOLVERS)


# ------------------------------------------------------------ forward-backward-forward (Tseng)

def test_fbf_is_registered_with_its_step_limit_one_over_L():
    op, _ = problem()
    assert SOLVERS["fbf"] is forward_backward_forward
    L = float(torch.linalg.matrix_norm(torch.eye(12) - op.as_matrix(), ord=2))  # independent of op
    assert max_stable_alpha_fbf(op) == pytest.approx(1 / L, rel=1e-12)
    assert STEP_LIMITS["fbf"] is max_stable_alpha_fbf


def test_fbf_converges_inside_one_over_L_where_fb_diverges():
    """Linear problem (σ = identity): at α = 0.9/L some eigenvalue λ of I − W has |1 − αλ| > 1,
    so FB's iteration matrix I − α(I − W) has spectral radius > 1 and FB diverges; FBF's
    guarantee (α < 1/L) still holds and it reaches the solution of the linear system."""
    # I − W = mI + FᵀF + (G − Gᵀ) with a dominant skew part: eigenvalues near m ± is, |s| ≫ m
    weight = dense_weight(0.1 * torch.randn(12, 12), torch.randn(12, 12), 0.2)
    op, bias = DenseOperator(weight, 0.2), (torch.randn(8, 12),)
    identity = SoftThreshold(0.0)
    a = torch.eye(12) - weight
    alpha = 0.9 * max_stable_alpha_fbf(op)
    assert float((1 - alpha * torch.linalg.eigvals(a)).abs().max()) > 1
    with pytest.warns(StepSizeWarning, match="2m/L"):
        fb = forward_backward(op, identity, bias, alpha=alpha, tol=1e-6, max_iter=2_000)
    assert not fb.converged
    fbf = forward_backward_forward(op, identity, bias, alpha=alpha, tol=1e-10, max_iter=20_000)
    assert fbf.converged and fbf.resolvent is None
    exact = torch.linalg.solve(a, bias[0].T).T  # (I − W) z = b
    torch.testing.assert_close(fbf.z[0], exact, atol=1e-8, rtol=0)


def test_fbf_residual_trace_is_the_exact_residual_of_the_returned_state():
    op, bias = problem()
    prox = SoftThreshold(0.05)
    result = forward_backward_forward(op, prox, bias, alpha=0.5 * max_stable_alpha_fbf(op), tol=1e-7,
                                      max_iter=5_000)
    z = result.z[0]
    direct = (z - prox(z @ op.as_matrix().T + bias[0])).norm(dim=1) / z.norm(dim=1)
    assert result.converged and float(direct.max()) <= 1e-7
    torch.testing.assert_close(result.residuals[-1], direct, rtol=1e-10, atol=0)
    torch.testing.assert_close(result.true_residual, direct, rtol=1e-10, atol=0)


def test_fbf_checks_its_step_against_one_over_L():
    op, bias = problem(scale=3.0)
    alpha = 1.5 * max_stable_alpha_fbf(op)
    with pytest.raises(InvalidSettingError, match="1/L"):
        forward_backward_forward(op, ReLU(), bias, alpha=alpha, check_step="raise")
    with pytest.warns(StepSizeWarning, match="1/L"):  # default: checked after a failed solve
        forward_backward_forward(op, ReLU(), bias, alpha=10 * alpha, tol=1e-8, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepSizeWarning)  # inside the range: never warned
        forward_backward_forward(op, ReLU(), bias, alpha=0.5 * alpha, tol=1e-8, max_iter=5,
                                 check_step="warn")


# ------------------------------------------------------------------- the comparison experiment

def test_compare_splitting_reports_divergence_without_crashing(tmp_path):
    """`mondeq compare` (experiments/compare_splitting.py) end to end on a small FC checkpoint:
    FB at α = 1 shows as diverged."""
    from mondeq import fc_mondeq
    from mondeq.cli.compare.command import main as compare_main

    torch.set_default_dtype(torch.float32)  # as a checkpoint of the main job
    model = fc_mondeq(784, 20, 10, m=1.0)
    with torch.no_grad():  # a large skew part: L ≫ m, so FB at α = 1 cannot converge
        model.layer.linear.G.mul_(2.0)
    torch.save({"config": {"model": "fc", "hidden": 20, "m": 1.0}, "model": model.state_dict()},
               tmp_path / "checkpoint.pt")
    runs = compare_main([str(tmp_path / "checkpoint.pt"), "--batch", "8",
                        "--methods", "fb", "pr", "anderson-pr", "--alphas", "1", "0.5",
                        "--max-iter", "100", "--repeats", "1", "--out", str(tmp_path / "out")])
    status = {(r.direction, r.method, r.alpha): r.status for r in runs}
    assert status["forward", "fb", 1.0] == "diverged"
    assert status["forward", "pr", 1.0] == "converged"
    for name in ("comparison.csv", "comparison.md", "residual_vs_iteration.png",
                 "residual_vs_time.png", "iterations_vs_alpha.png"):
        assert (tmp_path / "out" / name).is_file()
    assert "| fb | div |" in (tmp_path / "out" / "comparison.md").read_text()


def test_pr_spectrum_matrix_is_the_linearised_peaceman_rachford_map():
    """(2R − I)(2P − I) is the derivative of PR's map at its fixed point u* = z* + α(Wz* + b − z*)."""
    from splitting.peaceman_rachford import rachford_step

    from mondeq.cli.compare import spectrum
    op, bias = problem(batch=3)
    alpha = 0.6
    z = peaceman_rachford(op, ReLU(), bias, alpha=1.0, tol=1e-14, max_iter=20_000).z[0]
    v = z @ op.weight.T + bias[0]
    u_star = z + alpha * (v - z)
    resolvent = op.resolvent(alpha)

    def pr_map(u):
        return rachford_step(resolvent, ReLU(), (torch.relu(u),), (u,), (alpha * bias[0],))[0][0]

    torch.testing.assert_close(pr_map(u_star), u_star, atol=1e-10, rtol=0)  # the fixed point
    matrices = spectrum.iteration_matrices(op.weight, (v > 0).to(v.dtype), alpha)
    delta = torch.randn_like(u_star)
    eps = 1e-3 * float(u_star.abs().min())  # small enough that no entry of u changes sign
    linearised = (pr_map(u_star + eps * delta) - pr_map(u_star)) / eps
    torch.testing.assert_close(linearised, torch.einsum("bij,bj->bi", matrices, delta), atol=1e-5, rtol=1e-5)


def test_compare_splitting_poses_the_multitier_backward_problem():
    """The multi-tier readout reads the last tier only: the other tiers' gradient is zero, not an
    error, and the backward problem is solvable."""
    from mondeq import build_model
    from mondeq.cli import compare
    model = build_model({"model": "multitier", "channels": [2, 2, 2]}).double()
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    backward = compare.problems(model, x, y)["backward"]
    assert [bool((g == 0).all()) for g in backward.bias] == [True, True, False]
    result = peaceman_rachford(backward.op, backward.prox, backward.bias, alpha=0.5, tol=1e-8, max_iter=2000)
    assert result.converged
