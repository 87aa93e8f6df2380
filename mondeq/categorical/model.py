r"""A monotone deep Boltzmann machine that completes images and classifies them, in one equilibrium.

The state holds one categorical variable per pixel (K intensity bins), hidden variables, and one
label variable (10 values), as tiers (:mod:`mondeq.categorical.prox`). Observed pixels are
clamped to their bins; the rest, and the label, are the unique mean-field fixed point

.. math:: q = \mathrm{softmax}_{\text{blockwise}}(Wq + b)\ \text{on the free variables},
          \qquad W = D - A^\top A \ \text{(hollow, } I - W \succeq mI),

found by any splitting method of :data:`splitting.SOLVERS` (but Newton, which needs an
elementwise derivative) and differentiated implicitly
(:mod:`mondeq.categorical.implicit`). Feng, Winston & Kolter, "Monotone deep Boltzmann
machines", TMLR 2023.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from splitting import SOLVERS, EquilibriumStats, State
from ..errors import InvalidSettingError, StateShapeError
from .implicit import categorical_equilibrium
from .prox import Clamp, SimplexEntropy, grouped, one_hot_state

METHODS = ("fb", "pr", "dr", "anderson-pr", "anderson-fb")


@dataclass
class Completion:
    """What one mean-field solve says about a batch of images.

    Attributes:
        pixels: per-pixel bin probabilities, ``(B, H, W, K)`` (one-hot on observed pixels).
        label: label probabilities, ``(B, classes)``.
        state: the whole fixed point (every tier).
        stats: the solver results.
    """

    pixels: Tensor
    label: Tensor
    state: State
    stats: EquilibriumStats
    bin_values: Tensor

    def expected_intensity(self) -> Tensor:
        """The expected intensity under each pixel's marginal, ``(B, H, W)``: Σ_a q_a·value_a with
        the model's per-bin values (:meth:`CompletionDBM.set_bin_values`)."""
        return self.pixels @ self.bin_values.to(self.pixels.dtype)


class CompletionDBM(nn.Module):
    r"""Joint image completion and classification by a monotone DBM (module docstring).

    Args:
        coupling: a hollow monotone parametrisation (:class:`~mondeq.categorical.dense.HollowDense`
            or :class:`~mondeq.categorical.conv.HollowMultiTier`); tier 0 holds the pixels, the
            last tier the label.
        image_shape: ``(H, W)``.
        solver: a method of :data:`METHODS`.
        alpha, tol, max_iter: its settings (α ≤ 1 for the methods that apply the prox at α,
            which all do: FB needs α < 2m/L² for its guarantee, the Rachford methods any α).
    """

    def __init__(self, coupling: nn.Module, *, image_shape: tuple[int, int] = (28, 28),
                 solver: str = "pr", alpha: float = 1.0, tol: float = 1e-2, max_iter: int = 200) -> None:
        super().__init__()
        if solver not in METHODS:
            raise InvalidSettingError(f"solver must be one of {METHODS}, got {solver!r}")
        self.coupling = coupling
        self.image_shape = tuple(int(s) for s in image_shape)
        self.sizes = tuple(coupling.sizes)
        self.bins, self.classes = self.sizes[0], self.sizes[-1]
        shapes = coupling.state_shape
        pixels = self.bins * self.image_shape[0] * self.image_shape[1]
        if _numel(shapes[0]) != pixels or _numel(shapes[-1]) != self.classes:
            raise StateShapeError(f"tier 0 must hold {pixels} pixel channels and the last tier "
                                  f"{self.classes} label channels; the coupling has {shapes}")
        self.bias = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in shapes])
        # the intensity each bin stands for: its centre until set from data
        self.register_buffer("bin_values", (torch.arange(self.bins, dtype=self.bias[0].dtype) + 0.5) / self.bins)
        self.solver, self.alpha, self.tol, self.max_iter = solver, float(alpha), float(tol), int(max_iter)

    @torch.no_grad()
    def set_bin_values(self, images: Tensor) -> None:
        """Each bin's value := the mean training intensity of the pixels in it, E[x | bin] (its centre
        if empty): at K = 2 a bin centre (¼, ¾) is far from MNIST's near-0 and near-1 pixels."""
        x = images.reshape(-1).to(self.bin_values.device, self.bin_values.dtype)
        bins = to_bins(x, self.bins)
        sums = torch.zeros_like(self.bin_values).index_add_(0, bins, x)
        counts = torch.zeros_like(self.bin_values).index_add_(0, bins, torch.ones_like(x))
        self.bin_values.copy_(torch.where(counts > 0, sums / counts.clamp_min(1), self.bin_values))

    @torch.no_grad()
    def set_bias_from_data(self, images: Tensor, labels: Tensor | None = None, *,
                           smoothing: float = 1.0) -> None:
        r"""Pixel biases := :math:`\log p_{hw}(k)`, the frequency of bin k at each position in
        ``images`` (``smoothing`` counts added to every bin), label biases := the log class
        frequencies of ``labels``; hidden tiers keep theirs. At W = 0 the mean field is then the
        data's per-position marginals instead of uniform ones: the usual start of a Boltzmann
        machine's visible biases (Hinton, "A practical guide to training RBMs", 2010, §8.1)."""
        bins = to_bins(images.reshape(images.shape[0], *self.image_shape).to(self.bin_values.device), self.bins)
        counts = nn.functional.one_hot(bins, self.bins).sum(0).to(self.dtype) + smoothing  # (H, W, K)
        self._set_tier_bias(0, (counts / counts.sum(-1, keepdim=True)).log())
        if labels is not None:
            counts = torch.bincount(labels.reshape(-1).to(bins.device), minlength=self.classes).to(self.dtype)
            counts = counts + smoothing
            self._set_tier_bias(len(self.sizes) - 1, (counts / counts.sum()).log())

    def _set_tier_bias(self, tier: int, values: Tensor) -> None:
        """Writes ``values`` laid out as :meth:`forward` reads the tier (pixels ``(H, W, K)``, the
        label ``(classes,)``) into the tier's bias."""
        bias = self.bias[tier]
        index = torch.arange(bias.numel(), device=bias.device).view(1, *bias.shape)
        if tier == 0:
            index = grouped(index, self.bins).movedim(2, -1).reshape(*self.image_shape, self.bins)
        bias.view(-1)[index.reshape(-1)] = values.reshape(-1).to(bias)

    def _groups(self, tier: int) -> tuple[int, ...]:
        shape = self.coupling.state_shape[tier]
        return (shape[0] // self.sizes[tier], *shape[1:])

    def clamp(self, bins: Tensor, observed: Tensor, labels: Tensor | None = None) -> Clamp:
        """The clamping of observed pixels (and, if given, of the label)."""
        b = bins.shape[0]
        if tuple(bins.shape[1:]) != self.image_shape or observed.shape != bins.shape:
            raise StateShapeError(f"bins and observed must be (B, {self.image_shape[0]}, {self.image_shape[1]}), "
                                  f"got {tuple(bins.shape)} and {tuple(observed.shape)}")
        groups = self._groups(0)
        masks: list[Tensor | None] = [observed.reshape(b, *groups)]
        values: list[Tensor | None] = [one_hot_state(bins.reshape(b, *groups), self.bins).to(self.dtype)]
        masks += [None] * (len(self.sizes) - 1)
        values += [None] * (len(self.sizes) - 1)
        if labels is not None:
            groups = self._groups(len(self.sizes) - 1)
            masks[-1] = torch.ones(b, *groups, dtype=torch.bool, device=bins.device)
            values[-1] = one_hot_state(labels.reshape(b, *groups), self.classes).to(self.dtype)
        return Clamp(masks, values)

    @property
    def dtype(self) -> torch.dtype:
        return self.bias[0].dtype

    def nonlinearity(self, clamp: Clamp | None) -> SimplexEntropy:
        return SimplexEntropy(self.sizes, clamp=clamp)

    def solve(self, clamp: Clamp | None, batch: int, *, solver: str | None = None,
              alpha: float | None = None, tol: float | None = None, z0: State | None = None):
        """The mean-field fixed point of ``batch`` samples under ``clamp`` (state, stats)."""
        op = self.coupling.operator()
        bias = tuple(p.unsqueeze(0).expand(batch, *p.shape) for p in self.bias)
        return categorical_equilibrium(
            op, self.nonlinearity(clamp), bias, solver=SOLVERS[solver or self.solver],
            alpha=self.alpha if alpha is None else alpha, tol=self.tol if tol is None else tol,
            max_iter=self.max_iter, z0=z0)

    def forward(self, bins: Tensor, observed: Tensor, **settings) -> Completion:
        """Complete and classify: ``bins`` (B, H, W) integer bins, ``observed`` (B, H, W) bool."""
        state, stats = self.solve(self.clamp(bins, observed), bins.shape[0], **settings)
        b = bins.shape[0]
        pixels = grouped(state[0], self.bins).movedim(2, -1).reshape(b, *self.image_shape, self.bins)
        return Completion(pixels, state[-1].reshape(b, self.classes), state, stats, self.bin_values)

    def complete(self, images: Tensor, observed: Tensor) -> Completion:
        """Complete images in [0, 1] (``(B, H, W)`` or ``(B, 1, H, W)``) from their ``observed``
        pixels (same shape, bool), without gradients."""
        images = images.reshape(images.shape[0], *self.image_shape)
        observed = observed.reshape(images.shape).to(torch.bool)
        with torch.no_grad():
            return self(to_bins(images, self.bins), observed)

    def loss(self, out: Completion, bins: Tensor, observed: Tensor, labels: Tensor,
             *, label_weight: float = 1.0) -> Tensor:
        """Cross-entropy on the hidden pixels (mean per hidden pixel) plus ``label_weight`` ×
        cross-entropy on the label (mean per image)."""
        tiny = torch.finfo(out.pixels.dtype).tiny
        picked = out.pixels.gather(-1, bins.unsqueeze(-1)).squeeze(-1).clamp_min(tiny).log()
        hidden = ~observed
        pixel_loss = -(picked * hidden).sum() / hidden.sum().clamp_min(1)
        label_loss = -out.label.gather(1, labels.view(-1, 1)).clamp_min(tiny).log().mean()
        return pixel_loss + label_weight * label_loss


def to_bins(images: Tensor, bins: int) -> Tensor:
    """Intensities in [0, 1] → bin indices floor(x·K), the top value in the last bin."""
    return torch.clamp((images * bins).floor().long(), 0, bins - 1)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
