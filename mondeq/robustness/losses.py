r"""Training losses for certified robustness.

Lipschitz-margin training (Tsuzuku, Sato & Sugiyama, NeurIPS 2018), with the pairwise margin
constants of a monDEQ: every wrong logit is raised by the most an ε-perturbation can add to it
relative to the true one,

.. math:: \tilde h_j = h_j + \varepsilon\,\|H_y - H_j\|_2\,\|U\|_2/(m\,s) \quad (j \ne y),\qquad
          \ell = \mathrm{CE}(\tilde h, y),

so that :math:`\arg\max \tilde h = y` implies a certified radius above ε (for the exact
equilibrium and the exact ‖U‖₂), with ε in pixel scale and :math:`s = \min_c\sigma_c` of the
classifier's input normalisation (1 without one). The constant is differentiable in the head and in U (the exact
``input_norm()``, or the cheaper power-iteration estimate :class:`InputNormEstimate`), and not
in W: the bound does not depend on F, G. :math:`H` and :math:`K` are those of the certificates
(:func:`~mondeq.robustness.lipschitz.margin_lipschitz_matrix`, here with its graph).

With ``bound="joint"`` every loss uses :math:`\min(K_{yj}, \Gamma_{yj})` instead, the joint
constants of :mod:`.joint_training`, whose graph also reaches F (not G).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InvalidSettingError
from ..models.classifier import MonDEQClassifier
from ..parametrisation import MonotoneParametrisation
from .joint_bound import BOUNDS
from .joint_training import check_joint_training, differentiable_joint_constants
from .lipschitz import head_matrix, margin_lipschitz_matrix

__all__ = ["InputNormEstimate", "LipschitzMarginLoss", "head_matrix", "lipschitz_margin_logits",
           "margin_lipschitz_matrix"]


class InputNormEstimate:
    r"""Differentiable power-iteration estimate of :math:`\|U\|_2`, from below, for any layer.

    Uses only the layer's injection: :math:`Uv = \mathrm{bias}(v) - \mathrm{bias}(0)`, and
    :math:`U^\top u` by autograd. A persistent unit vector :math:`v` is refined by ``iterations``
    power steps per call (warm start: one or two suffice while training moves U slowly), and
    :math:`\|Uv\|` is returned with the graph to U — its gradient :math:`u v^\top` is that of the
    top singular value. Much cheaper than an SVD for wide layers; certificates still use the exact
    ``input_norm()``.

    Args:
        linear: the layer's parametrisation.
        iterations: power steps per call.
    """

    def __init__(self, linear: MonotoneParametrisation, *, iterations: int = 2) -> None:
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.linear = linear
        self.iterations = int(iterations)
        self.v: Tensor | None = None

    def _apply(self, v: Tensor) -> Tensor:
        both = self.linear.bias(torch.cat([v, torch.zeros_like(v)]))
        flat = torch.cat([t.reshape(2, -1) for t in both], dim=1)
        return flat[:1] - flat[1:]

    def __call__(self) -> Tensor:
        if self.v is None:
            p = next(self.linear.parameters())
            v = torch.randn(1, *self.linear.input_shape, dtype=p.dtype, device=p.device)
            self.v = v / v.norm()
        with torch.enable_grad():
            for _ in range(self.iterations):
                v = self.v.detach().requires_grad_(True)
                u = self._apply(v)
                (g,) = torch.autograd.grad(u, v, grad_outputs=(u / u.norm().clamp(min=1e-30)).detach())
                self.v = (g / g.norm().clamp(min=1e-30)).detach()
        return self._apply(self.v).norm()


def lipschitz_margin_logits(logits: Tensor, labels: Tensor, margin_lip: Tensor,
                            eps: float | Tensor) -> Tensor:
    r"""Worst-case logits :math:`h_j + \varepsilon K_{yj}` (:math:`K_{yy} = 0`), shape (batch, K)."""
    return logits + eps * margin_lip[labels]


class LipschitzMarginLoss(nn.Module):
    r"""Cross entropy on Lipschitz-margin logits with a ramped ε, plus an optional ‖U‖₂ penalty.

    .. math:: \ell = \mathrm{CE}(h + \varepsilon_k K_{y\cdot},\, y)
              + \lambda\,\max(0, \|U\|_2/m - \Lambda)^2

    Call it as ``loss(logits, y)``; every call in training mode advances the schedule by one step:
    ε_k = 0 for the first ``warmup_steps``, then rises linearly to ``eps`` over ``ramp_steps``.

    Args:
        model: the classifier being trained (the constants are read from it at every call).
        eps: target radius in pixel scale (the classifier's inputs; it owns its normalisation).
        ramp_steps: steps of the linear ramp (0: the full ε from the start).
        warmup_steps: steps of plain cross entropy before the ramp.
        lipschitz_penalty: λ, weight of the penalty on the layer's ‖U‖₂/m above ``lipschitz_target``.
        lipschitz_target: Λ, in the layer's (normalised) input scale: the pixel-scale bound is
            ‖U‖₂/(m·s) (default 0: penalise ‖U‖₂/m itself).
        power_iterations: estimate ‖U‖₂ by this many warm-started power steps per call
            (:class:`InputNormEstimate`) instead of the exact ``input_norm()``; 0 for exact.
        bound: ``"product"`` (the constants K above) or ``"joint"``: :math:`\min(K_{yj},
            \Gamma_{yj})` with the joint constants of the certificate and their graph
            (:mod:`.joint_training`; every layer with a block structure).

    Raises:
        InvalidSettingError: an unknown ``bound``, or ``"joint"`` for a layer without a block
            structure that is too large to probe (:class:`~mondeq.errors.StructureTooLargeError`).
    """

    def __init__(self, model: MonDEQClassifier, eps: float, *, ramp_steps: int = 0,
                 warmup_steps: int = 0, lipschitz_penalty: float = 0.0,
                 lipschitz_target: float = 0.0, power_iterations: int = 0,
                 bound: str = "product") -> None:
        super().__init__()
        if not eps >= 0 or ramp_steps < 0 or warmup_steps < 0 or not lipschitz_penalty >= 0:
            raise ValueError(f"need eps, ramp_steps, warmup_steps, lipschitz_penalty >= 0; got {eps}, "
                             f"{ramp_steps}, {warmup_steps}, {lipschitz_penalty}")
        if bound not in BOUNDS:
            raise InvalidSettingError(f"bound must be one of {BOUNDS}, got {bound!r}")
        if bound == "joint":
            check_joint_training(model)
        self.bound = bound
        self.model = [model]  # a list so that the model is not registered as a submodule
        self.eps = float(eps)
        self.ramp_steps = int(ramp_steps)
        self.warmup_steps = int(warmup_steps)
        self.lipschitz_penalty = float(lipschitz_penalty)
        self.lipschitz_target = float(lipschitz_target)
        self.step = 0
        self.norm_estimate = (InputNormEstimate(model.layer.linear, iterations=power_iterations)
                              if power_iterations > 0 else None)

    def get_extra_state(self) -> dict:
        """The schedule position and the power-iteration vector, for ``state_dict()`` (so a
        checkpointed run resumes its ε ramp and its ‖U‖₂ estimate exactly)."""
        v = None if self.norm_estimate is None else self.norm_estimate.v
        return {"step": self.step, "norm_estimate": None if v is None else v.detach().clone()}

    def set_extra_state(self, state: dict) -> None:
        """Restore what :meth:`get_extra_state` saved (``load_state_dict``); the vector moves to
        the model's device."""
        self.step = int(state["step"])
        v = state.get("norm_estimate")
        if self.norm_estimate is not None and v is not None:
            p = next(self.model[0].parameters())
            self.norm_estimate.v = v.to(device=p.device, dtype=p.dtype)

    def current_eps(self) -> float:
        """ε at the current step of the schedule."""
        k = self.step - self.warmup_steps
        if k < 0:
            return 0.0
        return self.eps if self.ramp_steps == 0 else self.eps * min(1.0, k / self.ramp_steps)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        model = self.model[0]
        eps = self.current_eps()
        if model.training:
            self.step += 1
        loss, k = logits.new_zeros(()), None
        if eps > 0 or self.lipschitz_penalty > 0:
            linear = model.layer.linear
            u_norm = linear.input_norm() if self.norm_estimate is None else self.norm_estimate()
            if eps > 0:
                k = margin_lipschitz_matrix(model, input_norm=u_norm)
                if self.bound == "joint":
                    k = torch.minimum(k, differentiable_joint_constants(model).to(k.dtype))
            if self.lipschitz_penalty > 0:
                loss = loss + self.lipschitz_penalty * torch.relu(u_norm / linear.m - self.lipschitz_target) ** 2
        return loss + self.objective(logits, labels, k, eps)

    def objective(self, logits: Tensor, labels: Tensor, margin_lip: Tensor | None, eps: float) -> Tensor:
        r"""The loss of the logits at the current :math:`\varepsilon_k`, here
        :math:`\mathrm{CE}(h + \varepsilon_k K_{y\cdot}, y)`; subclasses
        (:mod:`.certified_losses`) replace it and keep the schedule, the penalty and the state.

        Args:
            logits: :math:`h`, shape (batch, K).
            labels: shape (batch,).
            margin_lip: :math:`K` with its graph, shape (K, K); ``None`` when ``eps == 0``.
            eps: :math:`\varepsilon_k` (pixel scale).
        """
        if margin_lip is not None:
            logits = lipschitz_margin_logits(logits, labels, margin_lip, eps)
        return nn.functional.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return (f"eps={self.eps:g}, ramp_steps={self.ramp_steps}, warmup_steps={self.warmup_steps}, "
                f"lipschitz_penalty={self.lipschitz_penalty:g}, lipschitz_target={self.lipschitz_target:g}, "
                f"power_iterations={0 if self.norm_estimate is None else self.norm_estimate.iterations}, "
                f"bound={self.bound}")
