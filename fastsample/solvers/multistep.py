"""DPM-Solver++(2M) / (3M), the multistep exponential integrator in data-prediction form, for any schedule.

Lu et al., arXiv 2211.01095. In the half log-SNR lambda = log(alpha / sigma) one step is
x' = (sigma' / sigma) x + alpha' (1 - e^{-h}) D with h = lambda' - lambda and D the Lagrange
extrapolation of x0 (3M adds the second divided difference with the phi_2, phi_3 weights). Lower
order while the history fills; the step into t = 0 (h = inf) is first order, x' = x0-hat (DPM-Solver++
and UniPC do the same). The math is stated once, as the solver schedule
:func:`~fastsample.solvers.usf.builtins.dpmsolver_multistep` run by the USF executor; coefficients are
float64 numpy arrays computed once per grid.

3M differs from Diffusers' ``DPMSolverMultistepScheduler`` (and the dpm-solver reference code): they weight the
second-derivative term by half its exact Taylor weight, which makes their 3M asymptotically second order; this
one uses the exact weight and is third order (``test_multistep3_exact_weight_is_third_order``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..core.grids import check_grid
from .base import Plan, Solver
from .usf.builtins import dpmsolver_multistep
from .usf.executor import USFSolver

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
        if schedule.alpha(grid[0]) <= 0:
            raise ValueError("the multistep update needs alpha > 0 at its first step (use Solver.plan)")
        solver_schedule = dpmsolver_multistep(
            len(grid) - 1,
            self.order,
            lower_order_final=False,
            final_zero=bool(schedule.sigma(grid[-1]) == 0),
            exact_third_order=True,
        )
        plan = USFSolver(solver_schedule).prepare(schedule, grid)
        orders = np.array([step.order for step in solver_schedule.steps], dtype=np.int64)
        return replace(plan, order=self.order, info={"solver": self.name, "orders": orders})
