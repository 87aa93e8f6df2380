"""The equilibrium solve as one opaque eager call under ``torch.compile``.

Imported by :func:`splitting.implicit.equilibrium` only while dynamo traces it (compile is then in
use and ``torch._dynamo`` already loaded): ``torch.compiler.disable`` imports ``torch._dynamo``,
which would double the cost of ``import splitting`` if it ran at import.
"""
from __future__ import annotations

import torch

from .implicit import _solve_equilibrium

equilibrium = torch.compiler.disable(_solve_equilibrium, recursive=True)
