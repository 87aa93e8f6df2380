r"""Lipschitz bounds of a monDEQ classifier, each quantity computed here once (Pabbaraju, Winston &
Kolter, ICLR 2021).

.. math:: \|z^\star(x) - z^\star(x')\|_2 \le \frac{\|U\|_2}{m}\,\|x - x'\|_2

and for logits :math:`h = Hz^\star + c` the margin :math:`h_i - h_j` moves by at most

.. math:: K_{ij} = \|H_i - H_j\|_2\,\frac{\|U\|_2}{m}\,\|x - x'\|_2 .

A classifier owns its input normalisation :math:`\hat x_c = (x_c - \mu_c)/\sigma_c`, and
inputs are in pixel scale: the normalisation is :math:`\le 1/\min_c\sigma_c`-Lipschitz, so every
constant of a classifier here is the layer's divided by :math:`s = \min_c \sigma_c`
(``model.pixel_scale``; 1 without a normalisation). Constants of a bare layer are the layer's.

Certificates (:mod:`.certification`) read :math:`K` detached, with the exact ‖U‖₂ in float64;
the certified-training loss (:mod:`.losses`) reads the same :math:`K` with ``differentiable=True``,
keeping the graph to the head and to U (never to W: the bound does not depend on F, G).
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..layer import MonDEQ
from ..parametrisation import MonotoneParametrisation

if TYPE_CHECKING:
    from ..models.classifier import MonDEQClassifier


def lipschitz_bound(model: nn.Module) -> float:
    r"""A Lipschitz constant in ℓ2 of :math:`x \mapsto z^\star(x)`, in the scale of ``model``'s input.

    .. math:: \text{layer: } \frac{\|U\|_2}{m}, \qquad
              \text{classifier: } \frac{\|U\|_2}{m\,\min_c \sigma_c}\ \text{(pixel scale)}.

    Args:
        model: a :class:`~mondeq.layer.MonDEQ` or its parametrisation (the layer's input scale),
            or a classifier holding one as ``.layer`` (:class:`~mondeq.models.MonDEQClassifier`:
            pixel scale, through its input normalisation).
    """
    return layer_lipschitz_bound(model) / pixel_scale(model)


def pixel_scale(model: nn.Module) -> float:
    r""":math:`s = \min_c\sigma_c` of a classifier's input normalisation (1 for a bare layer, or a
    classifier without one): a layer-scale constant divided by :math:`s` holds in pixel scale."""
    return float(getattr(model, "pixel_scale", 1.0)) if isinstance(getattr(model, "layer", None), MonDEQ) else 1.0


def layer_lipschitz_bound(model: nn.Module) -> float:
    r""":math:`\|U\|_2 / m` of the layer (the classifier's layer), in the layer's input scale.

    Raises:
        TypeError: ``model`` is neither a layer, a parametrisation nor a classifier of one.
    """
    linear = model.layer if isinstance(getattr(model, "layer", None), MonDEQ) else model
    linear = linear.linear if isinstance(linear, MonDEQ) else linear
    if not isinstance(linear, MonotoneParametrisation):
        raise TypeError(f"lipschitz_bound needs a MonDEQ, a MonotoneParametrisation or a classifier "
                        f"whose .layer is a MonDEQ, got {type(model).__name__}")
    return linear.cached("input_norm", lambda: _input_norm(linear)) / linear.m


def _input_norm(linear: MonotoneParametrisation) -> float:
    """‖U‖₂ computed in float64 (from a float64 copy of lower-precision parameters): a float32
    SVD can come out ~1e-7 below the norm, and certificates need it not below."""
    with torch.no_grad():
        if linear.dtype != torch.float64:
            linear = copy.deepcopy(linear).to(torch.float64)
        return float(linear.input_norm())


def head_matrix(model: MonDEQClassifier, *, differentiable: bool = True) -> Tensor:
    r"""The linear part :math:`H` of ``state ↦ logits`` on flattened states, shape (classes, n)
    (:meth:`~mondeq.models.MonDEQClassifier.head_matrix`), with the graph to the head by default.

    Args:
        model: a :class:`~mondeq.models.MonDEQClassifier`.
        differentiable: keep the graph to the head's parameters (for a training loss); ``False``
            returns a detached tensor (for certificates).

    Raises:
        NonAffineReadoutError: the readout or the head does not declare itself affine.
    """
    return model.head_matrix(differentiable=differentiable)


def input_scale(model: nn.Module) -> Tensor | None:
    r"""The diagonal :math:`D` of a classifier's input normalisation, one value per channel
    (:math:`1/\sigma_c`, float64, detached), or ``None`` without one: the ``input_scale`` of
    :meth:`~mondeq.parametrisation.MonotoneParametrisation.block_structure`, for constants in
    pixel scale."""
    norm = getattr(model, "normalization", None)
    return None if norm is None else 1.0 / norm.std.detach().to(torch.float64).reshape(-1)


def pairwise_margin_norms(head: Tensor) -> Tensor:
    r"""Matrix :math:`N_{ij} = \|H_i - H_j\|_2` of a head's row differences, shape (K, K).

    Differentiable in ``head`` (when it carries a graph), with a zero gradient where
    :math:`H_i = H_j` (the diagonal), where the norm itself has none. Rows are differenced
    directly, not through :math:`\|H_i\|^2 + \|H_j\|^2 - 2\langle H_i, H_j\rangle`, whose
    cancellation could report a norm below the true one (an unsound certificate).
    """
    squares = torch.stack([(head - row).pow(2).sum(dim=1) for row in head])  # K × n memory at a time
    positive = squares > 0
    safe = torch.where(positive, squares, torch.ones_like(squares))  # sqrt' is infinite at 0
    return torch.where(positive, safe.sqrt(), torch.zeros_like(squares))


def margin_lipschitz(head: Tensor, lipschitz: float | Tensor) -> Tensor:
    r"""Lipschitz constants of every margin :math:`h_i - h_j`: :math:`K_{ij} = N_{ij}\,\|U\|_2/m`, (K, K).

    Args:
        head: :math:`H`, shape (K, n) (:func:`head_matrix`).
        lipschitz: :math:`\|U\|_2/m` (:func:`lipschitz_bound`, or a differentiable tensor).
    """
    return pairwise_margin_norms(head) * lipschitz


def margin_lipschitz_matrix(model: MonDEQClassifier, *, differentiable: bool = True,
                            input_norm: Tensor | None = None) -> Tensor:
    r""":math:`K_{ij} = \|H_i - H_j\|_2\,\|U\|_2/(m\,s)` of a classifier, shape (K, K), in pixel scale
    (:math:`s = \min_c\sigma_c` of its normalisation, :func:`pixel_scale`).

    Args:
        model: a :class:`~mondeq.models.MonDEQClassifier`.
        differentiable: keep the graph to the head and to U, with ‖U‖₂ from the layer's
            differentiable ``input_norm()`` (the certified-training loss); ``False`` gives the
            detached constants the certificates use (‖U‖₂ exact, in float64, cached).
        input_norm: a differentiable ‖U‖₂ to use instead of ``input_norm()`` (e.g. the
            power-iteration estimate of :class:`~mondeq.robustness.losses.InputNormEstimate`);
            only with ``differentiable=True``.
    """
    if not differentiable:
        if input_norm is not None:
            raise ValueError("input_norm is for the differentiable constants; "
                             "certificates use the exact ‖U‖₂")
        return margin_lipschitz(head_matrix(model, differentiable=False), lipschitz_bound(model))
    linear = model.layer.linear
    u_norm = linear.input_norm() if input_norm is None else input_norm
    return margin_lipschitz(head_matrix(model), u_norm / linear.m / pixel_scale(model))
