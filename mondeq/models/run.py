"""Loading a trained run: the classifier a run's checkpoint describes, in one call."""
from __future__ import annotations

import os

import torch

from ..errors import CheckpointError
from .classifier import MonDEQClassifier
from .zoo import build_model

MODEL_KEYS = ("model", "config")
"""What a checkpoint must hold to rebuild its model (resuming needs more: optimizer, epoch, ...)."""


def load_run(path: str | os.PathLike[str], *,
             map_location: str | torch.device = "cpu") -> MonDEQClassifier:
    """The trained classifier of a run, in eval mode, ready to evaluate or certify.

    Reads the checkpoint written by ``experiments/train.py`` (``path`` is the run folder, e.g.
    ``runs/mnist_fc``, or its ``checkpoint.pt``, or the name of a pretrained model:
    :func:`mondeq.pretrained`), rebuilds the model from the saved configuration
    with :func:`~mondeq.models.zoo.build_model`, and loads its weights (in their saved dtype) and
    tuned step size α. The
    global random-number generators are left exactly as they were (building draws initial weights
    from a forked generator; the checkpoint's saved generator states are not restored). The saved
    configuration is kept as ``model.run_config``.

    The model owns its input normalisation (its dataset's, :func:`~mondeq.models.zoo.build_model`)
    and takes pixel-scale inputs. A checkpoint written before models held their normalisation
    (no ``normalization.*`` entries: its programs fed ``(x − μ)/σ`` with the dataset's
    statistics) loads with the statistics of the saved config's dataset, which is the same
    network.

    Example:
        >>> model = mondeq.load_run("runs/mnist_fc")
        >>> images, labels = mondeq.data.load_dataset("mnist", train=False)
        >>> logits = model(images)     # pixels in [0, 1]; the model normalises them

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        DeviceUnavailableError: ``map_location`` names a device this machine lacks (the
            checkpoint is not read; ``map_location="cpu"`` loads it).
        CheckpointError: a file that is not a checkpoint (the message says what it is), a damaged
            one, or one whose weights do not fit its config.
    """
    from ..pretrained.registry import resolve_run  # a pretrained name: its shipped checkpoint
    # imported here: mondeq.training (its loop, the losses) imports the models
    from ..training.checkpoint import load_checkpoint, read_checkpoint

    path = resolve_run(path)
    state = read_checkpoint(path, map_location=map_location, required=MODEL_KEYS)
    if isinstance(state["config"].get("model"), dict):  # mondeq dbm saves its model settings as a dict
        raise CheckpointError(f"{path} is a run of `mondeq dbm` (a monotone deep Boltzmann machine), not a "
                              "classifier of `mondeq train`; load it with mondeq.categorical.load_dbm")
    with torch.random.fork_rng(devices=[]):
        model = build_model(state["config"])
    dtype = next((t.dtype for k, t in state["model"].items()  # the normalisation stays float64
                  if t.is_floating_point() and not k.startswith("normalization.")), None)
    model = model.to(device=map_location, dtype=dtype)
    load_checkpoint(path, model=model, state=state, restore_rngs=False)
    model.run_config = dict(state["config"])
    return model.eval()
