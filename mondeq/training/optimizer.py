"""The optimizer every training program of the library uses: Adam, fused where PyTorch can.

PyTorch's default Adam on the CPU runs its update as about eight small operations per
parameter (the single-tensor path); ``fused=True`` does the whole update of a parameter in one
kernel. On the paper's FC model (six parameters, 84 k values, one CPU thread) the optimizer
step measured 198 µs fused against 450 µs (``experiments/bench_step.py`` reports the whole
training step). The update is Adam's either way; the two differ only in rounding.

A checkpoint keeps its optimizer's settings, ``fused`` among them, so a run resumed from an
older checkpoint goes on with the Adam it started with (bit-exact resume holds).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices


def adam(parameters: Iterable[torch.nn.Parameter], *, lr: float) -> torch.optim.Adam:
    """Adam over ``parameters`` (all of them, frozen ones too, so that a checkpoint's optimizer
    state lines up with the model's parameters as before), fused when every one sits on a device
    (and in a floating dtype) that the fused kernel supports, else PyTorch's default path."""
    params = list(parameters)
    fused = bool(params) and all(p.device.type in _get_fused_kernels_supported_devices()
                                 and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)
