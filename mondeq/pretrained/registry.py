"""The registry of pretrained models: one manifest (JSON) and one weights file per model, shipped as
package data in ``mondeq/pretrained/weights/``.

A manifest holds the model's name, a one-line description, the configuration that rebuilds it
(:func:`mondeq.build_model`), the exact command that trained it, how long and on what, the
weights file with its SHA-256, the certificate settings its figures were recorded with (bound,
multipliers, tolerance, iteration cap, dtype, batch size), the recorded figures on the whole test
set (clean accuracy, certified accuracy per ε, PGD robust accuracy and counterexamples, looseness)
and the per-image verdicts on the first test images (:mod:`mondeq.pretrained.verdicts`), which a
test re-derives.

The weights file is a checkpoint in the format of :func:`mondeq.save_checkpoint` (``model``: the
float32 state_dict with the float64 normalisation, ``config``, ``epoch``, ``history``, the tuned
``alpha``; ``optimizer`` empty: a shipped model is for evaluation, not for resuming), so every
program that reads a run's ``checkpoint.pt`` reads it as it is; :func:`resolve_run` turns a
registered name into that file.

Nothing here imports torch: listing the registry is cheap.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ..errors import PretrainedChecksumError, UnknownPretrainedError, did_you_mean

__all__ = ["WEIGHTS", "PretrainedEntry", "entries", "entry", "pretrained_name", "resolve_run", "sha256",
           "weights_path"]

WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The folder of the manifests (``NAME.json``) and weights files (``NAME.pt``)."""


@dataclass(frozen=True)
class PretrainedEntry:
    """One pretrained model, as its manifest records it.

    Attributes:
        name: The registry key (``mondeq.pretrained(name)``).
        description: One line: architecture, dataset, how it was trained.
        config: The configuration :func:`mondeq.build_model` rebuilds the network from.
        command: The exact command line that trained it.
        training: Epochs, wall time (s), hardware and the source commit it was trained at.
        weights: The weights file's name in :data:`WEIGHTS`.
        sha256: The weights file's SHA-256.
        certify: The settings the figures were recorded with: ``bound``, ``multipliers``,
            ``tol``, ``max_iter``, ``dtype``, ``batch_size`` (pass the first four to
            :func:`mondeq.certify`, with the model in ``dtype``).
        figures: On the whole test split (``test_images``): ``clean`` accuracy, ``certified``
            accuracy per ε (keys are ε as text), ``pgd`` (images attacked, steps, restarts,
            robust accuracy per ε, ``counterexamples`` of ``checked`` certified pairs),
            ``looseness`` and ``certify_seconds``.
        verdicts: Per-image results on the first ``images`` test images, certified in one
            batch (:mod:`mondeq.pretrained.verdicts`).
    """

    name: str
    description: str
    config: Mapping[str, Any]
    command: str
    training: Mapping[str, Any]
    weights: str
    sha256: str
    certify: Mapping[str, Any]
    figures: Mapping[str, Any]
    verdicts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        """The dataset it was trained on (``config["dataset"]``)."""
        return str(self.config.get("dataset") or "mnist")

    def certify_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`mondeq.certify` the figures were recorded with (``dtype``
        as a name: ``getattr(torch, ...)``)."""
        return {k: self.certify[k] for k in ("bound", "multipliers", "tol", "max_iter")}

    def summary(self) -> str:
        """One line: name, description, clean and certified accuracy with their settings."""
        f = self.figures
        certified = ", ".join(f"{100 * v:.2f} % at ε={e}" for e, v in f.get("certified", {}).items())
        return (f"{self.name}: {self.description}; clean {100 * f['clean']:.2f} %"
                + (f", certified {certified}" if certified else "")
                + f" ({f['test_images']:,} test images, {self.certificate()})")

    def certificate(self) -> str:
        """The certificate the figures were recorded with, in words: bound, multipliers, precision, tol."""
        c = self.certify
        return (f"{c['bound']} bound" + (f", {c['multipliers']} multipliers" if c.get("multipliers") else "")
                + f", {c['dtype']} solves at tol {c['tol']:g}")

    def __repr__(self) -> str:
        return f"PretrainedEntry({self.summary()})"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PretrainedEntry":
        """The entry a manifest's JSON object describes."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def to_json(self) -> dict[str, Any]:
        """The manifest's JSON object."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def entries(folder: Path | None = None) -> dict[str, PretrainedEntry]:
    """Every registered model, by name, in name order (read from the manifests each call)."""
    folder = WEIGHTS if folder is None else Path(folder)
    found = {}
    for manifest in sorted(folder.glob("*.json")):
        item = PretrainedEntry.from_json(json.loads(manifest.read_text()))
        found[item.name] = item
    return found


def entry(name: str) -> PretrainedEntry:
    """The registry entry of ``name``.

    Raises:
        UnknownPretrainedError: no such model (the message lists the registered ones).
    """
    known = entries()
    if name not in known:
        raise UnknownPretrainedError(name, sorted(known))
    return known[name]


def sha256(path: str | os.PathLike[str]) -> str:
    """The hexadecimal SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def _verified(path: str, expected: str, size: int, mtime: float) -> None:
    """Checks a weights file once per (path, size, modification time)."""
    actual = sha256(path)
    if actual != expected:
        raise PretrainedChecksumError(path, expected, actual)


def weights_path(name: str, *, verify: bool = True) -> Path:
    """The weights file of ``name``, its SHA-256 checked against the manifest (once per process
    while the file is unchanged).

    Raises:
        UnknownPretrainedError: no such model.
        FileNotFoundError: the manifest names a weights file that is not installed.
        PretrainedChecksumError: the file's SHA-256 differs from the recorded one.
    """
    item = entry(name)
    path = WEIGHTS / item.weights
    if not path.is_file():
        raise FileNotFoundError(f"pretrained model {name!r}: its weights file {path} is not "
                                f"installed (the package data is incomplete; reinstall mondeq)")
    if verify:
        stat = path.stat()
        _verified(str(path), item.sha256, stat.st_size, stat.st_mtime)
    return path


def pretrained_name(path: str | os.PathLike[str]) -> str | None:
    """The registered model a program's RUN argument names: a bare name that is not a file or
    folder on disk (which wins) and that the registry holds; else ``None``."""
    path = Path(path)
    if path.exists() or len(path.parts) != 1 or path.name not in entries():
        return None
    return path.name


def resolve_run(path: str | os.PathLike[str]) -> Path:
    """What a program's RUN argument names: ``path`` itself when it exists on disk, else the
    checked weights file of the pretrained model of that name, else ``path`` unchanged (so the
    caller's own "no checkpoint" error reports it).

    Raises:
        PretrainedChecksumError: a registered model whose weights file is damaged.
    """
    path = Path(path)
    name = pretrained_name(path)
    if name is not None:
        return weights_path(name)
    if path.exists() or len(path.parts) != 1:
        return path
    near = did_you_mean(path.name, entries())
    if near:  # a misspelt pretrained name more likely than a missing folder
        raise FileNotFoundError(f"no run folder or checkpoint at {path}, and no pretrained model of that "
                                f"name{near}; mondeq.pretrained() lists them")
    return path
