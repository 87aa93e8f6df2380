"""Pretrained, verified monDEQ classifiers, shipped with the package (offline, checksummed).

    >>> import mondeq
    >>> mondeq.pretrained()                       # every model, with its recorded figures
    >>> model = mondeq.pretrained("mnist-certified-fc-1.58")
    >>> info = model.pretrained_entry             # its command, figures and certificate settings
    >>> cert = mondeq.certify(model, x, y, epsilons=[1.58], dtype=torch.float64,
    ...                       **info.certify_kwargs())     # the recorded settings, explicitly

Each model carries the command that trained it and the figures recorded on its whole test set
(:class:`~mondeq.pretrained.registry.PretrainedEntry`); a test re-derives its per-image verdicts
on the first test images, and ``experiments/check_pretrained.py`` re-checks the whole test set.
Every program that takes a run folder also takes a pretrained name (``mondeq certify
mnist-certified-fc-1.58``).

The module is callable: ``mondeq.pretrained(name)`` is :func:`pretrained`.
"""
from __future__ import annotations

import sys
import types

from .registry import PretrainedEntry, entries, entry, resolve_run, weights_path

__all__ = ["PretrainedEntry", "entries", "entry", "pretrained", "resolve_run", "weights_path"]


def pretrained(name: str | None = None, *, map_location: str = "cpu"):
    """A pretrained classifier, ready to use; with no name, the list of them.

    Args:
        name: A registered name (``mondeq.pretrained()`` lists them); ``None``: list.
        map_location: Where the model is loaded.

    Returns:
        With a name: the :class:`~mondeq.models.MonDEQClassifier` in eval mode, float32, with its
        input normalisation (pixel-scale inputs) and tuned step size; ``model.pretrained_entry``
        is its :class:`PretrainedEntry` (``certify_kwargs()``: the settings its figures were
        recorded with, in ``certify["dtype"]``). Without: the list of entries, in name order
        (each prints as one line with its figures).

    Raises:
        UnknownPretrainedError: no model of that name.
        PretrainedChecksumError: its weights file is not the recorded one.
    """
    if name is None:
        return list(entries().values())
    from ..models.run import load_run

    model = load_run(weights_path(name), map_location=map_location)
    model.pretrained_entry = entry(name)
    return model


class _CallableModule(types.ModuleType):
    """``mondeq.pretrained`` is this package and, called, :func:`pretrained`: the name stays the
    package whatever imports its submodules, and stays callable."""

    def __call__(self, name: str | None = None, *, map_location: str = "cpu"):
        return pretrained(name, map_location=map_location)


sys.modules[__name__].__class__ = _CallableModule
