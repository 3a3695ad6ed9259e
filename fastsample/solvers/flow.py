"""Flow ODE solvers: Runge-Kutta in t on dx/dt = v, and multistep exponential integrators in lambda.

For a rectified flow x_t = (1 - t) x0 + t eps (Liu et al., arXiv 2209.03003) the sampling ODE is
dx/dt = v = eps - x0, and every update below is written through (x0, eps) so it runs on the
linear :class:`~.base.Plan` kernel:

- ``euler``: x' = x + (t' - t) v, which is exactly DDIM in prediction form
  x' = alpha' x0 + sigma' eps (reused from :func:`~.base.prediction_form_ddim`). Order 1.
- ``heun`` (order 2), ``midpoint`` (order 2), ``rk3`` (Kutta's third order), ``rk4`` (order 4):
  explicit Runge-Kutta in t (Butcher tableaux from :mod:`.tableaux`). Every stage is a model
  call at its own time; the stage input is x_start + h sum_j A_sj v_j, so ``Plan.ref`` points
  back to the step's start. A stage may not evaluate at t = 0, so the step into t = 0 drops the
  end-point stage: Heun's last step is Euler (as in EDM, arXiv 2206.00364, and diffusers'
  FlowMatchHeun); the last step of RK3 and RK4 is Heun's third-order rule (nodes 0, 1/3, 2/3;
  local order 4 keeps global order 4).
  Runge-Kutta in t is finite at t = 1 (alpha = 0), so these start there directly.
- ``multistep2`` / ``multistep3``: DPM-Solver++(2M) / (3M) in the half log-SNR lambda =
  log((1 - t) / t), :class:`~.multistep.ExpMultistepSolver` (written for any schedule); a grid that
  starts at t = 1 (lambda = -inf) begins with one Euler step.

Coefficients are float64 numpy arrays computed once per grid.
"""

from __future__ import annotations

from ..core.grids import check_grid
from .base import Plan, Solver, prediction_form_ddim, runge_kutta_plan
from .multistep import ExpMultistepSolver
from .tableaux import TABLEAUX

__all__ = ["FlowEulerSolver", "FlowRKSolver", "FLOW_SOLVERS", "make_flow_solver"]

_TABLEAU = {"heun": "heun", "midpoint": "midpoint", "rk3": "kutta3", "rk4": "rk4"}  # method -> tableau
_RK_FINAL = {"heun": "euler", "midpoint": "midpoint", "rk3": "heun3", "rk4": "heun3"}  # into t = 0


class FlowEulerSolver(Solver):
    """Euler on dx/dt = v, i.e. DDIM in prediction form x' = alpha' x0 + sigma' eps. Order 1, 1 call per step."""

    name = "euler"
    order = 1
    stages = 1

    def prepare(self, schedule, grid) -> Plan:
        plan = prediction_form_ddim(schedule, check_grid(grid))
        plan.info["solver"] = self.name
        return plan


class FlowRKSolver(Solver):
    """Explicit Runge-Kutta in t on the flow ODE dx/dt = v (see the module docstring).

    Args:
        method: ``"heun"`` (order 2, 2 calls per step), ``"midpoint"`` (order 2, 2 calls), ``"rk3"``
            (Kutta's third order, 3 calls) or ``"rk4"`` (classical RK4, order 4, 4 calls). The step
            into t = 0 uses one call fewer for Heun and RK4.
    """

    def __init__(self, method: str = "heun"):
        if method not in _TABLEAU:
            raise ValueError(f"unknown Runge-Kutta method {method!r}; allowed: {', '.join(_TABLEAU)}")
        self.method, self.name = method, method
        self.order = TABLEAUX[_TABLEAU[method]].order
        self.stages = len(TABLEAUX[_TABLEAU[method]].c)

    def _tableau(self, final: bool):
        return TABLEAUX[_RK_FINAL[self.method] if final else _TABLEAU[self.method]]

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return (num_steps - 1) * self.stages + len(self._tableau(final_zero).c)

    def plan(self, schedule, grid) -> Plan:
        """Prepare on ``grid`` directly: Runge-Kutta in t needs no special first step at t = 1."""
        if not getattr(schedule, "is_flow", False):
            raise ValueError(f"{self.method!r} integrates the flow ODE dx/dt = v and needs a flow schedule")
        return self.prepare(schedule, grid)

    def prepare(self, schedule, grid) -> Plan:
        grid = check_grid(grid)
        steps = []
        for i in range(len(grid) - 1):
            t, h = grid[i], grid[i + 1] - grid[i]
            tab = self._tableau(final=grid[i + 1] == 0)
            ones = [1.0] * len(tab.c)
            steps.append((tab, h, [t + ci * h for ci in tab.c], ones, ones))
        return runge_kutta_plan(grid, steps, f_x0=-1.0, order=self.order, info={"solver": self.name})


FLOW_SOLVERS = ("euler", "heun", "midpoint", "rk3", "rk4", "multistep2", "multistep3")


def make_flow_solver(name: str) -> Solver:
    """The solver named by ``name`` (one of ``FLOW_SOLVERS``)."""
    if name == "euler":
        return FlowEulerSolver()
    if name in _TABLEAU:
        return FlowRKSolver(name)
    if name in ("multistep2", "multistep3"):
        return ExpMultistepSolver(int(name[-1]))
    raise ValueError(f"unknown flow solver {name!r}; allowed: {', '.join(FLOW_SOLVERS)}")
