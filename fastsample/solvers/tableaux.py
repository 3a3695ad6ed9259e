"""Explicit Runge-Kutta schemes as validated data: Butcher tableaux (c, A, b) with their order.

Every tableau is checked once, at import, against the consistency conditions (c_i = sum_j A_ij, A
strictly lower triangular, sum b = 1) and the order conditions of its stated order (Butcher trees up to
order 4; Hairer, Norsett & Wanner, Solving ODEs I, sec. II.2), so a mistyped coefficient fails at import.
:func:`~.base.runge_kutta_plan` turns a tableau into rows of a linear :class:`~.base.Plan`; DEIS
``rhork`` (in rho) and the flow Runge-Kutta solvers (in t) use these.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Tableau", "TABLEAUX", "order_residuals"]


class Tableau(NamedTuple):
    """An explicit Runge-Kutta scheme: nodes ``c`` (s,), rows ``A[i]`` of i entries, weights ``b`` (s,), ``order``."""

    c: tuple
    A: tuple
    b: tuple
    order: int


def order_residuals(tab: Tableau) -> np.ndarray:
    """Residuals of the order conditions up to ``tab.order`` (at most 4), float64; all ~0 for a valid tableau."""
    s = len(tab.c)
    c, b = np.asarray(tab.c, dtype=np.float64), np.asarray(tab.b, dtype=np.float64)
    a = np.zeros((s, s))
    for i, row in enumerate(tab.A):
        a[i, : len(row)] = row
    conds = [(b.sum(), 1.0)]
    if tab.order >= 2:
        conds += [(b @ c, 1 / 2)]
    if tab.order >= 3:
        conds += [(b @ c**2, 1 / 3), (b @ a @ c, 1 / 6)]
    if tab.order >= 4:
        conds += [(b @ c**3, 1 / 4), (b @ (c * (a @ c)), 1 / 8), (b @ a @ c**2, 1 / 12), (b @ a @ a @ c, 1 / 24)]
    return np.array([got - want for got, want in conds])


def _checked(c, A, b, order: int) -> Tableau:
    tab = Tableau(tuple(map(float, c)), tuple(tuple(map(float, r)) for r in A), tuple(map(float, b)), int(order))
    s = len(tab.c)
    if len(tab.A) != s or len(tab.b) != s or any(len(r) != i for i, r in enumerate(tab.A)):
        raise ValueError(f"a tableau needs s nodes, s weights and rows of 0 .. s-1 entries, got {tab}")
    if any(abs(sum(r) - ci) > 1e-14 for r, ci in zip(tab.A, tab.c)):
        raise ValueError(f"tableau nodes are not the row sums of A: {tab}")
    if not 1 <= tab.order <= 4 or np.abs(order_residuals(tab)).max() > 1e-14:
        raise ValueError(f"tableau does not satisfy the order-{tab.order} conditions: {tab}")
    return tab


TABLEAUX = {
    "euler": _checked((0.0,), ((),), (1.0,), 1),
    "heun": _checked((0.0, 1.0), ((), (1.0,)), (0.5, 0.5), 2),
    "midpoint": _checked((0.0, 0.5), ((), (0.5,)), (0.0, 1.0), 2),
    "kutta3": _checked((0.0, 0.5, 1.0), ((), (0.5,), (-1.0, 2.0)), (1 / 6, 2 / 3, 1 / 6), 3),
    "heun3": _checked((0.0, 1 / 3, 2 / 3), ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75), 3),
    "rk4": _checked((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), 4),
}
"""The schemes by name: Euler, Heun, midpoint, Kutta's third order, Heun's third order (nodes avoid c = 1), RK4."""
