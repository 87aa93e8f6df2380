r"""Sound certified ℓ2 robustness of monDEQ classifiers from the Lipschitz bound.

For the exact equilibrium :math:`z^\star` and logits :math:`h = Hz^\star + c`, the margin
:math:`h_y - h_j` moves by at most :math:`\|H_y - H_j\|_2\,\|U\|_2/m` per unit of input
perturbation (Pabbaraju, Winston & Kolter, ICLR 2021), so no perturbation of norm below

.. math:: r(x) = \min_{j \ne y} \frac{h_y - h_j}{\|H_y - H_j\|_2\,\|U\|_2/m}

changes the prediction. The network evaluates an approximate state :math:`\hat z`, not
:math:`z^\star`; :func:`certify` bounds :math:`\|\hat z - z^\star\|` from the natural residual of
the state the head actually sees (:func:`equilibrium_error_bound`) and subtracts it, so its radii
are sound for the exact network whatever the solver tolerance. Tighter solves shrink the slack;
``certify(..., tol=1e-6)`` re-solves before certifying.

**One certificate everywhere.** :func:`certify`'s defaults are the rule every entry point uses
(the API, the training report, ``mondeq certify``): the strongest sound bound that is affordable
(``bound="auto"``: the joint bound, with diagonal multipliers where that search is cheap; the
product bound only for a layer too large to build the joint one), every equilibrium re-solved at
``CERTIFY_TOL`` = 1e-6 in float64 (``CERTIFY_DTYPE``; a float32 solve stalls near 1e-6 at its
round-off floor). A caller who asks for less (``tol=None``: the layer's own tolerance,
``dtype=None``: the model's dtype, ``bound="product"``, ``multipliers="scalar"``) gets a
:class:`Certificate` whose ``bound``, ``multipliers``, ``tol`` and ``dtype`` say so
(:meth:`Certificate.weaker_than_default`).

Inputs and radii are in pixel scale: the classifier owns its normalisation
:math:`(x_c - \mu_c)/\sigma_c`, whose Lipschitz constant is :math:`1/s`, :math:`s = \min_c\sigma_c`.
A radius :math:`r` of the layer's (normalised) input is therefore a radius :math:`s\,r` in pixels;
:func:`certify` computes :math:`r` with the layer's constants and multiplies by :math:`s`.
"""
from __future__ import annotations

import copy
import math
import numbers
from typing import Iterable

import torch
from torch import Tensor

from splitting import LinearOperator
from splitting.errors import warn_at_caller
from splitting.state import batch_norm

from ..errors import InputRangeWarning, InputScaleError, InvalidSettingError
from ..layer import MonDEQ, solver_settings
from .checks import check_batch, check_classifier, check_epsilons, check_labels, pixel_range_problem
from .joint_bound import MULTIPLIERS, joint_radius, one_thread, pairwise_lipschitz
from .lipschitz import (head_matrix, layer_lipschitz_bound, margin_lipschitz, pairwise_margin_norms,
                        pixel_scale)
from .certificate import (CERTIFY_BOUND, CERTIFY_BOUNDS, CERTIFY_DTYPE, CERTIFY_MULTIPLIERS, CERTIFY_TOL,
                          TIGHT_MAX_ITER, Certificate, certified_accuracy)



def certified_radius(logits: Tensor, labels: Tensor, margin_lip: Tensor, *,
                     input_scale: float = 1.0, state_error: Tensor | None = None,
                     lipschitz: float | None = None) -> Tensor:
    r"""Per-example certified ℓ2 radius; 0 for misclassified examples.

    Without ``state_error`` this is the radius of the exact network *if* ``logits`` came from the
    exact equilibrium. With it, the margins are first reduced by the worst case
    :math:`\|H_y - H_j\|_2\,\delta` of a state error :math:`\|\hat z - z^\star\| \le \delta`, which
    amounts to subtracting :math:`\delta\,m/\|U\|_2` from every radius:

    .. math:: r = \min_{j \ne y} \frac{h_y - h_j - \|H_y - H_j\|_2\,\delta}{\|H_y - H_j\|_2\,\|U\|_2/m}
              = \min_{j \ne y} \frac{h_y - h_j}{\|H_y - H_j\|_2\,\|U\|_2/m} - \frac{\delta}{\|U\|_2/m}.

    Args:
        logits: shape (batch, K).
        labels: true classes, shape (batch,).
        margin_lip: (K, K) Lipschitz constants of the margins h_i − h_j with respect to the
            model's input, e.g. :func:`mondeq.robustness.lipschitz.margin_lipschitz`.
        input_scale: multiply radii by this to express them in another input scale (e.g.
            :math:`s = \min_c\sigma_c` turns radii of a normalised input into pixel radii).
        state_error: optional per-example bound δ on ‖ẑ − z*‖, shape (batch,)
            (:func:`equilibrium_error_bound`).
        lipschitz: ‖U‖₂/m, required with ``state_error``.

    Returns:
        radii, shape (batch,).
    """
    true = logits.gather(1, labels[:, None])
    ratio = (true - logits) / margin_lip[labels]
    ratio.scatter_(1, labels[:, None], float("inf"))
    radius = ratio.min(dim=1).values
    if state_error is not None:
        if lipschitz is None:
            raise ValueError("certified_radius with state_error needs lipschitz = ‖U‖₂/m")
        radius = radius - state_error / lipschitz
    return radius.clamp(min=0) * input_scale




def equilibrium_error_bound(residual: Tensor, m: float, lipschitz: float) -> Tensor:
    r"""Bound on :math:`\|z - z^\star\|` from the natural residual :math:`e = z - \sigma(Wz + Ux + b)`.

    .. math:: \|z - z^\star\| \le \frac{(1 + L) + \sqrt{(1 + L)^2 - 4m}}{2m}\,\|e\|
              \;\le\; \frac{1 + L}{m}\,\|e\|,\qquad L \ge \|I - W\|_2.

    Derivation. Write :math:`c = Ux + b`, :math:`p = \sigma(Wz + c) = z - e`, :math:`d = z - z^\star`.
    Since :math:`\sigma = \mathrm{prox}_f`, :math:`Wz + c - p \in \partial f(p)` and
    :math:`Wz^\star + c - z^\star \in \partial f(z^\star)`. Monotonicity of :math:`\partial f`
    between these two points gives :math:`\langle W d - (p - z^\star),\, p - z^\star\rangle \ge 0`
    with :math:`p - z^\star = d - e`, i.e.

    .. math:: \langle (I - W) d, d\rangle \le \langle (I - W) d, e\rangle + \langle d, e\rangle - \|e\|^2.

    Strong monotonicity, :math:`\langle (I - W)d, d\rangle \ge m\|d\|^2`, and Cauchy–Schwarz give
    :math:`m\|d\|^2 - (1 + L)\|e\|\|d\| + \|e\|^2 \le 0`; :math:`\|d\|` lies below the larger root
    of this quadratic (real because :math:`L \ge \|I - W\|_2 \ge m`). Dropping the
    :math:`\|e\|^2` term gives the simpler :math:`(1 + L)\|e\|/m`, at most twice as large.

    Args:
        residual: per-example absolute residual norms ‖e‖, shape (batch,).
        m: monotonicity margin of W.
        lipschitz: an upper bound L on ‖I − W‖₂ (``operator.lipschitz()``).

    Returns:
        per-example bounds on ‖z − z*‖, shape (batch,).
    """
    a = 1.0 + float(lipschitz)
    factor = (a + math.sqrt(max(a * a - 4.0 * m, 0.0))) / (2.0 * m)
    return residual * factor


def state_residual(layer: MonDEQ, x: Tensor, z: tuple[Tensor, ...], *,
                   op: LinearOperator | None = None) -> Tensor:
    r"""Per-example absolute natural residual :math:`\|z - \sigma(Wz + Ux + b)\|` over all tiers.

    ``op`` is the layer's current operator, rebuilt when not given.
    """
    linear = layer.linear
    op = linear.operator() if op is None else op
    v = tuple(a + b for a, b in zip(op.mv(z), linear.bias(x)))
    return batch_norm(tuple(t - s for t, s in zip(z, layer.nonlinearity.apply(v))))


@torch.no_grad()
def certify(model, x: Tensor, y: Tensor | None = None, *, epsilons: Iterable[float] | float = (),
            tol: float | None = CERTIFY_TOL, max_iter: int | None = None, batch_size: int | None = 1000,
            dtype: torch.dtype | None = CERTIFY_DTYPE, bound: str = CERTIFY_BOUND,
            multipliers: str = CERTIFY_MULTIPLIERS, input_scale: None = None) -> Certificate:
    r"""Sound per-example certified ℓ2 radii, in pixel scale, of a :class:`~mondeq.models.MonDEQClassifier`.

    The layer returns the solver's state :math:`\hat z` and the head reads it; the residual
    :math:`e = \hat z - \sigma(W\hat z + U\hat x + b)` of exactly that state (:math:`\hat x` the
    normalised input), recomputed here independently of the solver's claim, gives
    :math:`\|\hat z - z^\star\| \le \delta` (:func:`equilibrium_error_bound` with
    ``operator().lipschitz()``), and each margin is reduced by :math:`\|H_y - H_j\|_2\,\delta`
    (:func:`certified_radius`). The radius so found for :math:`\hat x` is multiplied by
    :math:`s = \min_c\sigma_c` of the classifier's normalisation, which gives a pixel radius:

    .. math:: r_{\text{pixel}} = s\,\Big(\min_{j \ne y}
              \frac{h_y - h_j}{\|H_y - H_j\|_2\,\|U\|_2/m} - \frac{\delta\,m}{\|U\|_2}\Big)_+

    (product bound; the joint bound divides by :math:`\Gamma_{yj}` instead). The defaults are the
    one rule of every entry point (module docstring); ``model`` itself is left as it was (a
    ``dtype`` other than its own certifies a copy; the constants are computed in float64 from its
    parameters either way).

    Args:
        model: a MonDEQClassifier (any layer type).
        x: inputs in pixel scale (the classifier normalises them), shape (batch, ...).
        y: integer labels, shape (batch,); ``None`` certifies the predicted class.
        epsilons: pixel-scale radii (≥ 0; one number or several) at which to report certified
            accuracy.
        tol: re-solve every equilibrium at this relative tolerance (default ``CERTIFY_TOL``);
            ``None``: the layer's own. Soundness does not depend on it: a looser solve only costs
            radius (the slack).
        max_iter: iteration cap for that solve (default: ``TIGHT_MAX_ITER`` when ``tol`` is given).
        batch_size: examples per solve, ≥ 1 (``None``: all at once).
        dtype: precision of the solves and logits (default float64); ``None``: the model's.
        bound: ``"auto"`` (the joint bound, or the product bound where the joint one cannot be
            built), ``"joint"`` (:mod:`~mondeq.robustness.joint_bound`, never larger) or
            ``"product"``.
        multipliers: the joint bound's multipliers (:func:`~mondeq.robustness.joint_bound.pairwise_lipschitz`):
            ``"auto"`` (diagonal where that search is cheap), ``"scalar"`` (fast: the constants the
            joint training loss uses) or ``"diagonal"``.
        input_scale: refused: the model owns its normalisation, radii are in pixels.

    Returns:
        a :class:`Certificate` (its ``bound``, ``multipliers``, ``tol`` and ``dtype`` say which
        certificate it is).

    Raises:
        NonAffineReadoutError: the classifier's readout or head is not known to be affine
            (the radius formula needs ``logits = H z + c``).
        ClassifierTypeError: ``model`` is not a classifier (e.g. ``model.layer``).
        InputShapeError: ``x``'s examples do not have the classifier's input size.
        StateShapeError: an empty batch (as the model itself).
        LabelError: labels not integer, not one per example, or out of range.
        InvalidSettingError: ``batch_size`` below 1, a negative or non-finite ε, an unknown
            ``bound`` or ``multipliers``, a non-positive ``tol``.
        InputScaleError: ``input_scale`` given.
    """
    if input_scale is not None:
        raise InputScaleError(
            "certify no longer takes input_scale: the classifier owns its input normalisation "
            "(mondeq.build_model gives it its dataset's), so pass pixel-scale inputs and read radii "
            "and ε in pixels; for a model built without one, give fc_mondeq(..., mean=, std=)")
    check_classifier(model, "certify")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise InvalidSettingError(f"certify: batch_size must be a whole number ≥ 1 (or None for one "
                                  f"batch), got {batch_size!r}")
    if bound not in CERTIFY_BOUNDS:
        raise InvalidSettingError(f"certify: bound must be one of {CERTIFY_BOUNDS}, got {bound!r}")
    if multipliers not in MULTIPLIERS:
        raise InvalidSettingError(f"certify: multipliers must be one of {MULTIPLIERS}, got {multipliers!r}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < math.inf):
        raise InvalidSettingError(f"certify: tol must be > 0 and finite (or None: the layer's own), got {tol!r}")
    epsilons = check_epsilons(epsilons, "certify")
    check_batch(x, "certify")
    problem = None if getattr(model, "normalization", None) is None else pixel_range_problem(x)
    if problem is not None:
        warn_at_caller(f"certify: {problem}; this image classifier's radii and ε are in the pixel scale "
                       f"[0, 1], so these certificates are about other images than these", InputRangeWarning)
    original = model
    if dtype is not None and next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)
    layer: MonDEQ = model.layer
    linear = layer.linear
    x = model.layer_input(x)  # checks the shape, normalises: what the layer sees
    head = head_matrix(original, differentiable=False)
    if y is not None:
        y = check_labels(y, len(x), head.shape[0])
    gamma, used, default = certificate_constants(original, bound, multipliers)
    was_training = model.training
    model.eval()
    lipschitz = layer_lipschitz_bound(original)  # layer scale; radii are converted by s below
    scale = pixel_scale(original)
    op = linear.operator()
    op_lipschitz = linear.cached("operator_lipschitz", op.lipschitz)
    margin_lip = margin_lipschitz(head, lipschitz)
    if max_iter is None and tol is not None:
        max_iter = max(layer.max_iter, TIGHT_MAX_ITER)
    size = batch_size if batch_size is not None else max(len(x), 1)
    parts: dict[str, list[Tensor]] = {k: [] for k in ("pred", "label", "r0", "delta", "res", "logits")}
    iterations = []
    try:
        with solver_settings(layer, tol=tol, max_iter=max_iter):
            solved_tol = layer.tol
            for start in range(0, len(x), size):
                xb = x[start:start + size]
                z, stats = layer.forward_with_stats(xb)
                logits = model.logits_from_state(z)
                pred = logits.argmax(1)
                label = pred if y is None else y[start:start + size].to(pred.device)
                residual = state_residual(layer, xb, z, op=op)
                parts["pred"].append(pred)
                parts["label"].append(label)
                parts["r0"].append(certified_radius(logits, label, margin_lip.to(logits.dtype)))
                parts["delta"].append(equilibrium_error_bound(residual, op.m, op_lipschitz))
                parts["res"].append(residual)
                parts["logits"].append(logits)
                iterations.append(stats.forward.iterations)
    finally:
        model.train(was_training)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    slack = cat["delta"] / lipschitz * scale
    radius_unsound = cat["r0"] * scale
    radius = (radius_unsound - slack).clamp(min=0).nan_to_num(nan=0.0)  # NaN: a diverged solve
    if used[0] == "joint":
        norms = pairwise_margin_norms(head.to(torch.float64))
        radius_unsound = joint_radius(cat["logits"], cat["label"], gamma, norms).to(radius.dtype)
        radius = joint_radius(cat["logits"], cat["label"], gamma, norms, cat["delta"]).to(radius.dtype)
        slack = radius_unsound - radius
    return Certificate(radius=radius, prediction=cat["pred"], label=cat["label"],
                       radius_unsound=radius_unsound, slack=slack, state_error=cat["delta"],
                       residual=cat["res"], lipschitz=lipschitz / scale, pixel_scale=scale,
                       forward_iterations=sum(iterations) / max(len(iterations), 1),
                       certified=certified_accuracy(radius, epsilons), bound=used[0],
                       multipliers=used[1], tol=solved_tol,
                       dtype=str(x.dtype).removeprefix("torch."), default_constants=default)


def certificate_constants(model, bound: str = CERTIFY_BOUND, multipliers: str = CERTIFY_MULTIPLIERS
                          ) -> tuple[Tensor | None, tuple[str, str | None], tuple[str, str | None]]:
    """The margin constants :func:`certify` divides by, which ones they are, and which ones the
    default rule gives this model (its multipliers ``None`` where not computed).

    Returns:
        ``(gamma, (bound, multipliers), (default bound, default multipliers))``: ``gamma`` the
        (K, K) joint constants, ``None`` for the product bound (whose radii
        :func:`certified_radius` computes from K directly).

    Raises:
        InvalidSettingError: ``bound="joint"`` on a layer whose joint bound cannot be built.
    """
    if bound == "product":
        return None, ("product", None), ("joint", None)
    try:
        with one_thread():  # the spectrum the search starts from too (it is cached for it)
            used = _resolve_multipliers(model, multipliers)
            gamma = pairwise_lipschitz(model, multipliers=multipliers)
    except InvalidSettingError:  # no block structure and too large to build densely
        if bound == "joint":
            raise
        return None, ("product", None), ("product", None)
    default = used if multipliers == CERTIFY_MULTIPLIERS else None
    return gamma, ("joint", used), ("joint", default)


def _resolve_multipliers(model, multipliers: str) -> str:
    """``"scalar"`` or ``"diagonal"``: what :func:`~mondeq.robustness.joint_bound.pairwise_lipschitz`
    uses for ``multipliers`` on this model."""
    if multipliers == "scalar":
        return "scalar"
    from .joint_bound import _use_diagonal, joint_spectrum  # its "auto" rule, not a copy of it

    k = head_matrix(model, differentiable=False).shape[0]
    return "diagonal" if _use_diagonal(model, joint_spectrum(model), k * (k - 1) // 2, multipliers) else "scalar"

