"""argparse types shared by every program: each refuses a bad value with a message naming it."""
from __future__ import annotations

import argparse

import torch


def device_arg(text: str) -> torch.device:
    """``--device`` for argparse (``type=device_arg``): a torch device that exists on this machine."""
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("CUDA is not available on this machine; use --device cpu")
    return device


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1 (a count of steps, images, iterations, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite float > 0 (a tolerance, a step size, a radius)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value
