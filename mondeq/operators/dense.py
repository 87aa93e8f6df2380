r"""Dense (fully connected) monotone parametrisation.

.. math:: W = (1 - m) I - F^\top F + G^\top - G,\qquad I - W = mI + F^\top F + (G - G^\top)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from splitting import DenseOperator, State

from ..parametrisation import MonotoneParametrisation, check_sizes
from .structure import BlockStructure, expand_input_scale, single_block


class MonotoneLinear(MonotoneParametrisation):
    """Dense U (with bias), F and G for a monDEQ with ``out_features`` hidden units.

    Args:
        in_features: size of the flattened input x.
        out_features: hidden units n (the equilibrium z has shape (batch, n)).
        m: monotonicity margin, > 0.
    """

    def __init__(self, in_features: int, out_features: int, *, m: float = 1.0,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__(m)
        check_sizes("MonotoneLinear", in_features=in_features, out_features=out_features)
        kw = {"dtype": dtype, "device": device}
        self.input_shape = (in_features,)
        self.U = nn.Linear(in_features, out_features, **kw)
        self.F = nn.Parameter(torch.empty(out_features, out_features, **kw))
        self.G = nn.Parameter(torch.empty(out_features, out_features, **kw))
        bound = 1.0 / math.sqrt(out_features)
        nn.init.uniform_(self.F, -bound, bound)
        nn.init.uniform_(self.G, -bound, bound)

    def bias(self, x: Tensor) -> State:
        return (self.U(x),)

    def weight(self) -> Tensor:
        r""":math:`W = (1 - m)I - F^\top F + G^\top - G` (differentiable)."""
        eye = torch.eye(self.F.shape[0], dtype=self.F.dtype, device=self.F.device)
        return (1.0 - self.m) * eye - self.F.T @ self.F + self.G.T - self.G

    def operator(self) -> DenseOperator:
        return DenseOperator(self.weight(), self.m)

    def input_norm(self) -> Tensor:
        return torch.linalg.matrix_norm(self.U.weight, ord=2)

    def block_structure(self, *, input_scale: Tensor | None = None) -> BlockStructure:
        r"""One block in the standard basis: factor F, :math:`I - W` from :meth:`weight` when
        asked for, and :math:`UD` (one multiplier per hidden unit)."""
        u = self.U.weight

        def identity_minus_w() -> Tensor:
            return torch.eye(self.F.shape[0], dtype=self.F.dtype, device=self.F.device) - self.weight()

        return single_block(self.m, u * expand_input_scale(input_scale, u.shape[1], u),
                            factor=self.F, identity_minus_w=identity_minus_w)
