r"""Anderson acceleration of the forward-backward and Peaceman-Rachford fixed-point maps.

Both splitting methods iterate a map :math:`x_{k+1} = T(x_k)` (FB on :math:`z`, PR on its auxiliary
:math:`u`, with :math:`z = \mathrm{prox}_{\alpha f}(u)`). Anderson acceleration (type II) keeps the
last ``memory`` pairs :math:`(x_i, g_i = T(x_i) - x_i)` and steps to

.. math::
    x_{k+1} = \sum_i \gamma_i (x_i + \beta g_i),\qquad
    \gamma = \arg\min_{\mathbf 1^\top\gamma = 1} \|G\gamma\|^2 + \lambda \sum_i \gamma_i^2 \|g_i\|^2
    = \frac{H^{-1}\mathbf 1}{\mathbf 1^\top H^{-1}\mathbf 1},\quad
    H = G^\top G + \lambda\,\mathrm{diag}(G^\top G),

per sample (Anderson 1965; Walker & Ni 2011). The Tikhonov term is relative to each column's own
size: the memory holds residuals that differ by orders of magnitude, and a ridge scaled by the
largest would swamp the newest ones and stall the acceleration.

Anderson steps have no convergence guarantee on these nonsmooth maps, so a safeguard checks each
accelerated point y: if :math:`\|T(y) - y\|` exceeds the residual of the last accepted point, the
sample takes the plain step :math:`T(x_k)` next iteration instead and its memory restarts (in the
spirit of Zhang, O'Donoghue & Boyd 2020). For a nonexpansive map (PR for any α, FB for
α < 2m/L²) plain steps never increase that residual, so it is non-increasing along accepted
points, and where acceleration does not help the method falls back to the base method's steps.

Every iteration applies :math:`T` exactly once (a rejected point costs one wasted application), so
iteration counts compare directly with the base method's. The per-iteration extra is a rank-one
Gram update, a ``memory``-sized solve and two small batched products.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from .errors import InvalidSettingError
from .forward_backward import ALPHA_CHECKS, check_step_size
from .loop import check_settings, initial_state, iterate, relative_residual
from .operator import LinearOperator, Resolvent, check_alpha
from .peaceman_rachford import bias_start, rachford_step
from .prox import Prox
from .result import SolverResult
from .state import State, tmap

BASES = ("fb", "pr")


def anderson(
    op: LinearOperator,
    prox: Prox,
    bias: State,
    *,
    alpha: float = 1.0,
    tol: float = 1e-3,
    max_iter: int = 100,
    z0: State | None = None,
    resolvent: Resolvent | None = None,
    base: str = "pr",
    memory: int = 5,
    regularisation: float = 1e-8,
    mixing: float = 1.0,
    safeguard: bool = True,
    check_step: str = "on_failure",
    mask: bool = False,
) -> SolverResult:
    """Solve for the equilibrium by Anderson-accelerated FB or PR.

    Args:
        op: the operator W.
        prox: the nonlinearity σ = prox_f.
        bias: Ux + b as a state, batch first.
        alpha: the base method's step size (PR: any α > 0; FB: 0 < α < 2m/L²).
        tol: converged means every sample's true relative residual ‖z − σ(Wz + b)‖/‖z‖ ≤ tol.
        max_iter: iteration cap (one application of the base map per iteration).
        z0: optional warm start.
        resolvent: PR only: a factorisation of ``op`` for this α to reuse.
        base: ``"pr"`` (Peaceman-Rachford, the default) or ``"fb"`` (forward-backward).
        memory: number of past pairs kept, ≥ 1 (1 = the plain base method).
        regularisation: Tikhonov weight λ ≥ 0, relative to each stored residual's squared norm.
        mixing: β in (0, 1]; 1 steps to the extrapolated images, smaller values damp.
        safeguard: reject accelerated points whose residual exceeds the current one.
        check_step: FB only, as in :func:`~splitting.forward_backward.forward_backward`.
        mask: freeze each sample once it has converged (see :func:`splitting.loop.iterate`).

    Returns:
        :class:`~splitting.result.SolverResult` (carrying PR's resolvent for the backward pass).
    """
    start = time.perf_counter()
    alpha = check_alpha(alpha)
    check_settings(op, bias, tol=tol, max_iter=max_iter, z0=z0)
    if base not in BASES:
        raise InvalidSettingError(f"base must be one of {BASES}, got {base!r}")
    if int(memory) != memory or memory < 1:
        raise InvalidSettingError(f"memory must be a positive integer, got {memory}")
    if not regularisation >= 0:
        raise InvalidSettingError(f"regularisation must be >= 0, got {regularisation}")
    if not 0 < mixing <= 1:
        raise InvalidSettingError(f"mixing must be in (0, 1], got {mixing}")
    if check_step not in ALPHA_CHECKS:
        raise InvalidSettingError(f"check_step must be one of {ALPHA_CHECKS}, got {check_step!r}")
    # PR's map acts on u: without z0 it starts where plain PR does (its bias_start pair's u)
    z = bias_start(prox, bias, alpha)[1] if z0 is None and base == "pr" else initial_state(op, bias, z0)
    like = z
    if base == "fb":
        check_step_size(op, alpha, check_step, method="Anderson-accelerated forward-backward")
        fmap = _FlatMap(_fb_map(op, prox, bias, alpha), like)
    else:
        if resolvent is None:
            resolvent = op.resolvent(alpha)
        fmap = _FlatMap(_pr_map(prox, bias, alpha, resolvent), like)
    x0 = _flatten(z)
    memory = int(memory)
    batch, n = x0.shape
    hist_step = x0.new_zeros(batch, memory, n)  # x_i + β g_i: the candidate mixes these
    hist_g = x0.new_zeros(batch, memory, n)
    gram = x0.new_zeros(batch, memory, memory)
    valid = torch.zeros(batch, memory, dtype=torch.bool, device=x0.device)
    eye = torch.eye(memory, dtype=x0.dtype, device=x0.device)
    tiny = torch.finfo(x0.dtype).tiny  # keeps the column scaling finite at g = 0
    book = {"k": 0, "plain": torch.ones(batch, dtype=torch.bool, device=x0.device)}

    def accelerated() -> Tensor:
        # Columns scaled to unit norm before regularising: the memory spans residuals of very
        # different sizes, and a ridge relative to the largest would swamp the newest (smallest)
        # ones and stall the acceleration. The ridge is then λ Σ γ_i² ‖g_i‖².
        both = valid.unsqueeze(2) & valid.unsqueeze(1)
        d = torch.diagonal(gram, dim1=1, dim2=2).add(tiny).rsqrt()
        h = torch.where(both, gram * d.unsqueeze(2) * d.unsqueeze(1), 0)
        h = h + torch.where(valid, regularisation, 1.0).to(h.dtype).unsqueeze(2) * eye
        # solve_ex: no error check (no device sync); a singular system gives non-finite γ,
        # which the safeguard rejects.
        y = torch.linalg.solve_ex(h, torch.where(valid, d, 0))[0] * d
        total = y.sum(dim=1, keepdim=True)
        gamma = (y / torch.where(total == 0, 1, total)).unsqueeze(2)
        # broadcast-multiply-and-sum, not bmm: CPU bmm loops over the batch for these thin shapes
        return (gamma * hist_step).sum(dim=1)

    def step(carry):
        # image of the last accepted point, the norm of its map residual, the candidate state of
        # the last accepted evaluation and that state's residual (a rejected extrapolation, NaN
        # included, is neither a solution nor divergence)
        f, r, z_acc, res_acc = carry
        k, plain = book["k"], book["plain"]
        y = f if k == 0 else torch.where(plain.unsqueeze(1), f, accelerated())
        fy, candidate, residual = fmap(y)
        gy = fy - y
        ry = torch.linalg.vector_norm(gy, dim=1)
        accept = plain | (ry <= r) if safeguard else torch.ones_like(plain)
        keep = accept.unsqueeze(1)
        slot = k % memory
        hist_step[:, slot] = torch.where(keep, torch.add(y, gy, alpha=mixing), 0)
        hist_g[:, slot] = torch.where(keep, gy, 0)
        row = (hist_g * hist_g[:, slot].unsqueeze(1)).sum(dim=2)
        gram[:, slot, :] = row
        gram[:, :, slot] = row
        valid[:, slot] = True
        valid.logical_and_(keep)  # a rejected point restarts that sample's memory
        book["k"], book["plain"] = k + 1, ~accept
        f = torch.where(keep, fy, f)
        r = torch.where(accept, ry, r)
        z_acc = torch.where(keep, _flatten(candidate), z_acc)
        res_acc = torch.where(accept, residual, res_acc)
        return (f, r, z_acc, res_acc), _unflatten(z_acc, like), res_acc

    inf = torch.full((batch,), float("inf"), dtype=x0.dtype, device=x0.device)
    carry = (x0, inf, _flatten(z), inf)  # f = x0 makes the first evaluation T(x0)
    result = iterate(step, carry, op=op, prox=prox, bias=bias, tol=tol, max_iter=max_iter,
                     start=start, resolvent=resolvent if base == "pr" else None,
                     exact=base == "fb", mask=mask)
    if base == "fb":
        check_step_size(op, alpha, check_step, method="Anderson-accelerated forward-backward",
                        converged=result.converged)
    return result


def anderson_pr(op: LinearOperator, prox: Prox, bias: State, **options) -> SolverResult:
    """:func:`anderson` on Peaceman-Rachford (``base="pr"``); options as there."""
    return anderson(op, prox, bias, base="pr", **options)


def anderson_fb(op: LinearOperator, prox: Prox, bias: State, **options) -> SolverResult:
    """:func:`anderson` on forward-backward (``base="fb"``); options as there."""
    return anderson(op, prox, bias, base="fb", **options)


def _fb_map(op: LinearOperator, prox: Prox, bias: State, alpha: float):
    """FB's map on z: ``z -> (prox_{αf}((1-α)z + α(Wz + b)), z, r(z))``; r(z) is exact (it uses
    the Wz + b the step evaluates anyway)."""

    def apply(z: State) -> tuple[State, State, Tensor]:
        v = tmap(torch.add, op.mv(z), bias)
        image = prox.apply(tmap(lambda zi, vi: torch.lerp(zi, vi, alpha), z, v), alpha)
        return image, z, relative_residual(z, prox.apply(v))

    return apply


def _pr_map(prox: Prox, bias: State, alpha: float, resolvent: Resolvent):
    """PR's map on u, with the state of its image, ``prox_{αf}(T(u))``, as the candidate and
    the estimate of its residual from :func:`~splitting.peaceman_rachford.rachford_step`."""
    scaled_bias = tuple(alpha * b for b in bias)

    def apply(u: State) -> tuple[State, State, Tensor]:
        image, estimate = rachford_step(resolvent, prox, prox.apply(u, alpha), u, scaled_bias)
        return image, prox.apply(image, alpha), estimate

    return apply


class _FlatMap:
    """A map on states seen on flattened (batch, n) tensors, Anderson's working space; the
    candidate state and its residual pass through as they are."""

    def __init__(self, apply, like: State) -> None:
        self._apply = apply
        self._like = like

    def __call__(self, x: Tensor) -> tuple[Tensor, State, Tensor]:
        image, candidate, residual = self._apply(_unflatten(x, self._like))
        return _flatten(image), candidate, residual


def _flatten(z: State) -> Tensor:
    if len(z) == 1:
        return z[0].reshape(z[0].shape[0], -1)
    return torch.cat([t.reshape(t.shape[0], -1) for t in z], dim=1)


def _unflatten(flat: Tensor, like: State) -> State:
    if len(like) == 1:
        return (flat.reshape(like[0].shape),)
    parts, start = [], 0
    for t in like:
        size = t[0].numel()
        parts.append(flat[:, start:start + size].reshape(t.shape))
        start += size
    return tuple(parts)
