"""Another checkout of this library, imported side by side with the running one.

Benchmarks compare a change with the code before it in one process, so that both see the same
machine load (interleaved steps). :func:`import_checkout` imports ``mondeq`` and ``splitting``
from another source tree under their own names, then puts the running library's modules back:
the returned modules keep working through their own globals.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

PACKAGES = ("mondeq", "splitting")


def _library_modules() -> dict[str, ModuleType]:
    return {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in PACKAGES}


def import_checkout(root: str | Path) -> dict[str, ModuleType]:
    """``{"mondeq": …, "splitting": …}`` imported from the source tree at ``root``.

    Raises:
        FileNotFoundError: ``root`` holds no ``mondeq`` package.
    """
    root = Path(root).resolve()
    if not (root / "mondeq" / "__init__.py").is_file():
        raise FileNotFoundError(f"{root} is not a checkout of this library (no mondeq/__init__.py)")
    saved = _library_modules()
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        loaded = {name: importlib.import_module(name) for name in PACKAGES}
        for name in ("splitting.prox", "mondeq.training"):
            importlib.import_module(name)
    finally:
        sys.path.remove(str(root))
        for name in _library_modules():
            del sys.modules[name]
        sys.modules.update(saved)
    return loaded
