r"""The elementwise tail of a Peaceman-Rachford iteration at α = 1, fused by ``torch.compile``.

After the resolvent, an iteration forms (per tier)

.. math:: u = 2z_{1/2} - u_{1/2},\qquad z = \mathrm{prox}(u),\qquad
          r = \|z_{1/2} - z\| / \|z_{1/2}\|

(the estimate of :mod:`splitting.peaceman_rachford` at α = 1). In eager mode that is five
passes over the state (``lerp``, the prox, ``sub``, two norms: ten state-sized memory
transfers); fused into one loop it reads :math:`z_{1/2}, u_{1/2}` and writes :math:`u, z` (four).
On the paper's convolutional state (128 × 54 × 30 × 30, float32, one CPU thread) the tail alone
measured 43–58 ms against 71–89 ms eager, and 8 forward PR iterations 0.79–0.88 s against
0.90–0.96 s of CPU time (interleaved, loaded machine); on the multi-tier state (2.6 M values in
three tiers) there was no measurable gain, and on the FC state (128 × 87) a compiled call costs
more than the five small eager ones. So the fused tail is used only on the CPU, for states of
at least :data:`MIN_ELEMENTS` values, for ReLU and for the backward problem's diagonal prox
(:class:`~splitting.prox.DiagonalQuadratic`, :math:`z = Ju` at α = 1). Compiling costs a few
seconds once per process (inductor's disk cache shortens later ones).

The first call of each compiled function is checked against the eager tail on the same
tensors; a mismatch, or any failure to compile (no C++ compiler, say), turns fusion off for the
process and the eager tail is used: the results are the same either way, up to rounding.
``MONDEQ_FUSE=0`` in the environment turns it off.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import Tensor

from .prox import DiagonalQuadratic, Prox, ReLU
from .state import State

MIN_ELEMENTS = 1 << 22
"""Smallest state (values over the batch and all tiers) for which the tail is fused."""

_compiled: dict[str, Callable] = {}
_checked: set[str] = set()
_enabled = os.environ.get("MONDEQ_FUSE", "1") != "0"


def _relu_tail(z_half: Tensor, u_half: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    u = torch.lerp(u_half, z_half, 2.0)
    z = torch.relu(u)
    dims = tuple(range(1, z.ndim))
    return u, z, torch.linalg.vector_norm(z_half - z, dim=dims), torch.linalg.vector_norm(z_half, dim=dims)


def _scaled_tail(z_half: Tensor, u_half: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    u = torch.lerp(u_half, z_half, 2.0)
    z = scale * u
    dims = tuple(range(1, z.ndim))
    return u, z, torch.linalg.vector_norm(z_half - z, dim=dims), torch.linalg.vector_norm(z_half, dim=dims)


_EAGER = {"relu": _relu_tail, "scaled": _scaled_tail}


def fused_tail(prox: Prox, z_half: State) -> Callable[[State, State], tuple[State, State, Tensor]] | None:
    """The fused tail for this prox and state, or ``None`` where the eager one is to be used.

    The callable maps :math:`(z_{1/2}, u_{1/2})` to :math:`(u, z, r)` as in the module docstring.
    """
    if not _enabled or torch.compiler.is_compiling():
        return None
    if sum(t.numel() for t in z_half) < MIN_ELEMENTS:
        return None
    if any(t.device.type != "cpu" or t.requires_grad for t in z_half):
        return None
    if type(prox) is ReLU:
        kind, extra = "relu", [()] * len(z_half)
    elif type(prox) is DiagonalQuadratic:
        kind, extra = "scaled", [(s,) for s in prox.scale(1.0)]
    else:
        return None

    def tail(z_half: State, u_half: State) -> tuple[State, State, Tensor]:
        parts = [_run(kind, zh, uh, *e) for zh, uh, e in zip(z_half, u_half, extra)]
        diff = _combine([p[2] for p in parts])
        norm = _combine([p[3] for p in parts])
        residual = diff / norm.clamp_min(torch.finfo(diff.dtype).tiny)
        return tuple(p[0] for p in parts), tuple(p[1] for p in parts), residual

    return tail


def _combine(norms: list[Tensor]) -> Tensor:
    return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms), dim=0)


def _run(kind: str, *tensors: Tensor) -> tuple[Tensor, ...]:
    global _enabled
    eager = _EAGER[kind]
    if not _enabled:
        return eager(*tensors)
    try:
        if kind not in _compiled:
            _compiled[kind] = torch.compile(eager, dynamic=None)
        out = _compiled[kind](*tensors)
    except Exception:  # noqa: BLE001 - no compiler, an unsupported build: the eager tail is exact
        _enabled = False
        return eager(*tensors)
    if kind not in _checked:
        reference = eager(*tensors)
        agree = all(torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.nan_to_num().abs().max().clamp_min(1)),
                                   equal_nan=True)
                    for a, b in zip(out, reference))
        if not agree:
            _enabled = False
            return reference
        _checked.add(kind)
    return out
