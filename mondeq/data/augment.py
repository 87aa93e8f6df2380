"""Data augmentation on a whole batch with torch ops, on the batch's device.

Random crop with zero padding and (optionally) a random horizontal flip, drawn independently
per sample from a ``torch.Generator`` that lives on the batch's device: the same seed gives the
same crops and flips, and nothing leaves the device. For an (N, C, H, W) batch and padding p,
sample n gets offsets (i_n, j_n) uniform in {0, …, 2p}² and a flip bit f_n, and

.. math::  y_{n,c,r,s} = \\tilde x_{n,c,\\,i_n + r,\\; j_n + (f_n ? W-1-s : s)}

where x̃ is x zero-padded by p on every side. One gather does the crop and the flip together.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .specs import DatasetSpec

__all__ = ["Augmentation", "random_crop_flip"]


def random_crop_flip(x: Tensor, *, padding: int = 4, flip: bool, generator: torch.Generator
                     ) -> Tensor:
    """Randomly crops (after zero padding) and optionally flips every image of a batch.

    Args:
        x: Images (N, C, H, W), any dtype, on any device.
        padding: Zero pixels added on each side before cropping back to H×W (≥ 0).
        flip: Also flip each image left-right with probability 1/2.
        generator: Source of randomness; must live on ``x.device``. Per call it draws N×2
            offsets, then (if ``flip``) N flip bits.

    Returns:
        A new tensor of the same shape, dtype and device (``x`` itself when ``padding == 0`` and
        not ``flip``: then nothing is random). Sample order is kept.

    Raises:
        ValueError: If ``padding`` is negative, ``x`` is not 4-D, or the generator is on
            another device.
    """
    if padding < 0:
        raise ValueError(f"padding must be ≥ 0, got {padding}")
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(x.shape)}")
    if padding == 0 and not flip:
        return x
    if generator.device.type != x.device.type:
        raise ValueError(f"the generator lives on {generator.device} but the batch on {x.device};"
                         " create the generator on the batch's device")
    n, c, h, w = x.shape
    dev = x.device
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=dev)
    rows = offsets[:, :1] + torch.arange(h, device=dev)                    # (N, H)
    cols = torch.arange(w, device=dev).expand(n, w)                        # (N, W)
    if flip:
        flipped = torch.randint(0, 2, (n, 1), generator=generator, device=dev).bool()
        cols = torch.where(flipped, (w - 1) - cols, cols)
    cols = offsets[:, 1:] + cols
    padded = torch.nn.functional.pad(x, (padding,) * 4) if padding else x
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chan = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


class Augmentation:
    """Random crop (zero padding) and optional horizontal flip, with its own generator.

    Call it on each training batch. Its generator state is part of :meth:`state_dict`, so a
    run resumed from a checkpoint draws exactly the crops and flips it would have drawn.

    Args:
        spec_or_flip: A :class:`DatasetSpec` (its ``flip`` field decides) or a bool.
        padding: Zero pixels on each side before the crop (the paper's 4).
        seed: Seed of the generator.
        device: Device of the generator; must be the device of the batches.

    Example:
        >>> augment = Augmentation(DATASETS["cifar10"], seed=0, device="cpu")
        >>> x = augment(images[:128])          # same shape, new crops and flips
    """

    def __init__(self, spec_or_flip: DatasetSpec | bool, *, padding: int = 4, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.flip = spec_or_flip.flip if isinstance(spec_or_flip, DatasetSpec) else bool(spec_or_flip)
        if padding < 0:
            raise ValueError(f"padding must be ≥ 0, got {padding}")
        self.padding = int(padding)
        self.seed = int(seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)

    def __call__(self, x: Tensor) -> Tensor:
        """Returns the augmented batch (see :func:`random_crop_flip`)."""
        return random_crop_flip(x, padding=self.padding, flip=self.flip, generator=self.generator)

    def __repr__(self) -> str:
        return (f"Augmentation(padding={self.padding}, flip={self.flip}, seed={self.seed}, "
                f"device={self.generator.device})")

    def state_dict(self) -> dict[str, Any]:
        """Returns padding, flip, seed and the generator state (a CPU uint8 tensor)."""
        return {"padding": self.padding, "flip": self.flip, "seed": self.seed,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`, so the next call draws what the saved one would."""
        self.padding, self.flip, self.seed = int(state["padding"]), bool(state["flip"]), int(state["seed"])
        self.generator.set_state(state["generator"].cpu())
