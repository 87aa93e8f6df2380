"""Why a file could not be loaded as a checkpoint, said exactly: never "corrupt" unless proven.

A load can fail for reasons that have nothing to do with the file: the device it is loaded onto
does not exist on this machine (``map_location="cuda"`` without CUDA), or the user named another
file of the run (``results.json``, ``curves.png``). Only a file that starts like a torch file and
then cannot be decoded (an empty file, a cut zip archive) is reported as damaged. The messages
say what the file is and what to do; none of them asks to delete a file that may be good.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, DeviceUnavailableError

__all__ = ["check_device", "describe_content", "not_a_checkpoint", "unreadable"]

#: What torch.load raises for a file it cannot decode (a denied permission, a missing file and an
#: out-of-memory error are reported as they are).
LOAD_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError,
               AttributeError, ImportError, IndexError, KeyError, TypeError)

ZIP, PICKLE, PNG, GZIP = b"PK\x03\x04", b"\x80", b"\x89PNG", b"\x1f\x8b"


def check_device(map_location: Any, path: str | os.PathLike[str]) -> None:
    """Refuse a ``map_location`` naming a device this machine lacks, before the file is read.

    Raises:
        DeviceUnavailableError: naming the device, why it is unavailable and how to load on the
            CPU instead (the file is not judged).
    """
    if not isinstance(map_location, (str, torch.device)):
        return  # a dict or a callable: torch.load applies it tensor by tensor
    try:
        device = torch.device(map_location)
    except RuntimeError as err:
        raise DeviceUnavailableError(f"cannot load {path}: map_location={map_location!r} is not a torch "
                                     f"device ({err})") from None
    if device.type in ("cpu", "meta"):
        return
    try:
        torch.empty(0, device=device)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, AssertionError, ...
        raise DeviceUnavailableError(unavailable(device, err, path)) from None


def unavailable(device: torch.device, err: BaseException, path: str | os.PathLike[str]) -> str:
    """The message for loading ``path`` onto ``device``, which failed with ``err``."""
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "CUDA is not available on this machine (torch.cuda.is_available() is False)"
    elif device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        why = f"this machine has {count} CUDA device(s): cuda:0 … cuda:{count - 1}"
    else:
        why = " ".join(str(err).split()) or type(err).__name__
    return (f"cannot load {path} onto {device}: {why}. The file was not read and may be fine: load it "
            "with map_location='cpu' (mondeq commands: --device cpu)")


def unreadable(path: str | os.PathLike[str], err: BaseException) -> BaseException:
    """The error to raise when ``torch.load(path)`` failed with ``err``: a
    :class:`~mondeq.errors.DeviceUnavailableError`, a :class:`~mondeq.errors.CheckpointError`
    saying what the file is, or ``err`` itself (an OSError with an errno, out of memory)."""
    text = " ".join(str(err).split())
    if isinstance(err, (torch.OutOfMemoryError, PermissionError, FileNotFoundError, IsADirectoryError)):
        return err  # not the file's content (torch's reader raises other OSErrors on a cut archive)
    if "deserialize object on" in text or "torch.cuda.is_available() is False" in text:
        return DeviceUnavailableError(f"cannot load {path}: it holds tensors saved on a device this machine "
                                      f"lacks ({text}). The file may be fine: load it with "
                                      "map_location='cpu' (mondeq commands: --device cpu)")
    what, advice = describe_content(Path(path), err)
    return CheckpointError(f"cannot read checkpoint {path}: {what}. {advice}")


def describe_content(path: Path, err: BaseException) -> tuple[str, str]:
    """What ``path`` holds, from its first bytes, and what to do, given that torch.load failed."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError as read_err:
        return f"it cannot be read ({read_err})", "Check the file's permissions"
    first = " ".join(str(err).split()).split(". ")[0]  # torch's first sentence says what failed
    detail = f"{type(err).__name__}: {first[:200]}"
    give = "Give a run folder or its checkpoint.pt (written by mondeq train or mondeq.save_checkpoint)"
    if size == 0:
        return ("the file is empty (0 bytes): a save or a copy was cut off, nothing is left to load",
                "Restore it from a copy, or train the run again")
    if head.startswith(ZIP):
        if "data.pkl" in detail or "archive/" in detail:
            return f"it is a zip archive but not a torch file ({detail})", give
        if "Weights only load failed" in detail or "weights_only" in detail:
            return ("it is a torch file holding Python objects beyond tensors and plain values (e.g. a "
                    "pickled model), not a checkpoint written by mondeq.save_checkpoint; it was not "
                    "unpickled because loading runs no code from files (weights_only=True)"), give
        return (f"it starts as a torch file (a zip archive) but cannot be decoded: it is truncated or "
                f"damaged ({detail})",
                "Restore it from a copy, or train the run again (mondeq train --overwrite)")
    if head.startswith(PNG):
        return "it is a PNG image (a run's curves.png or certify.png?), not a checkpoint", give
    if head.startswith(GZIP):
        return "it is a gzip file (a dataset file?), not a checkpoint", give
    if head.startswith(PICKLE):
        return (f"it is a pickle (the format of torch before 1.6) that cannot be loaded as a checkpoint "
                f"({detail})", give)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return (f"it is neither a torch file (a zip archive) nor a pickle: its first bytes are "
                f"{head[:8]!r}"), give
    return f"it is {text_kind(path, text, complete=size <= len(head))}, not a checkpoint", give


def text_kind(path: Path, text: str, *, complete: bool) -> str:
    """A text file in words: a run's results.json, another JSON file, or text."""
    if text.lstrip().startswith(("{", "[")) and complete:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict) and "history" in value and "config" in value:
            beside = path.parent / "checkpoint.pt"
            return "a run's results.json" + (f" (its checkpoint is {beside}: give that, or the folder "
                                              f"{path.parent})" if beside.is_file() and beside != path else "")
        if value is not None:
            return "a JSON file"
    return f"a text file ({path.suffix or 'no suffix'})"


def not_a_checkpoint(path: str | os.PathLike[str], state: Any, required: tuple[str, ...]) -> str | None:
    """Why a loaded object is not a checkpoint with the keys ``required`` (None when it is)."""
    if not isinstance(state, dict):
        return (f"checkpoint {path} holds a {type(state).__name__}, not the dictionary "
                "mondeq.save_checkpoint writes")
    missing = [k for k in required if k not in state]
    if not missing:
        return None
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return (f"checkpoint {path} holds a bare state_dict ({len(state)} tensors) without the run's "
                f"config: rebuild the model yourself and call model.load_state_dict(torch.load({str(path)!r}))")
    return f"checkpoint {path} lacks {', '.join(missing)}: not a file written by mondeq.save_checkpoint"
