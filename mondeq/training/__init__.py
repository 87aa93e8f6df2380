"""Training: epochs, evaluation, exact checkpoints and resume, devices, schedules, α, processes.

* :func:`train_epoch`, :func:`evaluate`: one epoch / one test pass, device-aware, sync-free on
  CUDA, and summed over ranks under torch.distributed (:mod:`.loop`);
* :func:`save_checkpoint`, :func:`load_checkpoint`: atomic checkpoints holding every state a
  bit-identical resume needs (:mod:`.checkpoint`); merging a saved run's options (:mod:`.resume`);
* :class:`DeviceData`: a dataset placed on the training device once when it fits, else served
  from pinned memory with non-blocking copies (:mod:`.placement`);
* :func:`adam`: the optimizer, fused where PyTorch can (:mod:`.optimizer`);
* :mod:`.schedules` (learning rate), :mod:`.step_size` (the α tuner), :mod:`.distributed`
  (DDP helpers), :mod:`.progress` (the progress bar).
"""
from ..errors import CheckpointError
from .checkpoint import capture_rng, load_checkpoint, read_checkpoint, restore_rng, save_checkpoint
from .loop import EpochStats, EpochSums, Evaluation, evaluate, train_epoch
from .optimizer import adam
from .placement import DeviceData
from .schedules import SCHEDULES, make_schedule
from .step_size import AlphaTuner, tune_alpha

__all__ = ["AlphaTuner", "CheckpointError", "DeviceData", "EpochStats", "EpochSums", "Evaluation",
           "SCHEDULES", "adam", "capture_rng", "evaluate", "load_checkpoint", "make_schedule",
           "read_checkpoint", "restore_rng", "save_checkpoint", "train_epoch", "tune_alpha"]
