r"""Certified-training losses that read the certificate, beside the Lipschitz-margin loss.

All three keep :class:`~mondeq.robustness.losses.LipschitzMarginLoss`'s ε schedule (warm-up,
linear ramp), its optional ‖U‖₂ penalty and its checkpointed state, and replace only the loss of
the logits (:meth:`~mondeq.robustness.losses.LipschitzMarginLoss.objective`). Every one is written
with the pairwise margin constants of a monDEQ, :math:`K_{yj} = \|H_y - H_j\|_2\,\|U\|_2/(m\,s)`
(pixel scale, with the graph to the head and to U), where the papers' 1-Lipschitz networks have
:math:`K_{yj} = \sqrt 2` (or the GloRo constants):

* :class:`EMMALoss` (Hu, Zou, Wang, Leino & Fredrikson, "Unlocking deterministic robustness
  certification on ImageNet", NeurIPS 2023): each wrong logit is raised by its own certified-radius
  gap, the radius detached, :math:`\tilde h_j = h_j + \mathrm{sg}(\varepsilon_j) K_{yj}`,
  :math:`\varepsilon_j = \mathrm{clip}((h_y - h_j)/K_{yj},\ \phi\varepsilon,\ \varepsilon)`;
* :class:`OffsetCrossEntropyLoss` (Prach & Lampert, "Almost-orthogonal layers for efficient
  general-purpose Lipschitz networks", ECCV 2022; used by SLL, Araujo et al., ICLR 2023):
  :math:`T\,\mathrm{CE}((h + \rho\varepsilon K_{y\cdot})/T,\ y)`;
* :class:`LogitAnnealingLoss` (Lai, Huang, Kung & Chen, "Enhancing certified robustness via block
  reflector orthogonal layers and logit annealing loss", ICML 2025): EMMA's logits, an offset and a
  temperature, weighted focal-style by :math:`(1 - p_y)^\gamma`.

The papers' offsets are constants in logit units of 1-Lipschitz networks (AOL: :math:`\sqrt2`,
LA: 2, at ε = 36/255), i.e. radii :math:`u = \text{offset}/\sqrt 2` in input units. A monDEQ's
logits have no fixed scale (scaling the head scales :math:`h` and :math:`K` alike), so a constant
logit offset would be meaningless; the offset here is a radius, :math:`\rho\,\varepsilon_k`, paid
pairwise as :math:`\rho\,\varepsilon_k K_{yj}`, with ρ = 1 by default (the margin that certifies
ε_k). Temperatures and γ are the papers' defaults.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InvalidSettingError
from ..models.classifier import MonDEQClassifier
from .losses import LipschitzMarginLoss

__all__ = ["CERTIFIED_LOSSES", "EMMALoss", "LogitAnnealingLoss", "OffsetCrossEntropyLoss",
           "emma_logits", "make_certified_loss"]


def emma_logits(logits: Tensor, labels: Tensor, margin_lip: Tensor, eps: float, *,
                floor: float = 0.01) -> Tensor:
    r"""EMMA's logits: every wrong logit raised by its own certified-radius gap, radius detached.

    .. math:: \tilde h_j = h_j + \mathrm{sg}(\varepsilon_j)\,K_{yj},\qquad
              \varepsilon_j = \varepsilon\,\mathrm{clip}\Big(\frac{h_y - h_j}{\varepsilon K_{yj}},
              \ \phi,\ 1\Big)\quad (j \ne y),\qquad \tilde h_y = h_y .

    The gradient flows through :math:`h` and :math:`K` but not through :math:`\varepsilon_j`
    (Hu et al. 2023, Eq. 5): a class already certified beyond ε is pushed at the full ε, a class
    nearer than ε only by its current radius, so the loss does not fight for classes it cannot yet
    separate. φ = 0.01 is the floor of the authors' code (the paper clips at 0).

    Args:
        logits: :math:`h`, shape (batch, K).
        labels: shape (batch,).
        margin_lip: :math:`K`, shape (K, K), :math:`K_{yy} = 0`.
        eps: ε > 0 (pixel scale).
        floor: φ, the smallest fraction of ε a class is pushed by.

    Returns:
        :math:`\tilde h`, shape (batch, K).
    """
    k_y = margin_lip[labels]
    gap = logits.gather(1, labels[:, None]) - logits
    fraction = (gap / (eps * k_y).clamp(min=1e-8)).clamp(floor, 1.0)
    return logits + (eps * fraction).detach() * k_y  # K_yy = 0 leaves the true logit


class EMMALoss(LipschitzMarginLoss):
    r"""EMMA margin maximisation (Hu et al., NeurIPS 2023): :math:`\mathrm{CE}(\tilde h, y)` with
    :math:`\tilde h` of :func:`emma_logits` at the scheduled :math:`\varepsilon_k`.

    Args:
        model, eps, ramp_steps, warmup_steps, lipschitz_penalty, lipschitz_target, power_iterations:
            as :class:`~mondeq.robustness.losses.LipschitzMarginLoss`.
        floor: φ of :func:`emma_logits` (0.01, the authors' code).
    """

    def __init__(self, model: MonDEQClassifier, eps: float, *, floor: float = 0.01, **schedule) -> None:
        super().__init__(model, eps, **schedule)
        if not 0 <= floor <= 1:
            raise InvalidSettingError(f"EMMA's floor must be in [0, 1], got {floor}")
        self.floor = float(floor)

    def objective(self, logits: Tensor, labels: Tensor, margin_lip: Tensor | None, eps: float) -> Tensor:
        if margin_lip is not None:
            logits = emma_logits(logits, labels, margin_lip, eps, floor=self.floor)
        return nn.functional.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, floor={self.floor:g}"


class OffsetCrossEntropyLoss(LipschitzMarginLoss):
    r"""Offset cross entropy with a temperature (Prach & Lampert, ECCV 2022; SLL, Araujo et al.,
    ICLR 2023), with the pairwise offset of a monDEQ:

    .. math:: \ell = T\,\mathrm{CE}\big((h + \rho\,\varepsilon_k K_{y\cdot})/T,\ y\big).

    With :math:`K_{yj} = \sqrt 2` (a 1-Lipschitz network) this is AOL's
    :math:`T\,\mathrm{CE}((h - \sqrt2\,u\,e_y)/T)` with :math:`u = \rho\varepsilon_k`. A small
    temperature makes the loss nearly the hinge :math:`\max_j(\tilde h_j - \tilde h_y)_+` on
    the worst-case margins; the factor T keeps its gradients of order one.

    Args:
        model, eps, ramp_steps, warmup_steps, lipschitz_penalty, lipschitz_target, power_iterations:
            as :class:`~mondeq.robustness.losses.LipschitzMarginLoss`.
        temperature: T (1/4, AOL's code).
        offset: ρ, the offset radius as a multiple of ε_k (1: the margin that certifies ε_k).
    """

    def __init__(self, model: MonDEQClassifier, eps: float, *, temperature: float = 0.25,
                 offset: float = 1.0, **schedule) -> None:
        super().__init__(model, eps, **schedule)
        if not temperature > 0 or not offset >= 0:
            raise InvalidSettingError(f"need temperature > 0 and offset >= 0, got {temperature}, {offset}")
        self.temperature, self.offset = float(temperature), float(offset)

    def objective(self, logits: Tensor, labels: Tensor, margin_lip: Tensor | None, eps: float) -> Tensor:
        if margin_lip is not None:
            logits = logits + self.offset * eps * margin_lip[labels]
        return self.temperature * nn.functional.cross_entropy(logits / self.temperature, labels)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature:g}, offset={self.offset:g}"


class LogitAnnealingLoss(LipschitzMarginLoss):
    r"""Logit annealing (Lai, Huang, Kung & Chen, ICML 2025): offset cross entropy on EMMA's
    logits, weighted focal-style so that well-certified examples stop pulling.

    .. math:: z = \tilde h + \rho\,\varepsilon_k K_{y\cdot},\qquad
              c = \mathrm{CE}(z/T,\ y),\qquad p_y = e^{-c},\qquad
              \ell = T\,(1 - p_y)^{\gamma}\,c \quad\text{(batch mean)},

    :math:`\tilde h` from :func:`emma_logits`. The weight :math:`(1 - p_y)^\gamma` (not detached,
    as in the authors' code) anneals the push on examples whose margin is already large, leaving
    capacity to the examples near the boundary. Defaults T = 0.75, γ = 5 are the paper's (its
    offset 2 is a logit constant of a 1-Lipschitz network; here the offset is the radius ρε_k).

    Args:
        model, eps, ramp_steps, warmup_steps, lipschitz_penalty, lipschitz_target, power_iterations:
            as :class:`~mondeq.robustness.losses.LipschitzMarginLoss`.
        temperature: T.
        gamma: γ ≥ 0 (0: offset cross entropy on EMMA's logits).
        offset: ρ, as :class:`OffsetCrossEntropyLoss`.
        floor: φ of :func:`emma_logits`.
    """

    def __init__(self, model: MonDEQClassifier, eps: float, *, temperature: float = 0.75,
                 gamma: float = 5.0, offset: float = 1.0, floor: float = 0.01, **schedule) -> None:
        super().__init__(model, eps, **schedule)
        if not temperature > 0 or not gamma >= 0 or not offset >= 0 or not 0 <= floor <= 1:
            raise InvalidSettingError(f"need temperature > 0, gamma >= 0, offset >= 0, floor in [0, 1]; got "
                                      f"{temperature}, {gamma}, {offset}, {floor}")
        self.temperature, self.gamma = float(temperature), float(gamma)
        self.offset, self.floor = float(offset), float(floor)

    def objective(self, logits: Tensor, labels: Tensor, margin_lip: Tensor | None, eps: float) -> Tensor:
        if margin_lip is not None:
            logits = (emma_logits(logits, labels, margin_lip, eps, floor=self.floor)
                      + self.offset * eps * margin_lip[labels])
        ce = nn.functional.cross_entropy(logits / self.temperature, labels, reduction="none")
        weight = (1 - torch.exp(-ce)).clamp(min=0) ** self.gamma
        return (self.temperature * weight * ce).mean()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, temperature={self.temperature:g}, gamma={self.gamma:g}, "
                f"offset={self.offset:g}, floor={self.floor:g}")


CERTIFIED_LOSSES: dict[str, type[LipschitzMarginLoss]] = {
    "margin": LipschitzMarginLoss, "emma": EMMALoss, "offset-ce": OffsetCrossEntropyLoss,
    "logit-annealing": LogitAnnealingLoss}
"""The certified-training losses by the name ``--loss`` gives them."""


def make_certified_loss(name: str, model: MonDEQClassifier, eps: float, **options) -> LipschitzMarginLoss:
    """The loss ``name`` (:data:`CERTIFIED_LOSSES`) for ``model`` at radius ``eps``; ``options`` go
    to its constructor (schedule, penalty, and the loss's own hyperparameters).

    Raises:
        InvalidSettingError: an unknown name.
    """
    if name not in CERTIFIED_LOSSES:
        raise InvalidSettingError(f"unknown certified-training loss {name!r}; choose one of {list(CERTIFIED_LOSSES)}")
    return CERTIFIED_LOSSES[name](model, eps, **options)
