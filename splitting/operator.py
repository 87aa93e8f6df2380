r"""The linear-operator protocol that every splitting method talks to, and a dense reference.

A monDEQ operator is a linear map :math:`W` on states (tuples of tensors, batch first) with

.. math:: \tfrac12\big((I - W) + (I - W)^\top\big) \succeq m I,

so the inclusion :math:`0 \in (I - W)z - (Ux + b) + \partial f(z)` has a unique solution.
Solvers only use the methods below, so a new operator family needs no solver change.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import InvalidSettingError
from .state import State, flatten, unflatten


@dataclass(frozen=True, eq=False)
class Shift:
    r"""A fixed term :math:`c` of the right-hand sides :math:`r + c` of a solve, as prepared by
    :meth:`Resolvent.prepare_shift` (``prepared``: what the resolvent precomputed, e.g.
    :math:`Rc`; ``None`` when it adds :math:`c` to every right-hand side)."""

    state: State
    owner: object
    prepared: object = None


class Resolvent(ABC):
    r"""A factorised :math:`R = (I + \alpha(I - W))^{-1}`, built once per solve.

    The same object serves the forward solve (:meth:`solve`) and the backward solve
    (:meth:`solve_t`, the transposed system), so the factorisation is paid for once.
    """

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def prepare_shift(self, c: State) -> Shift:
        r"""Prepare :math:`R(r + c)` for many :math:`r` and one :math:`c` (:meth:`solve_shifted`)."""
        return Shift(tuple(c), self, self._prepare_shift(c, transpose=False))

    def solve_shifted(self, r: State, shift: Shift | State) -> State:
        r""":math:`R(r + c)` for a :class:`Shift` of :math:`c` (or the state :math:`c` itself).

        A resolvent that can fold :math:`c` into its application (dense: :math:`Rr + Rc` in one
        ``addmm``, with :math:`Rc` made once) saves an elementwise pass per call.
        """
        if isinstance(shift, Shift):
            if shift.owner is self and shift.prepared is not None:
                return self._solve_prepared(r, shift.prepared, transpose=False)
            shift = shift.state
        return self.solve(tuple(torch.add(a, b) for a, b in zip(r, shift)))

    def _prepare_shift(self, c: State, *, transpose: bool) -> object:
        """What :meth:`solve_shifted` needs for ``c`` (``None``: nothing, add ``c`` each time)."""
        return None

    def _solve_prepared(self, r: State, prepared: object, *, transpose: bool) -> State:
        raise NotImplementedError

    @abstractmethod
    def solve(self, r: State) -> State:
        r""":math:`(I + \alpha(I - W))^{-1} r`."""

    @abstractmethod
    def solve_t(self, r: State) -> State:
        r""":math:`(I + \alpha(I - W^\top))^{-1} r`."""

    def transpose(self) -> "Resolvent":
        """The resolvent of :math:`W^T`: the same factorisation with solve and solve_t swapped."""
        return _TransposedResolvent(self)


class _TransposedResolvent(Resolvent):
    def __init__(self, inner: Resolvent) -> None:
        super().__init__(inner.alpha)
        self.inner = inner

    def solve(self, r: State) -> State:
        return self.inner.solve_t(r)

    def solve_t(self, r: State) -> State:
        return self.inner.solve(r)

    def prepare_shift(self, c: State) -> Shift:
        return Shift(tuple(c), self, self.inner._prepare_shift(c, transpose=True))

    def solve_shifted(self, r: State, shift: Shift | State) -> State:
        if isinstance(shift, Shift) and shift.owner is self and shift.prepared is not None:
            return self.inner._solve_prepared(r, shift.prepared, transpose=True)
        return super().solve_shifted(r, shift)

    def transpose(self) -> Resolvent:
        return self.inner


class LinearOperator(ABC):
    """Protocol for :math:`W`: what a solver may ask of it.

    Attributes:
        m: monotonicity margin, the symmetric part of ``I - W`` is ⪰ m·I.
        state_shape: per-tier shape of one sample's state, e.g. ``((87,),)``.
    """

    m: float
    state_shape: tuple[tuple[int, ...], ...]

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """Floating dtype of the operator's parameters."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Device of the operator's parameters."""

    @abstractmethod
    def mv(self, z: State) -> State:
        """:math:`W z` for a batch of states."""

    @abstractmethod
    def rmv(self, z: State) -> State:
        """:math:`W^T z` for a batch of states."""

    @abstractmethod
    def resolvent(self, alpha: float) -> Resolvent:
        r"""Factorise :math:`(I + \alpha(I - W))^{-1}` for step ``alpha > 0``."""

    @abstractmethod
    def lipschitz(self) -> float:
        r"""An upper bound :math:`L \ge \|I - W\|_2` (FB's step rule, certificate slack)."""

    def as_matrix(self) -> Tensor:
        """Dense :math:`W` acting on flattened states, built column by column (small sizes only)."""
        n = sum(_numel(s) for s in self.state_shape)
        eye = torch.eye(n, dtype=self.dtype, device=self.device)
        basis = unflatten(eye, self.zeros(n))
        return flatten(self.mv(basis)).T

    def zeros(self, batch: int) -> State:
        """A zero state for ``batch`` samples."""
        return tuple(torch.zeros(batch, *s, dtype=self.dtype, device=self.device) for s in self.state_shape)

    def transpose(self) -> "LinearOperator":
        """:math:`W^T` as an operator sharing this one's parameters and caches."""
        return TransposedOperator(self)


class TransposedOperator(LinearOperator):
    """:math:`W^T`: the backward pass's operator. Same m (symmetric parts agree), same L."""

    def __init__(self, op: LinearOperator) -> None:
        self.op = op
        self.m = op.m
        self.state_shape = op.state_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.op.dtype

    @property
    def device(self) -> torch.device:
        return self.op.device

    def mv(self, z: State) -> State:
        return self.op.rmv(z)

    def rmv(self, z: State) -> State:
        return self.op.mv(z)

    def resolvent(self, alpha: float) -> Resolvent:
        return self.op.resolvent(alpha).transpose()

    def lipschitz(self) -> float:
        return self.op.lipschitz()

    def transpose(self) -> LinearOperator:
        return self.op


def check_alpha(alpha: float) -> float:
    """Validate a step size; returns it as a float."""
    if isinstance(alpha, bool) or not 0 < alpha < float("inf"):
        raise InvalidSettingError(f"step size alpha must be > 0 and finite, got {alpha}")
    return float(alpha)


def check_margin(m: float) -> float:
    """Validate a monotonicity margin (0 < m < ∞); returns it as a float."""
    if isinstance(m, bool) or not 0 < m < float("inf"):
        raise InvalidSettingError(f"monotonicity margin m must be > 0 and finite, got {m}")
    return float(m)


class DenseResolvent(Resolvent):
    r"""LU factors of :math:`M = (1 + \alpha) I - \alpha W`; rows of a batch are solved at once."""

    def __init__(self, weight: Tensor, alpha: float) -> None:
        super().__init__(alpha)
        # Mᵀ = (1 + α)I − αWᵀ, built without an identity matrix (the diagonal is updated in place)
        matrix_t = weight.detach().T.mul(-alpha)
        matrix_t.diagonal().add_(1.0 + alpha)
        # Rows are batch samples: x = M⁻¹ r for every row  ⇔  X = R M⁻ᵀ. Forming M⁻ᵀ once (one
        # LU-based inverse) turns every iteration into one GEMM, faster than triangular solves.
        # inv_ex: no singularity check, hence no device sync; M is never singular, since its
        # symmetric part is ⪰ (1 + αm) I
        self._inv_t = torch.linalg.inv_ex(matrix_t)[0]
        self._inv = self._inv_t.T  # M⁻¹ as a view, made once (solve_t's GEMM reads it transposed)

    def solve(self, r: State) -> State:
        (x,) = r
        return (x @ self._inv_t,)

    def solve_t(self, r: State) -> State:
        (x,) = r
        return (x @ self._inv,)

    def _prepare_shift(self, c: State, *, transpose: bool) -> Tensor:
        (x,) = c
        return x @ (self._inv if transpose else self._inv_t)

    def _solve_prepared(self, r: State, prepared: Tensor, *, transpose: bool) -> State:
        (x,) = r
        return (torch.addmm(prepared, x, self._inv if transpose else self._inv_t),)


class DenseOperator(LinearOperator):
    """A single-tier operator given by an explicit matrix ``weight`` (n × n) and its margin ``m``.

    It is the reference operator for tests and the operator the dense monDEQ layer builds each
    forward pass. ``mv`` is differentiable with respect to ``weight``.
    """

    def __init__(self, weight: Tensor, m: float) -> None:
        if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
            raise InvalidSettingError(f"weight must be a square matrix, got shape {tuple(weight.shape)}")
        check_margin(m)
        self.weight = weight
        self.m = float(m)
        self.state_shape = ((weight.shape[0],),)
        self._lipschitz: float | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def mv(self, z: State) -> State:
        (x,) = z
        return (x @ self.weight.T,)

    def rmv(self, z: State) -> State:
        (x,) = z
        return (x @ self.weight,)

    def resolvent(self, alpha: float) -> Resolvent:
        return DenseResolvent(self.weight, check_alpha(alpha))

    def lipschitz(self) -> float:
        if self._lipschitz is None:
            # in float64: a float32 SVD can come out ~1e-7 below the norm, and this is an upper bound
            weight = self.weight.detach().to(torch.float64)
            if not bool(torch.isfinite(weight).all()):  # no finite bound; the SVD would fail
                self._lipschitz = float("inf")
                return self._lipschitz
            eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
            self._lipschitz = float(torch.linalg.matrix_norm(eye - weight, ord=2))
        return self._lipschitz

    def as_matrix(self) -> Tensor:
        return self.weight


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
