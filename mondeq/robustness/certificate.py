"""The result of :func:`~mondeq.robustness.certification.certify`, and the one rule its settings follow.

Every certificate of the library (the API, the ``mondeq`` command, the pretrained manifests)
is solved at :data:`CERTIFY_TOL` in :data:`CERTIFY_DTYPE`, with the bound and multipliers that
:data:`CERTIFY_BOUND` / :data:`CERTIFY_MULTIPLIERS` (``"auto"``) choose for the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from .joint_bound import BOUNDS

#: Iteration cap used when :func:`certify` re-solves at a tighter tolerance and none is given.
TIGHT_MAX_ITER = 2000
#: The one rule (module docstring): tolerance, precision, bound and multipliers of every certificate.
CERTIFY_TOL = 1e-6
CERTIFY_DTYPE = torch.float64
CERTIFY_BOUND = "auto"
CERTIFY_MULTIPLIERS = "auto"
CERTIFY_BOUNDS = ("auto", *BOUNDS)


def certified_accuracy(radius: Tensor, epsilons: Iterable[float]) -> dict[float, float]:
    """Fraction of examples whose certified radius strictly exceeds each ε."""
    return {float(eps): float((radius > eps).to(torch.float64).mean()) for eps in epsilons}


@dataclass(frozen=True)
class Certificate:
    """Per-example ℓ2 certificates of a classifier, radii in pixel scale (the classifier's inputs).

    Attributes:
        radius: sound certified radius, shape (batch,): the exact network's prediction is
            ``label`` on the whole open ball of this radius; 0 when ``prediction != label`` or
            when the margin does not exceed the solver slack.
        prediction: the evaluated model's predicted class, shape (batch,).
        label: the class being certified (the given labels, or the prediction), shape (batch,).
        radius_unsound: the same formula with no slack (what one gets by treating ẑ as z*).
        slack: ``radius_unsound − radius`` before clamping: the radius paid for the solver error,
            shape (batch,), equal to δ·m·s/‖U‖₂ = δ/``lipschitz``.
        state_error: the bound δ on ‖ẑ − z*‖ of the state the head saw, shape (batch,).
        residual: its natural residual ‖ẑ − σ(Wẑ + Ux + b)‖, shape (batch,).
        lipschitz: ‖U‖₂/(m·s), the Lipschitz bound of x ↦ z* in pixel scale
            (:func:`~mondeq.robustness.lipschitz.lipschitz_bound` of the classifier).
        pixel_scale: s = min_c σ_c of the classifier's input normalisation (1 without one): the
            factor from the layer's (normalised) input scale to pixels.
        forward_iterations: mean forward-solver iterations per chunk.
        certified: certified accuracy at the ``epsilons`` passed to :func:`certify`.
        bound: the margin constants used: ``"product"`` (‖H_y − H_j‖·‖U‖₂/(m·s)) or ``"joint"``
            (:func:`~mondeq.robustness.joint_bound.pairwise_lipschitz`; then each margin pays
            ‖H_y − H_j‖·δ and ``slack`` is the clamped radius lost to it).
        multipliers: the joint bound's multipliers, ``"diagonal"`` or ``"scalar"`` (``None`` with
            the product bound).
        tol: the tolerance the certified equilibria were solved at (the layer's own when
            :func:`certify` got ``tol=None``).
        dtype: the precision of those solves and of the logits, e.g. ``"float64"``.
        default_constants: ``(bound, multipliers)`` that the default rule gives this model.
    """

    radius: Tensor
    prediction: Tensor
    label: Tensor
    radius_unsound: Tensor
    slack: Tensor
    state_error: Tensor
    residual: Tensor
    lipschitz: float
    pixel_scale: float
    forward_iterations: float
    certified: dict[float, float]
    bound: str = "product"
    multipliers: str | None = None
    tol: float | None = None
    dtype: str | None = None
    default_constants: tuple[str, str | None] = ("product", None)

    def __repr__(self) -> str:
        """A summary (the per-example tensors are attributes): images, the share predicted as
        labelled (clean accuracy when labels were given; all, when the labels are the
        predictions), certified accuracy at the requested ε, the certificate's kind and the
        Lipschitz bound."""
        n = self.radius.shape[0]
        clean = float(self.correct.to(torch.float64).mean()) if n else float("nan")
        certified = ", ".join(f"{100 * v:.2f} % at ε={e:g}" for e, v in self.certified.items())
        return (f"Certificate({n} images; {100 * clean:.2f} % predicted as labelled"
                + (f"; certified {certified}" if certified else "")
                + f"; {self.describe()}; Lipschitz bound {self.lipschitz:.4g}; per-example radius, "
                  f"prediction, label, slack, … as attributes)")

    def describe(self) -> str:
        """The certificate in words, e.g. ``joint bound (diagonal multipliers), float64 solves
        at tol 1e-06``."""
        kind = f"{self.bound} bound" + (f" ({self.multipliers} multipliers)" if self.multipliers else "")
        return f"{kind}, {self.dtype} solves at tol {self.tol:g}"

    def weaker_than_default(self) -> list[str]:
        """How this certificate is weaker than :func:`certify`'s default one (empty: it is that
        one, or as strong): e.g. ``["tol 0.01 (default 1e-06)"]``. The bound and multipliers
        count only when the default would have given better ones for this model."""
        out = []
        if self.tol is not None and self.tol > CERTIFY_TOL:
            out.append(f"tol {self.tol:g} (default {CERTIFY_TOL:g})")
        if self.dtype is not None and self.dtype != str(CERTIFY_DTYPE).removeprefix("torch."):
            out.append(f"{self.dtype} solves (default {str(CERTIFY_DTYPE).removeprefix('torch.')})")
        bound, multipliers = self.default_constants
        if self.bound != bound:
            out.append(f"{self.bound} bound (default {bound})")
        elif multipliers is not None and self.multipliers != multipliers:
            out.append(f"{self.multipliers} multipliers (default {multipliers})")
        return out

    @property
    def correct(self) -> Tensor:
        """Whether the evaluated prediction equals the label, shape (batch,)."""
        return self.prediction == self.label

    def accuracy_at(self, epsilons: Iterable[float]) -> dict[float, float]:
        """Certified accuracy (radius > ε) at each ε."""
        return certified_accuracy(self.radius, epsilons)
