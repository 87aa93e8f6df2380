"""Building a completion DBM from plain settings, and loading a trained run.

A run folder holds ``checkpoint.pt`` (written by :func:`mondeq.training.save_checkpoint`) whose
``config`` names the architecture; :func:`load_dbm` rebuilds the model from it, so a user needs
only the folder:

    >>> model = load_dbm("runs/dbm-k2")                        # doctest: +SKIP
    >>> out = model.complete(images, observed)                 # doctest: +SKIP
    >>> out.expected_intensity(), out.label.argmax(1)          # doctest: +SKIP
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import CheckpointError, InvalidSettingError
from ..training.checkpoint import read_checkpoint
from .conv import HollowMultiTier
from .dense import HollowDense
from .model import CompletionDBM

ARCHITECTURES = ("dense", "conv")
LABEL_FROM = ("last", "all")

DEFAULTS: dict[str, Any] = {
    "architecture": "dense", "bins": 2, "classes": 10, "image": (28, 28), "hidden": 100,
    "hidden_values": 4, "rank": 256, "channels": (20, 40), "group": 4, "label_from": "last", "m": 0.05,
    "solver": "pr", "alpha": 1.0, "tol": 1e-2, "max_iter": 200, "seed": 0,
}


def model_config(**settings: Any) -> dict[str, Any]:
    """The defaults overridden by ``settings`` (unknown names are refused)."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise InvalidSettingError(f"unknown DBM settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    config = {**DEFAULTS, **settings}
    if config["architecture"] not in ARCHITECTURES:
        raise InvalidSettingError(f"architecture must be one of {ARCHITECTURES}, got {config['architecture']!r}")
    if config["label_from"] not in LABEL_FROM:
        raise InvalidSettingError(f"label_from must be one of {LABEL_FROM}, got {config['label_from']!r}")
    return config


def build_dbm(config: dict[str, Any], *, dtype: torch.dtype = torch.float32) -> CompletionDBM:
    """A fresh :class:`CompletionDBM` for ``config`` (:func:`model_config`), initialised from its seed.

    ``dense``: pixels (H·W variables of ``bins`` values), ``hidden`` variables of
    ``hidden_values`` values and the label, coupled through a ``rank × n`` matrix A.
    ``conv``: the paper's tiers (pixels at H × W, ``channels[0]`` channels at H/2, ``channels[1]``
    at H/4, both in groups of ``group`` values, the label), 3 × 3 kernels between and within
    tiers (stride 2 and 4 between them), a full H/4 kernel to the label (``label_from="last"``, the
    paper's); ``label_from="all"`` adds full kernels from the pixels and the H/2 tier to the label,
    a direct path that the label learns through from the first step (through the last tier alone
    the label reads pixels only via two products of small initial kernels, and stays near uniform
    for hundreds of steps). Parameters in ``dtype``
    whatever torch's default (the same draw for the same seed).
    """
    config = model_config(**config)
    gen = torch.Generator().manual_seed(int(config["seed"]))
    h, w = config["image"]
    k, classes = int(config["bins"]), int(config["classes"])
    if config["architecture"] == "dense":
        tiers = ((h * w, k), (int(config["hidden"]), int(config["hidden_values"])), (1, classes))
        coupling = HollowDense(tiers, rank=int(config["rank"]), m=float(config["m"]), generator=gen, dtype=dtype)
    else:
        c1, c2 = config["channels"]
        g = int(config["group"])
        if h % 4 or w % 4:
            raise InvalidSettingError(f"the conv DBM needs an image size divisible by 4, got {h}×{w}")
        tiers = ((k, h, w, k), (c1, h // 2, w // 2, g), (c2, h // 4, w // 4, g), (classes, 1, 1, classes))
        kernels = ((0, 0, 3), (1, 0, 3), (1, 1, 3), (2, 0, 3), (2, 1, 3), (2, 2, 3), (3, 2, h // 4), (3, 3, 1))
        if config["label_from"] == "all":
            kernels += ((3, 0, h), (3, 1, h // 2))
        coupling = HollowMultiTier(tiers, kernels, m=float(config["m"]), generator=gen, dtype=dtype)
    return CompletionDBM(coupling, image_shape=(h, w), solver=config["solver"], alpha=config["alpha"],
                         tol=config["tol"], max_iter=config["max_iter"]).to(dtype)


def load_dbm(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> CompletionDBM:
    """The trained model of a run folder (or its ``checkpoint.pt``), in eval mode."""
    state = read_checkpoint(path, map_location=map_location, required=("model", "config"))
    if not isinstance(state["config"].get("model"), dict):  # mondeq train saves the model's name
        raise CheckpointError(f"{path} is a run of `mondeq train` (classifier {state['config'].get('model')!r}), "
                              "not of `mondeq dbm`; load it with mondeq.load_run")
    model = build_dbm(state["config"]["model"])
    model.load_state_dict(state["model"])
    return model.to(map_location).eval()
