"""Which autograd machinery a tensor is part of, for operators with hand-tuned fast paths.

The operators have fast paths that autograd cannot see through: scipy transforms on numpy views,
in-place sign flips, reuse of an earlier application, custom Functions with a reverse rule only.
They are correct only for tensors that carry no derivative, or whose derivative reaches them
through ``requires_grad`` (reverse mode). A forward-mode tangent (``torch.autograd.forward_ad``)
or a ``torch.func`` transform (``jvp``, ``grad``, ``vjp``: the tensors are wrapped) is not
visible through ``requires_grad``, and a fast path would drop it silently; such tensors take the
operators' plain-operation paths, which every autograd mode differentiates.
"""
from __future__ import annotations

import torch
from torch import Tensor


def is_transformed(x: Tensor) -> bool:
    """Whether ``x`` carries a forward-mode tangent or is wrapped by a ``torch.func`` transform."""
    return (torch._C._functorch.is_functorch_wrapped_tensor(x)
            or torch.autograd.forward_ad.unpack_dual(x).tangent is not None)


def any_transformed(*tensors: Tensor) -> bool:
    """Whether any of ``tensors`` :func:`is_transformed`."""
    return any(is_transformed(t) for t in tensors)
