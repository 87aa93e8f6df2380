"""argparse types shared by every program: each refuses a bad value with a message naming it."""
from __future__ import annotations

import argparse
import sys
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


def _int_at_least(text: str, low: int, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {name} (>= {low}), got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1 (a count of steps, images, iterations, ...)."""
    return _int_at_least(text, 1, "a positive integer")


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
    """The checkpoint a RUN names: ``path`` itself, ``path/checkpoint.pt`` for a run folder, or
    the shipped checkpoint of the pretrained model of that name (:func:`mondeq.pretrained`).

    Raises:
        FileNotFoundError: no such file, or a folder without ``checkpoint.pt`` (the message says
            how to make one).
    """
    from ..pretrained.registry import resolve_run

    path = resolve_run(path)  # a pretrained model's name: its shipped checkpoint
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        where = f"{path} holds no checkpoint.pt" if path.is_dir() else f"no checkpoint at {path}"
        raise FileNotFoundError(f"{where}; give a run folder (mondeq train --out FOLDER) or its "
                                "checkpoint.pt")
    return file


def non_negative_int(text: str) -> int:
    """An argparse type: an integer ≥ 0 (warm-up steps, a count that may be none)."""
    return _int_at_least(text, 0, "an integer ≥ 0")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default said once: appended as ``(default: X)`` unless the
    help already names its default, and left out where it says nothing (None, a switch's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "default" in help_text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return help_text
        return super()._get_help_string(action)


RUN_HELP = "a run of mondeq train: its --out folder or its checkpoint.pt"


def run_argument(parser: argparse.ArgumentParser, *, help: str = RUN_HELP) -> None:  # noqa: A002
    """The run as the first positional argument (``args.run``), every command's convention; the
    former ``--checkpoint RUN`` is still accepted (hidden, deprecated): :func:`chosen_run`
    reconciles the two after parsing."""
    parser.add_argument("run", type=Path, nargs="?", default=None, metavar="RUN", help=help)
    parser.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)


def chosen_run(parser: argparse.ArgumentParser, args: argparse.Namespace, *,
               required: bool = True) -> Path | None:
    """``args.run`` after :func:`run_argument`: the positional RUN, or the deprecated
    ``--checkpoint RUN`` (with a note on stderr); refuses both at once, and none when required."""
    old = vars(args).pop("checkpoint", None)
    if old is not None:
        if args.run is not None:
            parser.error(f"give the run once: {args.run} or --checkpoint {old} (deprecated), not both")
        print(f"note: --checkpoint is deprecated; give the run first: {parser.prog} {old} ...",
              file=sys.stderr)
        args.run = old
    if args.run is None and required:
        parser.error("the run is required: give its folder (mondeq train --out FOLDER) or its "
                     "checkpoint.pt as the first argument")
    return args.run


def run_data_root(given: Path | None, config: dict) -> Path | None:
    """The data root for a command on a trained run: ``--data-root`` when given, else the one
    the run was trained with (its saved ``data_root``) when that folder still exists, else None
    (the data-root rule: ``$MONDEQ_DATA``, the checkout's ``data/``, ``~/.cache/mondeq``)."""
    if given is not None:
        return given
    saved = config.get("data_root")
    return Path(saved) if saved and Path(saved).is_dir() else None
