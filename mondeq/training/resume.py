"""What a program needs, beyond the checkpoint itself, to resume the *same* run.

* The run's configuration comes from the checkpoint, not from the new command line: options the
  user typed again are accepted when they agree with it, refused by name when they do not
  (:func:`merge_saved_config`), and :func:`explicit_options` tells typed options from defaults.
* The data order needs no saved state when it is a pure function of (seed, epoch)
  (:func:`mondeq.training.data_order.epoch_order`).
* State that differs between processes (running sums, augmentation generators) is gathered from
  every rank before rank 0 writes it (:func:`gather_objects`).
"""
from __future__ import annotations

import argparse
import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..errors import ResumeConfigError
from .distributed import is_distributed

__all__ = ["ResumeConfigError", "explicit_options", "gather_objects", "merge_saved_config", "plain"]


def plain(value: Any) -> Any:
    """A configuration value as saved in a checkpoint (paths as strings)."""
    return str(value) if isinstance(value, Path) else value


def explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The ``dest`` names of the options present in ``argv``, whatever their values.

    Parses ``argv`` again with a copy of ``parser`` whose defaults are all suppressed, so an
    option typed with its default value still counts as given.
    """
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:  # argparse offers no public accessor for its actions
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def merge_saved_config(saved: dict, given: dict, explicit: Iterable[str], *,
                       may_change: Iterable[str], source: str | Path) -> dict:
    """The saved configuration, updated only where the user may and did change it.

    Args:
        saved: the configuration stored with the run.
        given: this invocation's parsed options (``vars(args)``).
        explicit: the options the user typed (:func:`explicit_options`).
        may_change: options a resumed run may take from the command line (e.g. the device or
            the output folder); every other typed option must equal the saved value.
        source: the checkpoint, named in the error message.

    Returns:
        ``given`` overwritten with the saved values of the options the user did not type (or
        may not change); keys absent from ``saved`` (options newer than the run) keep ``given``.

    Raises:
        ResumeConfigError: naming each typed option that contradicts the saved value.
    """
    explicit, may_change = set(explicit), set(may_change)
    conflicts = [f"--{k.replace('_', '-')} {plain(given[k])} (the run has {saved[k]})"
                 for k in sorted(explicit - may_change)
                 if k in saved and k in given and plain(given[k]) != saved[k]]
    if conflicts:
        raise ResumeConfigError(f"--resume continues the run saved in {source}, which was configured "
                                f"differently: {'; '.join(conflicts)}. Drop these options, or start "
                                "a new run with another --out.")
    merged = dict(given)
    for key, value in saved.items():
        if key in given and not (key in may_change and key in explicit):
            merged[key] = value
    return merged


def gather_objects(obj: Any) -> list:
    """``obj`` from every rank, in rank order, on every rank (``[obj]`` without a process group).
    A collective: every rank must call it."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
