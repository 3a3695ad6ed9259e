"""DDIM (Song et al., arXiv 2010.02502) as the first-order exponential integrator in rho = sigma / alpha.

x_{t'} = (alpha_{t'} / alpha_t) x_t + alpha_{t'} (rho_{t'} - rho_t) eps_t. Order 1, one model
call per step; exact for the final step to sigma = 0 (it returns x0-hat).
"""

from __future__ import annotations

import numpy as np

from .base import Plan, Solver

__all__ = ["DDIMSolver"]


class DDIMSolver(Solver):
    name = "ddim"
    order = 1

    def prepare(self, schedule, grid) -> Plan:
        grid = np.asarray(grid, dtype=np.float64)
        t, tn = grid[:-1], grid[1:]
        alpha, alpha_n = schedule.alpha(t), schedule.alpha(tn)
        rho, rho_n = schedule.sigma(t) / alpha, schedule.sigma(tn) / alpha_n
        n = len(t)
        return Plan(
            eval_times=t.copy(),
            grid=grid,
            step_of_eval=np.arange(n),
            ref=np.zeros(n, dtype=np.int64),
            a=alpha_n / alpha,
            w_eps=(alpha_n * (rho_n - rho))[:, None],
            w_x0=np.zeros((n, 1)),
            order=1,
        )
