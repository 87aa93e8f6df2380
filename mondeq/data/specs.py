"""What each dataset is (shape, classes, channel statistics) and per-channel normalisation.

.. math::  \\hat x_{c} = (x_{c} - \\mu_c) / \\sigma_c

with the training set's per-channel pixel mean μ and standard deviation σ (pixels in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from .mnist import MNIST_MEAN, MNIST_STD

__all__ = ["DATASETS", "DatasetSpec", "denormalize", "normalize", "normalize_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is.

    Attributes:
        name: Key in :data:`DATASETS` and the data root's subfolder.
        in_channels: Image channels (1 or 3).
        image_size: Height = width of an image.
        num_classes: Number of labels (0..num_classes−1).
        mean: Per-channel mean of the training pixels in [0, 1].
        std: Per-channel standard deviation of the training pixels in [0, 1].
        flip: Whether a horizontal flip is a valid augmentation (not for digits).
    """

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool


#: The datasets the library reads. CIFAR-10's and SVHN's statistics are the ones the monDEQ
#: paper's code normalises with (locuslab/monotone_op_net, train.py: ``cifar_loaders`` and
#: ``svhn_loaders``); CIFAR-10's are its true per-channel training std (0.2470, 0.2435, 0.2616),
#: not the often-copied (0.2023, 0.1994, 0.2010).
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", 1, 28, 10, (MNIST_MEAN,), (MNIST_STD,), flip=False),
    "fashion-mnist": DatasetSpec("fashion-mnist", 1, 28, 10, (FASHION_MNIST_MEAN,),
                                 (FASHION_MNIST_STD,), flip=True),
    "cifar10": DatasetSpec("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), flip=True),
    "svhn": DatasetSpec("svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728),
                        (0.1980, 0.2010, 0.1970), flip=False),
}


def _channel_stats(images: Tensor, mean: float | Sequence[float], std: float | Sequence[float]
                   ) -> tuple[Tensor | float, Tensor | float]:
    """Checks μ, σ and shapes them to broadcast over (..., C, H, W)."""
    if isinstance(mean, (int, float)) and isinstance(std, (int, float)):
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        return float(mean), float(std)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).reshape(-1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).reshape(-1)
    if not bool((s > 0).all()):
        raise ValueError(f"std must be positive in every channel, got {tuple(s.tolist())}")
    channels = max(m.numel(), s.numel())
    if m.numel() not in (1, channels) or s.numel() not in (1, channels):
        raise ValueError(f"mean has {m.numel()} values and std {s.numel()}; give one per channel")
    if channels > 1 and (images.dim() < 3 or images.shape[-3] != channels):
        raise ValueError(f"{channels} per-channel statistics for images of shape "
                         f"{tuple(images.shape)}: expected (..., {channels}, H, W)")
    return m.reshape(-1, 1, 1), s.reshape(-1, 1, 1)


def normalize(images: Tensor, mean: float | Sequence[float] = MNIST_MEAN,
              std: float | Sequence[float] = MNIST_STD) -> Tensor:
    """Returns ``(images - mean) / std`` as a new tensor.

    Args:
        images: Pixel tensor, typically in [0, 1], shape (N, C, H, W) for per-channel values.
        mean: Value subtracted: one number, or one per channel.
        std: Value divided by: one positive number, or one per channel.

    Raises:
        ValueError: If ``std`` is not positive or the channel counts do not match.
    """
    m, s = _channel_stats(images, mean, std)
    return (images - m) / s


def denormalize(images: Tensor, mean: float | Sequence[float] = MNIST_MEAN,
                std: float | Sequence[float] = MNIST_STD) -> Tensor:
    """Inverts :func:`normalize`: returns ``images * std + mean``.

    Raises:
        ValueError: If ``std`` is not positive or the channel counts do not match.
    """
    m, s = _channel_stats(images, mean, std)
    return images * s + m


def dataset_spec(name: str) -> DatasetSpec:
    """Returns ``DATASETS[name]`` or raises a ValueError listing the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None


def normalize_dataset(images: Tensor, name: str) -> Tensor:
    """Normalises images of dataset ``name`` with its per-channel statistics (:data:`DATASETS`).

    Args:
        images: (N, C, H, W) pixels in [0, 1].
        name: "mnist", "fashion-mnist", "cifar10" or "svhn".
    """
    spec = dataset_spec(name)
    if len(spec.mean) == 1:  # one channel: scalars, no statistics tensor made on the device per call
        return normalize(images, spec.mean[0], spec.std[0])
    return normalize(images, spec.mean, spec.std)
