"""Checkpoints that make a resumed run the same run: weights, optimizer, schedule, α, every RNG.

A run resumed from :func:`save_checkpoint`'s file continues exactly where the saved run stood:
with the same weights, Adam moments, learning-rate schedule position, splitting step α, α-tuner
state, random-number generators (torch CPU and, when present, every CUDA device's) and any extra
state the caller adds (augmentation generators, a loss's step counter). Together with a data
order that is a pure function of ``(seed, epoch)`` (:func:`mondeq.training.data_order.epoch_order`), a
run killed at any moment and resumed from its last checkpoint ends with weights bit-identical to
the uninterrupted run (same device, same thread count).

Writes are atomic: the state goes to a temporary file in the same folder, is flushed to disk,
and then renamed over the old checkpoint, so a kill during a save leaves the previous checkpoint
intact. Loading uses ``weights_only=True`` (no code runs from the file) and ``map_location``, so
a checkpoint written on CUDA loads on CPU and vice versa.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .unreadable import LOAD_ERRORS, check_device, not_a_checkpoint, unreadable

__all__ = ["CheckpointError", "capture_rng", "load_checkpoint", "read_checkpoint", "restore_rng",
           "save_checkpoint"]


CHECKPOINT_NAME = "checkpoint.pt"
"""The checkpoint's file name inside a run folder."""
RESUME_KEYS = ("model", "optimizer", "epoch", "history", "config")
"""What a checkpoint must hold to resume its run."""


def capture_rng() -> dict[str, Any]:
    """The global RNG states: torch CPU, and every CUDA device's when CUDA is initialised."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global RNGs from :func:`capture_rng` (CUDA states only where CUDA is available).

    A checkpoint from a CUDA run resumed on a CPU-only machine restores the CPU state; CUDA
    states for more devices than this machine has are applied to the devices it has.
    """
    torch.set_rng_state(state["cpu"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for device, rng in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng.cpu(), device)


def save_checkpoint(path: str | os.PathLike[str], *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int, history: list[dict], config: dict,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write everything needed to resume after ``epoch``, atomically.

    Args:
        path: the checkpoint file; its folder is created.
        model: the bare model (not a DDP wrapper: its ``state_dict`` keys would carry ``module.``).
            Its ``layer.alpha`` is saved too when it has one.
        optimizer: its optimizer.
        epoch: the last completed epoch.
        history: per-epoch records (plain JSON-like values).
        config: the run's settings (plain values), checked on resume by the program.
        scheduler: the learning-rate scheduler, if any.
        extra: further state to restore (plain values and tensors only), e.g. an
            :class:`~mondeq.training.step_size.AlphaTuner`'s ``state_dict()`` or an augmentation generator.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layer = getattr(model, "layer", None)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": int(epoch),
             "history": history, "config": config,
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "alpha": float(layer.alpha) if layer is not None and hasattr(layer, "alpha") else None,
             "rng": capture_rng(), "extra": extra or {}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = RESUME_KEYS) -> dict:
    """The raw checkpoint dictionary, without applying it. ``path`` is the file, or a run folder
    holding ``checkpoint.pt``.

    Args:
        path: the checkpoint file or its run folder.
        map_location: where the tensors are loaded; a device this machine lacks is refused before
            the file is read.
        required: the keys the dictionary must hold (resuming needs all of :data:`RESUME_KEYS`;
            rebuilding the model only ``model`` and ``config``).

    Raises:
        FileNotFoundError: no file at ``path``.
        DeviceUnavailableError: ``map_location`` names a device this machine does not have.
        CheckpointError: the file is not a checkpoint (the message says what it is: a run's
            results.json, an image, a bare state_dict, ...) or is proven damaged (empty, a cut
            zip archive).
    """
    path = Path(path)
    if path.is_dir() and (path / CHECKPOINT_NAME).is_file():  # a run folder
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        where = f"{path} (the folder holds no {CHECKPOINT_NAME})" if path.is_dir() else str(path)
        raise FileNotFoundError(f"no checkpoint at {where}; give a run folder (mondeq train --out FOLDER, "
                                "after its first epoch) or its checkpoint.pt")
    check_device(map_location, path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except LOAD_ERRORS as err:
        raise unreadable(path, err) from err
    problem = not_a_checkpoint(path, state, required)
    if problem is not None:
        raise CheckpointError(problem)
    return state


def load_checkpoint(path: str | os.PathLike[str], *, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    map_location: str | torch.device | None = None, restore_rngs: bool = True,
                    state: dict | None = None) -> dict:
    """Restore model, α, optimizer, scheduler and the global RNGs from :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        model: the bare model to load into (same architecture as the saved one).
        optimizer, scheduler: restored when given.
        map_location: where tensors are loaded (default: the model's device).
        restore_rngs: also set the global torch RNGs (CPU, CUDA) to the saved states.
        state: the checkpoint dictionary already read (by :func:`read_checkpoint`, e.g. on rank 0
            and broadcast); ``path`` then only names it in messages.

    Returns:
        The checkpoint dictionary (``epoch``, ``history``, ``config``, ``extra``, …).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable file, or weights that do not fit ``model`` (the message names
            the file and the first mismatching tensor).
    """
    if map_location is None:
        first = next(iter(model.parameters()), None)
        map_location = first.device if first is not None else "cpu"
    if state is None:
        state = read_checkpoint(path, map_location=map_location)
    own = model.state_dict()
    for key, value in state["model"].items():
        if key in own and own[key].shape != value.shape:
            raise CheckpointError(f"checkpoint {path} holds {key} of shape {tuple(value.shape)} but the "
                                  f"model has {tuple(own[key].shape)}: it was saved from a different "
                                  "architecture (width, channels or dataset)")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {err}") from err
    layer = getattr(model, "layer", None)
    if state.get("alpha") is not None and layer is not None:
        layer.alpha = state["alpha"]
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rngs and "rng" in state:
        rng = state["rng"]
        restore_rng(rng if isinstance(rng, dict) else {"cpu": rng})
    return state
