"""Activations as proximal operators: exact prox_{αf} for every α, derivatives, and equilibria.

The references are independent of the library's root finder: the optimality condition
y + α f′(y) = v evaluated in 50-digit arithmetic (mpmath) from the closed-form σ⁻¹, a
high-precision bisection for saturated points, torch's own activations at α = 1, central finite
differences, and residuals computed from the dense matrix.
"""
import math
import warnings

import mpmath
import pytest
import torch

from mondeq import MonDEQ, MonotoneLinear
from splitting import (SOLVERS, STEP_LIMITS, HardTanh, InvalidSettingError, LeakyReLU, Sigmoid,
                       Softplus, StepSizeWarning, Tanh, peaceman_rachford)
from tests.conftest import make_dense

mpmath.mp.dps = 50
ALPHAS = (1 / 64, 0.3, 1.0, 2.5, 50.0)
V = torch.cat([torch.linspace(-30, 30, 61, dtype=torch.float64), torch.linspace(-3, 3, 25, dtype=torch.float64),
               torch.tensor([-1e-9, 1e-9, 0.0, 0.123, -2.71828], dtype=torch.float64)])

# the smooth ones: (prox, σ in mpmath, σ⁻¹ in mpmath)
SMOOTH = {
    "tanh": (Tanh(), mpmath.tanh, mpmath.atanh),
    "sigmoid": (Sigmoid(), lambda u: 1 / (1 + mpmath.exp(-u)), lambda y: mpmath.log(y / (1 - y))),
    "sigmoid-gain-4": (Sigmoid(4.0), lambda u: 1 / (1 + mpmath.exp(-4 * u)),
                       lambda y: mpmath.log(y / (1 - y)) / 4),
    "softplus": (Softplus(), lambda u: mpmath.log1p(mpmath.exp(u)), lambda y: mpmath.log(mpmath.expm1(y))),
    "softplus-beta-3": (Softplus(3.0), lambda u: mpmath.log1p(mpmath.exp(3 * u)) / 3,
                        lambda y: mpmath.log(mpmath.expm1(3 * y)) / 3),
}
ALL = [Tanh(), Sigmoid(), Sigmoid(4.0), Softplus(), LeakyReLU(0.1), HardTanh()]


def mp_root(sigma, alpha, v):
    """y* = σ(u*) with αu* + (1 − α)σ(u*) = v, by 400 bisection steps in 50 digits (the slope of
    that map is ≥ min(1, α), so u* lies within |h(v)|/min(1, α) of v)."""
    alpha, v = mpmath.mpf(alpha), mpmath.mpf(v)

    def h(u):
        return alpha * u + (1 - alpha) * sigma(u) - v

    radius = abs(h(v)) / min(1, alpha) + 1
    lo, hi = v - radius, v + radius
    for _ in range(400):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if h(mid) < 0 else (lo, mid)
    return sigma((lo + hi) / 2)


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_prox_solves_its_optimality_condition_for_every_alpha(name):
    """y = prox_{αf}(v) ⇔ y + α f′(y) = v ⇔ (1 − α)y + α σ⁻¹(y) = v, checked in 50 digits from
    the float64 y: to 1e-12 (relative to 1 + |v|) wherever σ⁻¹ is well conditioned at y; where σ
    saturates (σ⁻¹ has slope > 1e3 there, so a one-ulp change of y moves it by more than that),
    y matches a 50-digit bisection root to 1e-12 relative (everywhere, in fact)."""
    prox, sigma, inverse = SMOOTH[name]
    checked = 0
    for alpha in ALPHAS:
        y = prox.prox(V, alpha)
        assert y.dtype == torch.float64 and bool(torch.isfinite(y).all())
        for vi, yi in zip(V.tolist(), y.tolist()):
            star = mp_root(sigma, alpha, vi)
            try:
                u = inverse(mpmath.mpf(yi))
                slope = 1 / mpmath.diff(sigma, u) if mpmath.isfinite(u) else mpmath.inf  # (σ⁻¹)′(y)
            except (ValueError, ZeroDivisionError):  # y on the boundary of the domain of f
                u, slope = None, mpmath.inf
            if u is not None and mpmath.isfinite(u) and slope <= 1e3:
                residual = (1 - alpha) * mpmath.mpf(yi) + alpha * u - vi
                assert abs(residual) <= 1e-12 * (1 + abs(vi)), (alpha, vi, float(residual))
                checked += 1
            # relative to y*, and to the ulp of y*: a tail value such as e^u, u ≈ −100, is as
            # accurate as u (|u|·eps relative), everything else to a few ulps
            bound = 1e-12 * abs(star) + 2 * math.ulp(max(abs(float(star)), 1e-300)) + 1e-100  # bisection's own
            assert abs(mpmath.mpf(yi) - star) <= bound, (alpha, vi, yi, float(star))
    assert checked > len(ALPHAS) * len(V) // 4  # the condition itself was checked, not skipped


def test_piecewise_linear_proxes_meet_their_optimality_conditions():
    """Leaky ReLU: y + α(1/s − 1)min(y, 0) = v exactly; hard tanh: v − y lies in α times the
    normal cone of [a, b] at y (zero inside, ≥ 0 at b, ≤ 0 at a)."""
    v = 10 * torch.randn(2000)
    for alpha in ALPHAS:
        for s in (0.0, 0.01, 0.3, 1.0):
            y = LeakyReLU(s).prox(v, alpha)
            if s == 0:
                torch.testing.assert_close(y, torch.relu(v), rtol=0, atol=0)
                continue
            torch.testing.assert_close(y + alpha * (1 / s - 1) * torch.clamp(y, max=0), v, rtol=1e-15, atol=1e-14)
        y = HardTanh(-0.5, 2.0).prox(v, alpha)
        inside = (y > -0.5) & (y < 2.0)
        assert bool((y[inside] == v[inside]).all())
        assert bool((v[y == 2.0] >= 2.0).all()) and bool((v[y == -0.5] <= -0.5).all())
        assert bool(((y >= -0.5) & (y <= 2.0)).all())


def test_prox_at_alpha_one_is_the_activation():
    v = torch.linspace(-40, 40, 4001)
    f = torch.nn.functional
    cases = [(Tanh(), torch.tanh(v)), (Sigmoid(), torch.sigmoid(v)), (Sigmoid(4.0), torch.sigmoid(4 * v)),
             (Softplus(), f.softplus(v, threshold=1000.0)), (Softplus(3.0), f.softplus(v, beta=3.0, threshold=1000.0)),
             (LeakyReLU(0.2), f.leaky_relu(v, 0.2)), (HardTanh(), f.hardtanh(v))]
    for prox, expected in cases:
        torch.testing.assert_close(prox.prox(v, 1.0), expected, rtol=1e-15, atol=1e-15, msg=repr(prox))
        torch.testing.assert_close(prox(v), expected, rtol=1e-15, atol=1e-15, msg=repr(prox))


@pytest.mark.parametrize("prox", ALL, ids=repr)
def test_derivative_matches_finite_differences(prox):
    """derivative(v, α) = d prox_{αf}(v)/dv by central differences (away from the kinks), and at
    α = 1 it is σ′(v), what the implicit backward pass uses."""
    v = torch.linspace(-6, 6, 97) + 0.0123  # no point on a kink (0, ±1)
    h = 1e-6
    for alpha in ALPHAS:
        numeric = (prox.prox(v + h, alpha) - prox.prox(v - h, alpha)) / (2 * h)
        analytic = prox.derivative(v, alpha)
        torch.testing.assert_close(analytic, numeric, rtol=1e-7, atol=1e-8, msg=f"{prox!r} alpha={alpha}")
        assert bool(((analytic >= 0) & (analytic <= 1)).all())
    grad = torch.autograd.functional.jacobian(lambda t: prox.prox(t, 1.0), v).diagonal()
    torch.testing.assert_close(prox.derivative(v), grad, rtol=1e-12, atol=1e-14)


def test_prox_with_autograd_carries_the_exact_first_derivative():
    v = torch.linspace(-5, 5, 41, requires_grad=True)
    for prox in (Tanh(), Sigmoid(), Softplus()):
        y = prox.prox(v, 0.3)
        (grad,) = torch.autograd.grad(y.sum(), v)
        torch.testing.assert_close(grad, prox.derivative(v.detach(), 0.3), rtol=1e-14, atol=0)


def test_non_finite_inputs_map_to_the_limits():
    v = torch.tensor([float("inf"), -float("inf"), float("nan"), 1.0])
    for prox, top, bottom in ((Tanh(), 1.0, -1.0), (Sigmoid(), 1.0, 0.0), (Softplus(), float("inf"), 0.0)):
        y = prox.prox(v, 0.3)
        assert y[0] == top and y[1] == bottom and bool(torch.isnan(y[2])) and bool(torch.isfinite(y[3]))


@pytest.mark.parametrize("bad", [lambda: Sigmoid(5.0), lambda: Sigmoid(0.0), lambda: Softplus(-1.0),
                                 lambda: LeakyReLU(1.5), lambda: LeakyReLU(-0.1),
                                 lambda: HardTanh(1.0, -1.0)])
def test_non_proximal_settings_are_refused(bad):
    with pytest.raises(InvalidSettingError):
        bad()


def step_size(name, op):
    return 0.9 * STEP_LIMITS[name](op) if name in STEP_LIMITS else 0.8


@pytest.mark.parametrize("prox", ALL, ids=repr)
def test_every_method_finds_the_same_equilibrium(prox):
    """For each nonlinearity, every method of SOLVERS (at α ≠ 1, so prox_{αf} ≠ σ matters)
    returns the state whose residual ‖z − σ(Wz + b)‖/‖z‖, computed from the dense matrix and
    torch's σ, is ≤ tol, and they all agree."""
    linear = make_dense(n_in=6, n=8, m=0.5, scale=1.5)
    with torch.no_grad():
        op, bias = linear.operator(), linear.bias(torch.randn(5, 6))
    weight = op.as_matrix()
    reference = peaceman_rachford(op, prox, bias, alpha=1.0, tol=1e-13, max_iter=5_000).z[0]
    for name, solver in SOLVERS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error", StepSizeWarning)
            result = solver(op, prox, bias, alpha=step_size(name, op), tol=1e-11, max_iter=20_000)
        assert result.converged, name
        z = result.z[0]
        direct = (z - prox.prox(z @ weight.T + bias[0], 1.0)).norm(dim=1) / z.norm(dim=1)
        assert float(direct.max()) <= 1e-11, (name, float(direct.max()))
        torch.testing.assert_close(z, reference, atol=1e-9, rtol=0, msg=name)


@pytest.mark.parametrize("prox, solver", [(Tanh(), "pr"), (Tanh(), "fbf"), (Sigmoid(4.0), "pr"),
                                          (Softplus(), "dr")], ids=repr)
def test_layer_gradients_match_finite_differences(prox, solver):
    """Implicit gradients of a monDEQ with a smooth nonlinearity, for the input and every
    parameter, against central differences of the forward solve (float64, tight tolerances)."""
    torch.manual_seed(1)
    linear = MonotoneLinear(4, 6, m=0.5, dtype=torch.float64)
    alpha = 0.7 if solver != "fbf" else 0.5 / linear.operator().lipschitz()
    layer = MonDEQ(linear, prox, solver=solver, alpha=alpha, tol=1e-12, max_iter=20_000)
    x = torch.randn(3, 4, requires_grad=True)
    weights = torch.randn(3, 6)

    def loss():
        return (layer(x)[0] * weights).sum()

    params = [x, *layer.parameters()]
    grads = torch.autograd.grad(loss(), params)
    h = 1e-6
    with torch.no_grad():
        for p, g in zip(params, grads):
            direction = torch.randn_like(p)
            p.add_(h * direction)
            up = loss()
            p.sub_(2 * h * direction)
            down = loss()
            p.add_(h * direction)
            numeric = (up - down) / (2 * h)
            torch.testing.assert_close((g * direction).sum(), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("activation", [torch.nn.Tanh(), torch.nn.Sigmoid(), torch.nn.LeakyReLU(0.2),
                                        torch.nn.Softplus(2.0), torch.nn.Hardtanh(-0.5, 2.0),
                                        torch.nn.Softshrink(0.3), torch.nn.ReLU()])
def test_a_torch_activation_is_refused_with_the_prox_that_computes_it(activation):
    """A user who passes ``nn.Tanh()`` is told to pass ``splitting.Tanh()``, and the code named in
    the message builds a prox whose σ = prox at α = 1 is that very activation."""
    import splitting

    with pytest.raises(TypeError) as caught:
        MonDEQ(MonotoneLinear(5, 4), activation)
    message = str(caught.value)
    suggestion = message.split("use ")[1].split(" instead")[0]
    assert suggestion.startswith("splitting.")
    prox = eval(suggestion, {"splitting": splitting})
    v = torch.linspace(-4, 4, 101, dtype=torch.float64)
    torch.testing.assert_close(prox.apply((v,), 1.0)[0], activation(v), rtol=0, atol=1e-12)


def test_an_activation_without_a_prox_is_refused_with_how_to_add_one():
    with pytest.raises(TypeError, match="subclass splitting.Prox"):
        MonDEQ(MonotoneLinear(5, 4), torch.nn.GELU())
