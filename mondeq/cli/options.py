"""argparse types shared by every program: each refuses a bad value with a message naming it."""
from __future__ import annotations

import argparse
from pathlib import Path

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


def data_root_arg(text: str) -> Path:
    """argparse type of ``--data-root``: a folder (it need not exist yet), never a file."""
    path = Path(text)
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is a file; give the folder that holds mnist/, cifar10/, svhn/ "
                                         "(or the files in torchvision's layout)")
    return path


def default_device() -> str:
    """The one ``--device`` default of every command: cuda when available, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def hidden_alias(parser: argparse.ArgumentParser, old: str, *, dest: str, **kwargs) -> None:
    """Accept ``old`` (a former spelling, e.g. ``--batch``) for the option stored in ``dest``,
    without listing it in ``--help``; ``kwargs`` are the option's own (its ``type``, ``nargs``)."""
    parser.add_argument(old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a RUN names: ``path`` itself, or ``path/checkpoint.pt`` for a run folder.

    Raises:
        FileNotFoundError: no such file, or a folder without ``checkpoint.pt`` (the message says
            how to make one).
    """
    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        where = f"{path} holds no checkpoint.pt" if path.is_dir() else f"no checkpoint at {path}"
        raise FileNotFoundError(f"{where}; give a run folder (mondeq train --out FOLDER) or its "
                                "checkpoint.pt")
    return file
