"""The data-root rule: where every dataset is looked for.

The *data root* is one folder holding one subfolder per dataset (``mnist/``, ``cifar10/``,
``svhn/``). It is chosen, first match wins, from:

1. the explicit argument (the programs' ``--data-root``);
2. the environment variable ``$MONDEQ_DATA``;
3. the ``data/`` folder of the source checkout, when the package is imported from one (detected
   by a ``setup.cfg`` beside the package and a ``data/mnist/`` folder, so an installed copy in
   site-packages never points into site-packages);
4. the user cache folder ``$XDG_CACHE_HOME/mondeq`` (default ``~/.cache/mondeq``).

Example:
    >>> resolve_data_root("/datasets")
    PosixPath('/datasets')
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "cache_data_root", "checkout_data_root", "resolve_data_root"]

#: Environment variable naming the data root.
ENV_VAR = "MONDEQ_DATA"

#: The folder that would hold ``setup.cfg`` and ``data/`` if the package runs from a checkout.
_SOURCE_TREE = Path(__file__).resolve().parents[2]


def checkout_data_root() -> Path | None:
    """Returns the checkout's ``data/`` folder, or None when not running from a checkout.

    A checkout is recognised by ``setup.cfg`` next to the ``mondeq`` package and a
    ``data/mnist`` folder beside it; neither exists in an installed (site-packages) copy.
    """
    data = _SOURCE_TREE / "data"
    if (_SOURCE_TREE / "setup.cfg").is_file() and (data / "mnist").is_dir():
        return data
    return None


def cache_data_root() -> Path:
    """Returns the user cache folder ``$XDG_CACHE_HOME/mondeq`` (default ``~/.cache/mondeq``)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mondeq"


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Returns the data root: ``root``, else ``$MONDEQ_DATA``, else the checkout's ``data/``,
    else the user cache folder (see the module docstring).

    The folder is not created and need not exist. The environment is read on every call.

    Args:
        root: An explicit data root (e.g. from ``--data-root``); wins when given.

    Returns:
        The folder that holds (or will hold) ``mnist/``, ``cifar10/`` and ``svhn/``.
    """
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    checkout = checkout_data_root()
    if checkout is not None:
        return checkout
    return cache_data_root()
