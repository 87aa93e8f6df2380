"""Checks on what users pass to certificates and attacks, so that a wrong label reads as one."""
from __future__ import annotations

import math
import numbers
from typing import Iterable

import torch
from torch import Tensor

from ..errors import ClassifierTypeError, InvalidSettingError, LabelError, StateShapeError


def check_classifier(model: object, where: str) -> None:
    """Raise :class:`ClassifierTypeError` unless ``model`` is a classifier with a monDEQ layer (a
    :class:`~mondeq.models.MonDEQClassifier`), naming what to pass instead."""
    from ..layer import MonDEQ  # robustness is imported by the layer's package

    if isinstance(getattr(model, "layer", None), MonDEQ) and hasattr(model, "layer_input"):
        return
    if isinstance(model, MonDEQ):
        raise ClassifierTypeError(f"{where} takes the classifier (the model whose .layer this is), not "
                                  f"its MonDEQ layer: radii need the head's logits; pass the model itself")
    raise ClassifierTypeError(f"{where} takes a monDEQ classifier (mondeq.MonDEQClassifier, e.g. from "
                              f"mondeq.build_model or mondeq.load_run), got {type(model).__name__}")


def check_batch(x: object, where: str) -> None:
    """Raise :class:`StateShapeError` for an empty batch (as the model itself does), or
    :class:`InputDTypeError` for something that is not a tensor."""
    if not isinstance(x, Tensor):
        from ..errors import InputDTypeError

        raise InputDTypeError(f"{where} takes a tensor of pixel-scale images, got {type(x).__name__}")
    if x.ndim == 0 or len(x) == 0:
        raise StateShapeError(f"{where}: the input is an empty batch (shape {tuple(x.shape)}); pass at "
                              f"least one example")


def pixel_range_problem(x: Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> str | None:
    """What is wrong when floating ``x`` has values outside ``bounds`` (beyond rounding: 1e-6),
    with the likely cause; ``None`` when it lies inside, is not floating, or is not finite (the
    non-finite error speaks then). Reads the extremes: a host synchronisation on CUDA."""
    if not x.is_floating_point() or x.numel() == 0:
        return None
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    lo, hi = bounds
    slack = 1e-6 * max(1.0, hi - lo)
    if not (math.isfinite(low) and math.isfinite(high)) or (low >= lo - slack and high <= hi + slack):
        return None
    if high > 2 * hi + 1:
        cause = "; 0..255 pixels as floats? divide them by 255 (or pass the uint8 tensor)"
    elif low < lo:
        cause = "; normalised already (the model normalises its own inputs)? pass the pixels"
    else:
        cause = ""
    return f"the inputs range over [{low:.4g}, {high:.4g}], outside the pixel range [{lo:g}, {hi:g}]{cause}"


def check_epsilons(epsilons: object, where: str) -> list[float]:
    """``epsilons`` as a list of floats: one number or an iterable of them, each ≥ 0 and finite.

    Raises:
        InvalidSettingError: a negative, non-finite or non-numeric radius.
    """
    values: Iterable = [epsilons] if isinstance(epsilons, (numbers.Real, Tensor)) and (
        not isinstance(epsilons, Tensor) or epsilons.ndim == 0) else epsilons
    try:
        out = [float(e) for e in values]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidSettingError(f"{where}: epsilons must be a number or a list of numbers (pixel-scale "
                                  f"ℓ2 radii), got {epsilons!r}") from None
    bad = [e for e in out if not 0 <= e < math.inf]
    if bad:
        raise InvalidSettingError(f"{where}: every ε must be ≥ 0 and finite (a pixel-scale ℓ2 radius), "
                                  f"got {bad}")
    return out


def check_labels(y: object, batch: int, classes: int | None = None, *, what: str = "labels") -> Tensor:
    """``y`` as it is, after checking it holds one integer class per example.

    Args:
        y: the labels given.
        batch: the number of examples they go with.
        classes: the number of classes (checked when given).
        what: how messages name them.

    Raises:
        LabelError: not an integer tensor, not of shape (batch,), or a class outside
            ``0..classes−1`` (reads the extremes: a host synchronisation on CUDA).
    """
    if not isinstance(y, Tensor):
        raise LabelError(f"{what} must be a tensor of class indices, got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise LabelError(f"{what} must be integer class indices, got dtype {y.dtype}; "
                         "convert with .long() if they hold whole numbers")
    if tuple(y.shape) != (batch,):
        raise LabelError(f"{what} must have shape ({batch},), one per example, got {tuple(y.shape)}")
    if classes is not None and batch:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            raise LabelError(f"{what} must lie in 0..{classes - 1} (the model has {classes} classes), "
                             f"got values from {lo} to {hi}")
    return y
