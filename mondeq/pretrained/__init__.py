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


def pretrained(name: str | None = None, *, device=None, map_location=None):
    """A pretrained classifier, ready to use; with no name, the list of them.

    Args:
        name: A registered name (``mondeq.pretrained()`` lists them); ``None``: list.
        device: Where the model is loaded (``"cpu"``, ``"cuda"``, a ``torch.device``; default
            the CPU); a device this machine lacks is refused by name.
        map_location: The same, under ``torch.load``'s name (give one of the two).

    Returns:
        With a name: the :class:`~mondeq.models.MonDEQClassifier` in eval mode, float32, with its
        input normalisation (pixel-scale inputs) and tuned step size; ``model.pretrained_entry``
        is its :class:`PretrainedEntry` (``certify_kwargs()``: the settings its figures were
        recorded with, in ``certify["dtype"]``). Without: the list of entries, in name order
        (each prints as one line with its figures).

    Raises:
        UnknownPretrainedError: no model of that name.
        PretrainedChecksumError: its weights file is not the recorded one.
        InvalidSettingError: a name that is not a string; ``device`` and ``map_location`` both
            given, and different.
    """
    if name is None:
        return list(entries().values())
    from ..errors import InvalidSettingError
    from ..models.run import load_run

    if not isinstance(name, str):
        raise InvalidSettingError(f"pretrained: a model is named by a string (mondeq.pretrained() lists "
                                  f"them: {', '.join(entries())}), got {type(name).__name__} {name!r}")
    if device is not None and map_location is not None and str(device) != str(map_location):
        raise InvalidSettingError(f"pretrained: device={device!r} and map_location={map_location!r} "
                                  f"name two places; give one")
    place = device if device is not None else map_location if map_location is not None else "cpu"
    model = load_run(weights_path(name), map_location=place)
    model.pretrained_entry = entry(name)
    return model


class _CallableModule(types.ModuleType):
    """``mondeq.pretrained`` is this package and, called, :func:`pretrained`: the name stays the
    package whatever imports its submodules, and stays callable."""

    def __call__(self, name: str | None = None, *, device=None, map_location=None):
        return pretrained(name, device=device, map_location=map_location)


sys.modules[__name__].__class__ = _CallableModule
