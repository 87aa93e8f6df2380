"""Pieces of a training program that users reuse: epochs, evaluation, exact checkpoints, devices.

* :func:`train_epoch`, :func:`evaluate`: one epoch / one test pass, device-aware, sync-free on
  CUDA, and summed over ranks under torch.distributed (:mod:`.loop`);
* :func:`save_checkpoint`, :func:`load_checkpoint`: atomic checkpoints holding every state a
  bit-identical resume needs (:mod:`.checkpoint`);
* :class:`DeviceData`: a dataset placed on the training device once when it fits, else served
  from pinned memory with non-blocking copies (:mod:`.placement`).
"""
from .checkpoint import CheckpointError, capture_rng, load_checkpoint, read_checkpoint, restore_rng, save_checkpoint
from .loop import EpochStats, EpochSums, Evaluation, evaluate, train_epoch
from .placement import DeviceData, device_arg

__all__ = ["CheckpointError", "DeviceData", "device_arg", "EpochStats", "EpochSums", "Evaluation", "capture_rng", "evaluate",
           "load_checkpoint", "read_checkpoint", "restore_rng", "save_checkpoint", "train_epoch"]
