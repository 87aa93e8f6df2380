"""An in-memory dataset served on the training device without per-step host stalls.

When the dataset fits (MNIST: 188 MB, CIFAR-10: 614 MB in float32), it is copied to the device
once and batches are gathered there by index. Otherwise it stays in page-locked (pinned) host
memory, each batch is gathered into a pinned buffer and copied with ``non_blocking=True``, so the
copy overlaps the previous step's work. On CPU the tensors are used as they are.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["DeviceData"]


class DeviceData:
    """Images and labels placed for training on ``device``; batches by index lists.

    Args:
        images: (N, ...) inputs on the CPU.
        labels: (N,) targets on the CPU.
        device: the training device.
        max_fraction: on an accelerator, move the whole dataset there when it takes at most this
            fraction of the device's free memory; otherwise serve batches from pinned memory.

    Attributes:
        on_device: whether the whole dataset lives on ``device``.
    """

    def __init__(self, images: Tensor, labels: Tensor, device: str | torch.device, *,
                 max_fraction: float = 0.5) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images and labels differ in length: {images.shape[0]} vs {labels.shape[0]}")
        self.device = torch.device(device)
        nbytes = images.numel() * images.element_size() + labels.numel() * labels.element_size()
        self.on_device = self.device.type == "cpu" or nbytes <= max_fraction * _free_bytes(self.device)
        if self.on_device:
            self.images, self.labels = images.to(self.device), labels.to(self.device)
        else:
            self.images, self.labels = images.pin_memory(), labels.pin_memory()

    def __len__(self) -> int:
        return self.images.shape[0]

    def batches(self, indices: Sequence[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(images[i], labels[i])`` on the device for each index tensor ``i`` of ``indices``."""
        if not indices:
            return
        if self.device.type == "cpu":
            for idx in indices:
                yield self.images[idx], self.labels[idx]
            return
        # one host-to-device copy of all indices (pinned, so it does not stall), then views
        sizes = [len(i) for i in indices]
        flat = torch.cat(list(indices)).pin_memory()
        if self.on_device:
            for idx in torch.split(flat.to(self.device, non_blocking=True), sizes):
                yield self.images[idx], self.labels[idx]
            return
        for idx in torch.split(flat, sizes):
            x = torch.empty((len(idx), *self.images.shape[1:]), dtype=self.images.dtype, pin_memory=True)
            y = torch.empty((len(idx),), dtype=self.labels.dtype, pin_memory=True)
            torch.index_select(self.images, 0, idx, out=x)
            torch.index_select(self.labels, 0, idx, out=y)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _free_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    return float("inf")  # other accelerators: assume it fits (they share host memory or say so)
