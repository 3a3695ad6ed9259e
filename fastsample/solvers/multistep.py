"""DPM-Solver++(2M) / (3M), the multistep exponential integrator in data-prediction form, for any schedule.

Lu et al., arXiv 2211.01095. In the half log-SNR lambda = log(alpha / sigma) one step is
x' = (sigma' / sigma) x + alpha' (1 - e^{-h}) D with h = lambda' - lambda and D the Lagrange
extrapolation of x0 (3M adds the second divided difference with the phi_2, phi_3 weights). Lower
order while the history fills; the step into t = 0 (h = inf) is first order, x' = x0-hat (DPM-Solver++
and UniPC do the same). Coefficients are float64 numpy arrays computed once per grid.
"""

from __future__ import annotations

import numpy as np

from ..core.grids import check_grid
from .base import Plan, Solver

__all__ = ["ExpMultistepSolver"]


class ExpMultistepSolver(Solver):
    """DPM-Solver++(2M) / (3M) in data-prediction form (Lu et al., arXiv 2211.01095), for any schedule.

    Args:
        order: 2 or 3 (global order; lower order while the history fills and into t = 0).
    """

    def __init__(self, order: int = 3):
        if order not in (1, 2, 3):
            raise ValueError(f"multistep order must be 1, 2 or 3, got {order!r}")
        self.order, self.stages = int(order), 1
        self.name = f"multistep{self.order}"

    def prepare(self, schedule, grid) -> Plan:
        grid = check_grid(grid)
        n = len(grid) - 1
        alpha, sigma = schedule.alpha(grid), schedule.sigma(grid)
        lam = schedule.lambda_(grid)
        if alpha[0] <= 0:
            raise ValueError("the multistep update needs alpha > 0 at its first step (use Solver.plan)")
        a = np.zeros(n)
        w_x0 = np.zeros((n, self.order))
        orders = np.zeros(n, dtype=np.int64)
        for i in range(n):
            if sigma[i + 1] == 0:
                w_x0[i, 0], orders[i] = alpha[i + 1], 1
                continue
            h = lam[i + 1] - lam[i]
            q = min(self.order, i + 1)
            a[i] = sigma[i + 1] / sigma[i]
            phi1 = -np.expm1(-h)
            c0 = alpha[i + 1] * phi1
            if q == 1:
                w = [c0]
            elif q == 2:
                r0 = (lam[i] - lam[i - 1]) / h
                w = [c0 * (1 + 0.5 / r0), -c0 * 0.5 / r0]
            else:
                r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
                c1 = alpha[i + 1] * (np.expm1(-h) + h) / h
                c2 = alpha[i + 1] * (1.0 - 2.0 * (np.expm1(-h) + h) / h**2)
                p = c1 * (1 + r0 / (r0 + r1)) + c2 / (r0 + r1)
                qq = -c1 * r0 / (r0 + r1) - c2 / (r0 + r1)
                w = [c0 + p / r0, -p / r0 + qq / r1, -qq / r1]
            w_x0[i, :q] = w
            orders[i] = q
        info = {"solver": self.name, "orders": orders}
        return Plan.multistep(grid, a, np.zeros((n, 1)), w_x0, order=self.order, info=info)
