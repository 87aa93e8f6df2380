r"""A joint Lipschitz bound on each margin :math:`x \mapsto h_y - h_j` of a monDEQ classifier.

The product bound (:mod:`.lipschitz`) multiplies :math:`\|c\|_2` (:math:`c = H_y - H_j`) by
:math:`\|U\|_2/m`; the joint bound looks at :math:`c`, :math:`U` and :math:`W` together, through an
incremental quadratic constraint on the nonlinearity.

**Constraint.** :math:`\sigma = \mathrm{prox}_f` of a closed convex f is firmly nonexpansive: for
two inputs x, x' with :math:`v = Wz^\star + UDx + b` (D the input normalisation),
:math:`\Delta z = \sigma(v) - \sigma(v')`, :math:`\Delta v = W\Delta z + UD\Delta x`,

.. math:: \langle \Delta z,\ \Delta v - \Delta z\rangle
          = \Delta z^\top\big((W - I)\Delta z + UD\Delta x\big) \ge 0 .

(For ReLU and every elementwise σ of slope in [0, 1] this is the sum of the per-unit
inequalities :math:`\Delta z_i(\Delta v_i - \Delta z_i) \ge 0`.)

**Bound.** Let :math:`S = (I - W) + (I - W)^\top \succeq 2mI` and :math:`P = UD(UD)^\top`. For
:math:`\lambda > 0` add :math:`2\lambda` times the constraint to :math:`(c^\top\Delta z)^2`:

.. math:: (c^\top\Delta z)^2 \le \Delta z^\top(cc^\top - \lambda S)\Delta z
          + 2\lambda\,\Delta z^\top UD\Delta x \le \gamma^2\|\Delta x\|^2

whenever :math:`\begin{bmatrix} cc^\top - \lambda S & \lambda UD \\ \lambda (UD)^\top &
-\gamma^2 I\end{bmatrix} \preceq 0`. By the Schur complement on the :math:`-\gamma^2 I` block
this holds iff :math:`\lambda S - (\lambda^2/\gamma^2)P - cc^\top \succeq 0`. With
:math:`\tau = \lambda/\gamma^2` and :math:`S - \tau P \succ 0`, a second Schur complement makes it
:math:`c^\top(S - \tau P)^{-1}c \le \lambda`, so the smallest :math:`\gamma` for a given
:math:`\tau` is

.. math:: \gamma^2(\tau) = \frac{c^\top (S - \tau P)^{-1} c}{\tau}
          = \frac1\tau\sum_k \frac{|b_k|^2}{1 - \tau\theta_k},\qquad 0 < \tau < 1/\theta_{\max},

where :math:`\theta_k \ge 0` are the generalised eigenvalues of :math:`(P, S)`
(:math:`S = LL^H`, :math:`L^{-1}PL^{-H} = V\Theta V^H`) and :math:`b = V^H L^{-1} c`. Every
:math:`\tau` in the interval gives a valid constant; each term is convex in :math:`\tau`, so the
minimum is found by bisection on the derivative. Then
:math:`|\Delta(h_y - h_j)| = |c^\top\Delta z| \le \gamma\|\Delta x\|` for the exact equilibria.

**Never worse than the product bound.** At :math:`\tau_0 = m s^2/\|U\|_2^2`
(:math:`\|UD\|_2 \le \|U\|_2/s`, :math:`s = \min_c\sigma_c`), :math:`S - \tau_0 P \succeq 2mI - mI
= mI`, so :math:`\gamma^2(\tau_0) \le \|c\|^2/(m\tau_0) = (\|c\|_2\|U\|_2/(ms))^2`, the product
constant squared. :func:`pairwise_lipschitz` evaluates :math:`\tau_0` too and returns the
minimum of both constants (each sound), so joint ≤ product always.

**Exactness.** S, P and c are split into exact blocks in a unitary basis, read from the layer's
:meth:`~mondeq.parametrisation.MonotoneParametrisation.block_structure`
(:mod:`mondeq.operators.structure`: one block for dense layers, one per frequency for a
convolution, one per alias group for multi-tier layers, a probed dense block for a layer
without its own). Zero padding of a convolution's input is an isometry :math:`E`; the circular
:math:`U` on the padded grid gives :math:`P \succeq UEE^\top U^\top`, which only enlarges the
bound (sound, exact for ``padding=0``). The decompositions run in float64 on blocks with
:math:`\mathrm{cond}(S) \le \|I - W\|_2/m`; :math:`\tau` is kept below
:math:`(1 - 10^{-6})/\theta_{\max}` and :math:`\gamma^2` raised by a relative :math:`10^{-9}`,
margins far above float64 rounding of these decompositions (the library's convention for
‖U‖₂ and ‖I − W‖₂).

Certificates with this bound (:func:`joint_radius`, ``certify(..., bound="joint")``) keep the
solver slack of :mod:`.certification`: the margin at the solver's :math:`\hat z` is reduced by
:math:`\|c\|_2\,\delta` with :math:`\|\hat z - z^\star\| \le \delta`, then divided by
:math:`\gamma_{yj}`. Reference for the quadratic-constraint approach: Revay, Wang & Manchester,
"Lipschitz bounded equilibrium networks" (2020); Fazlyab et al., "Efficient and accurate
estimation of Lipschitz constants for deep neural networks" (NeurIPS 2019).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from splitting import HardTanh, LeakyReLU, ReLU, ScalarProx, SoftThreshold

from ..errors import InvalidSettingError
from ..operators.structure import BlockStructure, float64_structure
from .lipschitz import head_matrix, input_scale, lipschitz_bound, pairwise_margin_norms

BOUNDS = ("product", "joint")
#: τ stays this far (relative) below the pole 1/θ_max; γ² is raised by GAMMA_PAD (rounding).
POLE_MARGIN = 1e-6
GAMMA_PAD = 1e-9
_BISECTIONS = 100
#: θ below this times θ_max count as 0 in the search for τ (not in the value of γ² at τ).
_NEGLIGIBLE_THETA = 1e-12


@dataclass(frozen=True)
class JointSpectrum:
    r"""The model-side factors of the joint bound, independent of the head.

    Attributes:
        whiten: :math:`V^H L^{-1}` per block, ``(blocks, d, d)``.
        theta: generalised eigenvalues :math:`\theta \ge 0` of :math:`(P, S)` per block, ``(blocks, d)``.
        weights: block multiplicities, ``(blocks,)``.
        blocks: the float64 :class:`~mondeq.operators.structure.BlockStructure` they came from.
    """

    whiten: Tensor
    theta: Tensor
    weights: Tensor
    blocks: BlockStructure

    @classmethod
    @torch.no_grad()
    def of(cls, blocks: BlockStructure) -> "JointSpectrum":
        chol = torch.linalg.cholesky(blocks.symmetric_blocks())  # S ⪰ 2mI: never fails for a monotone W
        eye = torch.eye(chol.shape[-1], dtype=chol.dtype).expand_as(chol)
        inv = torch.linalg.solve_triangular(chol, eye, upper=False)
        q = inv @ blocks.input_gram_blocks() @ inv.mH
        theta, vecs = torch.linalg.eigh(0.5 * (q + q.mH))
        return cls(vecs.mH @ inv, theta.clamp(min=0), blocks.weights, blocks)


def model_structure(model) -> BlockStructure:
    """The float64 block structure of a classifier's layer, U scaled by its input normalisation
    (pixel scale), without a graph."""
    return float64_structure(model.layer.linear, input_scale=input_scale(model))


def joint_spectrum(model) -> JointSpectrum:
    """:class:`JointSpectrum` of a classifier's layer (with its normalisation), cached until a
    parameter of the layer changes."""
    linear = model.layer.linear
    norm = getattr(model, "normalization", None)
    key = "joint_spectrum" + ("" if norm is None else repr(norm.std.tolist()))
    return linear.cached(key, lambda: JointSpectrum.of(model_structure(model)))


def joint_gamma_squared(spectrum: JointSpectrum, c: Tensor) -> tuple[Tensor, Tensor]:
    r"""Minimised :math:`\gamma^2(\tau)` and the minimiser for margin vectors ``c`` (module docstring).

    Args:
        spectrum: the layer's :class:`JointSpectrum`.
        c: margin directions :math:`H_y - H_j` as flattened states, ``(pairs, n)``, float64.

    Returns:
        ``(gamma2, tau)``, each ``(pairs,)``: :math:`\gamma^2` padded for rounding, and its τ.
    """
    return minimise_gamma_squared(pair_weights(spectrum, whitened(spectrum, c)), spectrum.theta.reshape(1, -1))


def whitened(spectrum: JointSpectrum, c: Tensor) -> Tensor:
    r""":math:`b = V^H L^{-1}\hat c` of margin vectors ``c`` ``(pairs, n)``, per block: ``(pairs, blocks, d)``."""
    coords = spectrum.blocks.to_blocks(c.to(torch.float64))
    return torch.einsum("gij,pgj->pgi", spectrum.whiten.to(coords.dtype), coords)


def pair_weights(spectrum: JointSpectrum, b: Tensor) -> Tensor:
    r""":math:`w_k = |b_k|^2` times the block multiplicities, flattened: ``(pairs, blocks·d)``."""
    return (b.abs() ** 2 * spectrum.weights.view(1, -1, 1)).reshape(len(b), -1)


def minimise_gamma_squared(w: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    r""":func:`joint_gamma_squared` from the weights ``w`` ``(pairs, k)`` and eigenvalues ``theta``
    ``(1, k)``: bisection on the sign of :math:`d\gamma^2/d\tau` (each term is convex in τ)."""
    pairs = len(w)
    theta_max = float(theta.max())
    hi = (1.0 - POLE_MARGIN) / theta_max if theta_max > 0 else float("inf")
    if not hi < float("inf"):  # P = 0: the margin does not depend on x
        zeros = torch.zeros(pairs, dtype=torch.float64)
        return zeros, torch.full_like(zeros, float("inf"))

    # P has low rank (rank ≤ input channels per block), so most θ are 0 up to rounding: their
    # terms are −w (the error, ≤ 3τθ ≤ 3e-12 relative, only moves which τ is chosen; γ² is then
    # evaluated exactly at it), summed once instead of at every bisection step
    active = theta[0] > _NEGLIGIBLE_THETA * theta_max
    w_act, theta_act = w[:, active], theta[:, active]
    w_rest = w[:, ~active].sum(1)

    def slope_sign(tau: Tensor) -> Tensor:  # sign of dγ²/dτ: Σ w (2τθ − 1)/(1 − τθ)²
        t = tau.view(-1, 1) * theta_act
        return (w_act * (2 * t - 1) / (1 - t) ** 2).sum(1) - w_rest

    lo_t = torch.zeros(pairs, dtype=torch.float64)
    hi_t = torch.full_like(lo_t, hi)
    rising_at_hi = slope_sign(hi_t) > 0
    for step in range(_BISECTIONS):
        mid = 0.5 * (lo_t + hi_t)
        # once every bracket is one float wide nothing moves again: slope(lo) ≤ 0 always, so
        # hi stays (the rest of the 100 steps would leave τ as it is)
        if step % 8 == 7 and bool(((mid == lo_t) | (mid == hi_t)).all()):
            break
        up = slope_sign(mid) > 0
        hi_t = torch.where(up, mid, hi_t)
        lo_t = torch.where(up, lo_t, mid)
    tau = torch.where(rising_at_hi, hi_t, torch.full_like(hi_t, hi))
    tau = torch.where(tau > 0, tau, torch.full_like(tau, hi * 1e-12))
    return gamma_squared_at(w, theta, tau) * (1.0 + GAMMA_PAD), tau


def gamma_squared_at(w: Tensor, theta: Tensor, tau: Tensor) -> Tensor:
    r""":math:`\gamma^2(\tau) = \tau^{-1}\sum_k w_k/(1 - \tau\theta_k)` per row (τ below every pole)."""
    return (w / (1 - tau.view(-1, 1) * theta)).sum(1) / tau


#: Nonlinearities known to act elementwise (each unit its own scalar prox), so that the
#: per-unit constraints, and with them diagonal multipliers, are valid.
ELEMENTWISE = (ReLU, SoftThreshold, ScalarProx, LeakyReLU, HardTanh)
MULTIPLIERS = ("auto", "scalar", "diagonal")
#: ``multipliers="auto"`` optimises diagonal multipliers when pairs·blocks·(d³ + overhead)·steps is
#: below this (≈ 5 s on one CPU thread).
DIAGONAL_COST_LIMIT = 5e9
#: The fixed cost of one block's factorisation and its backward in the search, in units of d³:
#: measured on a CPU thread, a batch of 87 × 87 blocks costs ≈ 1.1 ns·d³ each, one of 4 × 4 complex
#: blocks (a small conv layer's frequencies) ≈ 6 µs each, which d³ alone counts as nothing.
DIAGONAL_BLOCK_OVERHEAD = 5000


def diagonal_gamma_squared(blocks: BlockStructure, coords: Tensor, tau: Tensor, *,
                           steps: int = 150, lr: float = 0.05) -> Tensor:
    r"""Joint constants with one multiplier per unit class, :math:`\Lambda = \mathrm{diag}(\lambda)`.

    For an elementwise σ each unit satisfies :math:`\Delta z_i(\Delta v_i - \Delta z_i) \ge 0`,
    so :math:`2\Delta z^	op\Lambda((W - I)\Delta z + UD\Delta x) \ge 0` for any
    :math:`\Lambda \succeq 0`, and the module docstring's two Schur complements give

    .. math:: \gamma^2(\Lambda) = c^	op R(\Lambda)^{-1} c,\qquad
              R(\Lambda) = \Lambda(I - W) + (I - W)^	op\Lambda - \Lambda P\Lambda \succ 0

    (:math:`\Lambda = 	au I` is the scalar case). Any Λ with :math:`R \succ 0` gives a valid
    constant, so Λ is searched freely (Adam on :math:`\log\lambda`, from the scalar optimum,
    halving the step of a pair whose step leaves the feasible set) and only the value at the
    final Λ needs to be exact: every block's :math:`R` is checked with an eigenvalue bound
    (:math:`\lambda_{\min} \ge 10^{-9}\|R\|`), and the quadratic form is solved in float64.
    Multipliers are constant per channel (per tier and channel), so R keeps the block structure.

    Args:
        blocks: the layer's blocks (``unit`` assigns each coordinate its multiplier).
        coords: the margin vectors' block coordinates, ``(pairs, blocks, d)``.
        tau: the scalar optimum per pair (the start), ``(pairs,)``.

    Returns:
        :math:`\gamma^2` per pair, padded by ``GAMMA_PAD``; ``inf`` where the final Λ fails the check.
    """
    x, p = blocks.identity_minus_w_blocks(), blocks.input_gram_blocks()
    w_blocks, unit = blocks.weights, blocks.unit
    units = int(unit.max()) + 1
    rhs = coords.to(x.dtype).unsqueeze(-1)

    def evaluate(log_lam: Tensor, grad: bool) -> tuple[Tensor, Tensor | None]:
        with torch.enable_grad() if grad else torch.no_grad():
            log_lam = log_lam.detach().requires_grad_(grad)
            lam = log_lam.exp()[:, unit].to(x.dtype)[:, None, None]  # (pairs, 1, 1, d)
            r = lam.mT * x + x.mH * lam - lam.mT * p * lam
            chol, info = torch.linalg.cholesky_ex(r)
            ok = (info == 0).all(dim=1)
            safe = torch.where(ok.view(-1, 1, 1, 1), chol, torch.eye(x.shape[-1], dtype=x.dtype))
            sol = torch.cholesky_solve(rhs, safe)
            value = ((rhs.conj() * sol).real.squeeze(-1).sum(-1) * w_blocks).sum(-1)
            value = torch.where(ok, value, torch.full_like(value, float("inf")))
            if not grad:
                return value, None
            (g,) = torch.autograd.grad(torch.where(ok, value, 1.0).log().sum(), log_lam)
            return value.detach(), g

    cur = (0.99 * tau).log().view(-1, 1).expand(-1, units).clone()
    value, grad = evaluate(cur, True)
    best, best_at = value.clone(), cur.clone()
    step = torch.full_like(value, lr)
    m1, m2 = torch.zeros_like(cur), torch.zeros_like(cur)
    for k in range(1, steps + 1):
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad ** 2
        move = (m1 / (1 - 0.9 ** k)) / ((m2 / (1 - 0.999 ** k)).sqrt() + 1e-12)
        trial = cur - step.view(-1, 1) * move
        new_value, new_grad = evaluate(trial, True)
        ok = torch.isfinite(new_value)
        cur = torch.where(ok.view(-1, 1), trial, cur)
        grad = torch.where(ok.view(-1, 1), new_grad, grad)
        step = torch.where(ok, step, 0.5 * step)
        better = new_value < best
        best = torch.where(better, new_value, best)
        best_at = torch.where(better.view(-1, 1), trial, best_at)
    with torch.no_grad():  # the exact check at the final multipliers
        lam = best_at.exp()[:, unit].to(x.dtype)[:, None, None]
        r = lam.mT * x + x.mH * lam - lam.mT * p * lam
        eig = torch.linalg.eigvalsh(0.5 * (r + r.mH))
        certain = (eig[..., 0] >= 1e-9 * eig.abs().amax(-1)).all(dim=1)
        value, _ = evaluate(best_at, False)
    return torch.where(certain, value * (1.0 + GAMMA_PAD), torch.full_like(value, float("inf")))


def pairwise_lipschitz(model, *, bound: str = "joint", multipliers: str = "auto") -> Tensor:
    r"""Lipschitz constants :math:`\Gamma_{yj}` of every margin :math:`x \mapsto h_y - h_j`, in pixel
    scale, shape (K, K), zero diagonal, float64.

    ``bound="product"``: :math:`\|H_y - H_j\|_2\,\|U\|_2/(m s)` (:mod:`.lipschitz`).
    ``bound="joint"``: the minimum of that and the joint constant (module docstring), so
    never larger; sound for the exact equilibria of any prox nonlinearity.

    Args:
        model: a :class:`~mondeq.models.MonDEQClassifier` with an affine readout and head.
        bound: ``"product"`` or ``"joint"``.
        multipliers: ``"scalar"`` (one λ, any prox), ``"diagonal"`` (one per unit or channel,
            :func:`diagonal_gamma_squared`; elementwise σ only, else scalar) or ``"auto"``
            (diagonal when σ is elementwise and the search is cheap, ``DIAGONAL_COST_LIMIT``).

    Raises:
        InvalidSettingError: an unknown ``bound``, or a layer with no structured path that is too
            large to build densely.
        NonAffineReadoutError: the readout or head is not affine.
    """
    with one_thread():
        return _pairwise_lipschitz(model, bound=bound, multipliers=multipliers)


@contextmanager
def one_thread():
    """Run the certificate's constants on one CPU thread, whatever the process's setting. One
    answer: the diagonal search's path depends on the last bits of its factorisations and of the
    spectrum it starts from, and these depend on the thread count (an 87-unit model's largest
    constant moved 4 % between 1 and 2 threads); a certificate must not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pairwise_lipschitz(model, *, bound: str, multipliers: str) -> Tensor:
    """:func:`pairwise_lipschitz` on the current threads."""
    if bound not in BOUNDS:
        raise InvalidSettingError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if multipliers not in MULTIPLIERS:
        raise InvalidSettingError(f"multipliers must be one of {MULTIPLIERS}, got {multipliers!r}")
    head = head_matrix(model, differentiable=False).to(torch.float64).cpu()
    product = pairwise_margin_norms(head) * lipschitz_bound(model)
    if bound == "product":
        return product
    # one memo per layer version (cleared when a layer parameter changes), checked against the head
    norm = getattr(model, "normalization", None)
    memo = model.layer.linear.cached(f"joint_gamma:{multipliers}:"
                                     + ("" if norm is None else repr(norm.std.tolist())), dict)
    if "head" not in memo or not torch.equal(memo["head"], head):
        memo["gamma"] = torch.minimum(product, joint_constants(model, head, multipliers=multipliers))
        memo["head"] = head.clone()
    return memo["gamma"].clone()


def joint_constants(model, head: Tensor | None = None, *, multipliers: str = "scalar") -> Tensor:
    r"""The joint constants alone (not capped by the product bound), (K, K), pixel scale.

    Each is the smallest of :math:`\gamma(\tau^\star)`, :math:`\gamma(\tau_0)` with
    :math:`\tau_0 = m s^2/\|U\|_2^2` (where the product bound is a feasible point) and, for
    ``multipliers="diagonal"`` (or ``"auto"``, see :func:`pairwise_lipschitz`), the
    diagonal-multiplier constant of :func:`diagonal_gamma_squared`."""
    with torch.no_grad():
        if head is None:
            head = head_matrix(model, differentiable=False).to(torch.float64).cpu()
        spectrum = joint_spectrum(model)
        k = head.shape[0]
        rows, cols = torch.triu_indices(k, k, offset=1)
        c = head[rows] - head[cols]
        w, theta = pair_weights(spectrum, whitened(spectrum, c)), spectrum.theta.reshape(1, -1)
        gamma2, tau = minimise_gamma_squared(w, theta)
        tau0 = 1.0 / (lipschitz_bound(model) ** 2 * model.layer.linear.m)  # m s²/‖U‖² = 1/(L² m)
        if tau0 * float(theta.max()) < 1 - POLE_MARGIN:
            at_tau0 = gamma_squared_at(w, theta, torch.full((len(c),), tau0, dtype=torch.float64))
            gamma2 = torch.minimum(gamma2, at_tau0 * (1.0 + GAMMA_PAD))
        if _use_diagonal(model, spectrum, len(c), multipliers):
            diag = diagonal_gamma_squared(spectrum.blocks, spectrum.blocks.to_blocks(c), tau)
            gamma2 = torch.minimum(gamma2, diag)
        out = torch.zeros(k, k, dtype=torch.float64)
        out[rows, cols] = gamma2.sqrt()
        out[cols, rows] = gamma2.sqrt()
        return out


def _use_diagonal(model, spectrum: JointSpectrum, pairs: int, multipliers: str) -> bool:
    if multipliers == "scalar" or not isinstance(model.layer.nonlinearity, ELEMENTWISE):
        return False
    g, d = spectrum.theta.shape
    return multipliers == "diagonal" or pairs * g * (d ** 3 + DIAGONAL_BLOCK_OVERHEAD) * 150 <= DIAGONAL_COST_LIMIT


def joint_radius(logits: Tensor, labels: Tensor, gamma: Tensor, norms: Tensor,
                 state_error: Tensor | None = None) -> Tensor:
    r"""Per-example certified radius :math:`\min_{j\ne y}(h_y - h_j - \|c_{yj}\|\delta)/\Gamma_{yj}`,
    clamped at 0 (0 for misclassified examples), in the scale of ``gamma``.

    Args:
        logits: (batch, K) at the solver's state.
        labels: (batch,).
        gamma: (K, K) margin constants (:func:`pairwise_lipschitz`).
        norms: (K, K) :math:`\|H_y - H_j\|_2` (:func:`~mondeq.robustness.lipschitz.pairwise_margin_norms`).
        state_error: per-example δ ≥ ‖ẑ − z*‖ (``None``: treat ẑ as exact).
    """
    logits = logits.to(torch.float64)
    gamma = gamma.to(logits.device, torch.float64)
    margin = logits.gather(1, labels[:, None]) - logits
    if state_error is not None:
        slack = norms.to(logits.device, torch.float64)[labels] * state_error.to(torch.float64)[:, None]
        margin = margin - slack
    g = gamma[labels]
    ratio = torch.where(g > 0, margin / torch.where(g > 0, g, torch.ones_like(g)),
                        torch.where(margin > 0, float("inf"), 0.0))
    ratio.scatter_(1, labels[:, None], float("inf"))
    return ratio.min(dim=1).values.clamp(min=0).nan_to_num(nan=0.0)
