"""The data-root rule: where every dataset is looked for.

The *data root* is one folder holding one subfolder per dataset (``mnist/``, ``cifar10/``,
``svhn/``). It is chosen, first match wins, from:

1. the explicit argument (the programs' ``--data-root``);
2. the environment variable ``$MONDEQ_DATA``;
3. the ``data/`` folder of the source checkout, when the package is imported from one (detected
   by a ``setup.cfg`` beside the package and a ``data/mnist/`` folder, so an installed copy in
   site-packages never points into site-packages);
4. the user cache folder ``$XDG_CACHE_HOME/mondeq`` (default ``~/.cache/mondeq``).

A root filled by torchvision is read as it is: :func:`dataset_folders` names, after the project's
``<root>/<name>/``, the folder torchvision keeps the same files in (:data:`TORCHVISION_LAYOUT`).
A dataset that a distribution package installs system-wide (Fashion-MNIST: Debian's
``/usr/share/datasets/fashion-mnist``, :data:`SYSTEM_FOLDERS`) is read from there last.

Example:
    >>> resolve_data_root("/datasets")
    PosixPath('/datasets')
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "SYSTEM_FOLDERS", "TORCHVISION_LAYOUT", "cache_data_root", "checkout_data_root", "dataset_folders",
           "resolve_data_root"]

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


#: Where torchvision's datasets keep each dataset's files, relative to their ``root``:
#: ``CIFAR10(root)`` reads ``root/cifar-10-batches-py/`` (from ``root/cifar-10-python.tar.gz``),
#: ``SVHN(root)`` reads ``root/train_32x32.mat`` and ``root/test_32x32.mat``, ``MNIST(root)``
#: reads ``root/MNIST/raw/*-ubyte(.gz)``.
TORCHVISION_LAYOUT: dict[str, str] = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw",
                                      "cifar10": ".", "svhn": "."}

#: System folders a distribution's data package installs a dataset in, read after the data
#: root's two layouts (whatever the root): Debian's ``dataset-fashion-mnist``.
SYSTEM_FOLDERS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


def dataset_folders(name: str, root: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """Returns the two folders a dataset is looked for in, in order: this project's layout
    (``<root>/<name>/``), then torchvision's (:data:`TORCHVISION_LAYOUT`), so a root already
    filled by torchvision is read as it is.

    Args:
        name: "mnist", "fashion-mnist", "cifar10" or "svhn".
        root: The data root, resolved by :func:`resolve_data_root`.
    """
    base = resolve_data_root(root)
    return base / name, base / TORCHVISION_LAYOUT[name]  # pathlib drops the "." of a flat layout
