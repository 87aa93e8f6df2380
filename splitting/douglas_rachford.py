r"""Douglas-Rachford splitting for :math:`0 \in (I - W)z - b + \partial f(z)`, any :math:`\alpha > 0`.

Peaceman-Rachford with the reflected update averaged. With :math:`R = (I + \alpha(I - W))^{-1}`:

.. math::
    u_{1/2} = 2z - u,\quad z_{1/2} = R(u_{1/2} + \alpha b),\quad
    u \leftarrow \tfrac12 u + \tfrac12 (2z_{1/2} - u_{1/2}) = u + z_{1/2} - z,\quad
    z = \mathrm{prox}_{\alpha f}(u)

The DR map is the average of the identity and PR's map, so it is firmly nonexpansive and converges
for every α > 0 even without strong monotonicity; when I − W is strongly monotone (monDEQs) PR's
map is already a contraction and DR trades that for robustness (Lions & Mercier 1979; Winston &
Kolter 2020, Appendix).
"""
from __future__ import annotations

from .operator import LinearOperator, Resolvent
from .peaceman_rachford import relaxed_peaceman_rachford
from .prox import Prox
from .result import SolverResult
from .state import State


def douglas_rachford(
    op: LinearOperator,
    prox: Prox,
    bias: State,
    *,
    alpha: float = 1.0,
    tol: float = 1e-3,
    max_iter: int = 100,
    z0: State | None = None,
    resolvent: Resolvent | None = None,
    mask: bool = False,
) -> SolverResult:
    """Solve for the equilibrium by Douglas-Rachford iteration (relaxation ½ of
    :func:`~splitting.peaceman_rachford.relaxed_peaceman_rachford`).

    Arguments and result as in :func:`~splitting.peaceman_rachford.peaceman_rachford`.
    """
    return relaxed_peaceman_rachford(op, prox, bias, relaxation=0.5, alpha=alpha, tol=tol,
                                     max_iter=max_iter, z0=z0, resolvent=resolvent, mask=mask)
