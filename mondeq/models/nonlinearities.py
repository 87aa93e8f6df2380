r"""The nonlinearities a model config can name: one registry from names to proximal operators.

Every entry is :math:`\sigma = \mathrm{prox}_f` of a closed convex :math:`f`
(:mod:`splitting.proxes` gives each f), so for each of them

* the equilibrium :math:`0 \in (I - W)z - (Ux + b) + \partial f(z)` exists and is unique, and
  every splitting method converges (only :math:`\partial f` monotone is used);
* the Lipschitz bound holds unchanged: subtracting the inclusions at :math:`x, x'` and pairing
  with :math:`z - z'`, the monotonicity of :math:`\partial f` gives

  .. math:: m\,\|z - z'\|^2 \le \langle (I - W)(z - z'), z - z'\rangle
            \le \langle U(x - x'), z - z'\rangle
            \ \Rightarrow\ \|z - z'\| \le \frac{\|U\|_2}{m}\,\|x - x'\|,

  and the solver-error bound :math:`\|\hat z - z^\star\| \le (1 + L)\|e\|/m` of
  :func:`mondeq.certify` rests on the same monotonicity, so certified radii are sound for every
  nonlinearity here (ReLU, the paper's, is just the indicator of :math:`z \ge 0`).

Parameters are the classes' defaults (leaky slope 0.01, soft-threshold level 0.1, sigmoid gain 1,
softplus β = 1, hard tanh on [−1, 1]): a config names a nonlinearity, not its parameters.
"""
from __future__ import annotations

from typing import Callable

from splitting import HardTanh, LeakyReLU, Prox, ReLU, Sigmoid, Softplus, SoftThreshold, Tanh

from ..errors import InvalidSettingError

__all__ = ["DEFAULT_NONLINEARITY", "NONLINEARITIES", "make_nonlinearity"]

NONLINEARITIES: dict[str, Callable[[], Prox]] = {
    "relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "softplus": Softplus, "leaky-relu": LeakyReLU,
    "hard-tanh": HardTanh, "soft-threshold": SoftThreshold,
}
"""Nonlinearities by the name a run's config (``nonlinearity``) and ``--nonlinearity`` give them."""

DEFAULT_NONLINEARITY = "relu"
"""The paper's nonlinearity; also what a config without a ``nonlinearity`` key (a run saved before
the option existed) means."""


def make_nonlinearity(name: str | None = None) -> Prox:
    """A fresh instance of the nonlinearity ``name`` (``None``: :data:`DEFAULT_NONLINEARITY`).

    Raises:
        InvalidSettingError: an unknown name (the message lists the known ones).
    """
    name = DEFAULT_NONLINEARITY if name is None else name
    if name not in NONLINEARITIES:
        raise InvalidSettingError(f"unknown nonlinearity {name!r}; choose one of {list(NONLINEARITIES)}")
    return NONLINEARITIES[name]()
