"""The interface every monotone parametrisation (dense, conv, multi-tier) implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, TypeVar

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from splitting import LinearOperator, State
from .errors import StateShapeError
from splitting.operator import check_margin

if TYPE_CHECKING:
    from .operators.structure import BlockStructure

T = TypeVar("T")

_optimizer_steps = [0]
"""Steps taken by any ``torch.optim`` optimizer in this process (see :meth:`MonotoneParametrisation.cached`)."""


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _optimizer_steps[0] += 1


register_optimizer_step_post_hook(_count_optimizer_step)


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
        self.m = check_margin(m)
        self._parameter_cache: dict[str, tuple[tuple, object]] = {}

    @abstractmethod
    def bias(self, x: Tensor) -> State:
        """The injection :math:`Ux + b` as a state, differentiable in U, b and x."""

    @abstractmethod
    def operator(self) -> LinearOperator:
        """The operator W built from the current parameters (``mv`` differentiable in F, G)."""

    def input_norm(self) -> Tensor:
        r""":math:`\|U\|_2` exactly (the largest singular value of the input map), differentiable.

        Read from :meth:`block_structure`; a family may override it with a cheaper formula for
        the same number (the tests compare the two).
        """
        return self.block_structure().input_norm()

    def block_structure(self, *, input_scale: Tensor | None = None) -> "BlockStructure":
        r"""The exact block-diagonal form of :math:`I - W` and :math:`UD` in a unitary basis.

        .. math:: Q(I - W)Q^H = \mathrm{diag}(X_b),\qquad Q\,UD\,R^H = \mathrm{diag}(V_b)

        (:mod:`mondeq.operators.structure`). Every exact norm, the joint bound, its training loss
        and the ‖I − W‖ penalty read only this. Built from the current parameters, differentiable
        in them (a graph when autograd records), in their dtype and device.

        The default probes the operator densely (:func:`~mondeq.operators.structure.probed_structure`:
        ``operator().as_matrix()`` and ``bias`` of unit inputs), refused with
        :class:`~mondeq.errors.StructureTooLargeError` above
        :data:`~mondeq.operators.structure.DENSE_LIMIT` values; a family with an exact structure
        overrides it.

        Args:
            input_scale: the diagonal :math:`D` of a classifier's input normalisation, one value
                per input channel (channel-major inputs; ``(C,)`` with C dividing the input's
                channels or values, or one value), applied to U's columns; ``None``: :math:`D = I`.

        Returns:
            A frozen :class:`~mondeq.operators.structure.BlockStructure`.
        """
        from .operators.structure import probed_structure  # operators/ imports this module

        return probed_structure(self, input_scale=input_scale)

    block_structure.probes = True  # the fallback (operators.structure.has_own_structure reads it)

    def cached(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``, memoised until a parameter changes.

        A change is an in-place update (``load_state_dict``, ``p.mul_()`` under ``no_grad``: the
        parameters' version counters), any step of a ``torch.optim`` optimizer in this process
        (fused optimizers, e.g. ``Adam(fused=True)``, update parameters without moving their
        version counters), or a move (``.to()``, ``.double()``). Writes through ``p.data`` bypass
        both and are not seen. For quantities that depend on the parameters only, such as ‖U‖₂
        or ‖I − W‖₂, computed without a graph.
        """
        version = (_optimizer_steps[0], *((p.data_ptr(), p._version) for p in self.parameters()))
        hit = self._parameter_cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]  # type: ignore[return-value]
        value = compute()
        self._parameter_cache[key] = (version, value)
        return value

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' floating dtype."""
        return next(self.parameters()).dtype

    def check_input(self, x: Tensor) -> None:
        """Raise a typed error for a wrong type, per-sample shape or an empty batch.

        Non-finite values are not checked here (that would synchronise with the device on every
        call): a solve on them fails, and the layer then names the non-finite tensor.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
        if x.ndim < 1 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise StateShapeError(
                f"input has shape {tuple(x.shape)}; expected (batch, {', '.join(map(str, self.input_shape))})")
        if x.shape[0] == 0:
            raise StateShapeError("input is an empty batch (0 samples); pass at least one sample")


def check_sizes(where: str, *, minimum: int = 1, **sizes: object) -> None:
    """Raise :class:`~mondeq.errors.InvalidSettingError` unless every size is a whole number
    ≥ ``minimum`` (before torch fails on a negative dimension or a zero one divides by zero)."""
    import numbers

    from .errors import InvalidSettingError

    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise InvalidSettingError(f"{where}: {name} must be a whole number ≥ {minimum}, got {value!r}")
