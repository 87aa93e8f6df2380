"""The interface every monotone parametrisation (dense, conv, multi-tier) implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from splitting import LinearOperator, NonFiniteInputError, State, StateShapeError
from splitting.errors import InvalidSettingError


class MonotoneParametrisation(nn.Module, ABC):
    r"""Parameters of one monDEQ: an input map :math:`x \mapsto Ux + b` and a monotone :math:`W`.

    Subclasses build :math:`W = (1 - m)I - F^\top F + G^\top - G` from free parameters F, G, so
    :math:`I - W \succeq mI` holds by construction for any parameter values (no projection).

    Attributes:
        m: the fixed monotonicity margin, > 0.
        input_shape: per-sample shape of the input x.
    """

    input_shape: tuple[int, ...]

    def __init__(self, m: float) -> None:
        super().__init__()
        if not m > 0:
            raise InvalidSettingError(f"monotonicity margin m must be > 0, got {m}")
        self.m = float(m)

    @abstractmethod
    def bias(self, x: Tensor) -> State:
        """The injection :math:`Ux + b` as a state, differentiable in U, b and x."""

    @abstractmethod
    def operator(self) -> LinearOperator:
        """The operator W built from the current parameters (``mv`` differentiable in F, G)."""

    @abstractmethod
    def input_norm(self) -> Tensor:
        r""":math:`\|U\|_2` exactly (the largest singular value of the input map)."""

    def check_input(self, x: Tensor) -> None:
        """Raise a typed error for a wrong per-sample shape or non-finite values."""
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise StateShapeError(
                f"input has shape {tuple(x.shape)}; expected (batch, {', '.join(map(str, self.input_shape))})")
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteInputError("input contains NaN or inf; check the data pipeline or the learning rate")
