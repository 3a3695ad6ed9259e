"""Flow ODE solvers: Runge-Kutta in t on dx/dt = v, and multistep exponential integrators in lambda.

For a rectified flow x_t = (1 - t) x0 + t eps (Liu et al., arXiv 2209.03003) the sampling ODE is
dx/dt = v = eps - x0, and every update below is written through (x0, eps) so it runs on the
linear :class:`~.base.Plan` kernel:

- ``euler``: x' = x + (t' - t) v, which is exactly DDIM in prediction form
  x' = alpha' x0 + sigma' eps (reused from :func:`~.base.prediction_form_ddim`). Order 1.
- ``heun`` (order 2), ``midpoint`` (order 2), ``rk3`` (Kutta's third order), ``rk4`` (order 4):
  explicit Runge-Kutta in t (Butcher tableaus shared with :mod:`.deis`). Every stage is a model
  call at its own time; the stage input is x_start + h sum_j A_sj v_j, so ``Plan.ref`` points
  back to the step's start. A stage may not evaluate at t = 0, so the step into t = 0 drops the
  end-point stage: Heun's last step is Euler (as in EDM, arXiv 2206.00364, and diffusers'
  FlowMatchHeun); the last step of RK3 and RK4 is Heun's third-order rule (nodes 0, 1/3, 2/3;
  local order 4 keeps global order 4).
  Runge-Kutta in t is finite at t = 1 (alpha = 0), so these start there directly.
- ``multistep2`` / ``multistep3``: DPM-Solver++(2M) / (3M) (Lu et al., arXiv 2211.01095) in the
  half log-SNR lambda = log(alpha / sigma) = log((1 - t) / t), data-prediction form:
  x' = (sigma' / sigma) x + alpha' (1 - e^{-h}) D with h = lambda' - lambda and D the Lagrange
  extrapolation of x0 (3M adds the second divided difference with the phi_2, phi_3 weights).
  Lower order while the history fills; a grid that starts at t = 1 (lambda = -inf) begins with
  one Euler step; the step into t = 0 (h = inf) is first order, x' = x0-hat (DPM-Solver++ and
  UniPC do the same). Written for any schedule, used here for flows.

Coefficients are float64 numpy arrays computed once per grid.
"""

from __future__ import annotations

import numpy as np

from .base import Plan, Solver, prediction_form_ddim, runge_kutta_plan
from .deis import RK_TABLEAUS

__all__ = ["FlowEulerSolver", "FlowRKSolver", "ExpMultistepSolver", "FLOW_SOLVERS", "make_flow_solver"]

_RK_ORDER = {"heun": 2, "midpoint": 2, "rk3": 3, "rk4": 4}
_RK_FINAL = {"heun": "euler", "midpoint": "midpoint", "rk3": "heun3", "rk4": "heun3"}
_TABLEAU = {"heun": "heun", "midpoint": "midpoint", "rk3": "kutta3", "rk4": "rk4", "heun3": "heun3"}
_EULER = ((0.0,), ((),), (1.0,))


def _check_grid(grid) -> np.ndarray:
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or len(grid) < 2 or np.any(np.diff(grid) >= 0) or grid[-1] < 0:
        raise ValueError(f"a time grid must be 1-D, strictly decreasing and end at t >= 0, got {grid}")
    return grid


class FlowEulerSolver(Solver):
    """Euler on dx/dt = v, i.e. DDIM in prediction form x' = alpha' x0 + sigma' eps. Order 1, 1 call per step."""

    name = "euler"
    order = 1
    stages = 1

    def prepare(self, schedule, grid) -> Plan:
        plan = prediction_form_ddim(schedule, _check_grid(grid))
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
        if method not in _RK_ORDER:
            raise ValueError(f"unknown Runge-Kutta method {method!r}; allowed: {', '.join(_RK_ORDER)}")
        self.method, self.name = method, method
        self.order = _RK_ORDER[method]
        self.stages = len(RK_TABLEAUS[_TABLEAU[method]][0])

    def _tableau(self, final: bool):
        name = _RK_FINAL[self.method] if final else self.method
        return _EULER if name == "euler" else RK_TABLEAUS[_TABLEAU[name]]

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return (num_steps - 1) * self.stages + len(self._tableau(final_zero)[0])

    def plan(self, schedule, grid) -> Plan:
        """Prepare on ``grid`` directly: Runge-Kutta in t needs no special first step at t = 1."""
        if not getattr(schedule, "is_flow", False):
            raise ValueError(f"{self.method!r} integrates the flow ODE dx/dt = v and needs a flow schedule")
        return self.prepare(schedule, grid)

    def prepare(self, schedule, grid) -> Plan:
        grid = _check_grid(grid)
        steps = []
        for i in range(len(grid) - 1):
            t, h = grid[i], grid[i + 1] - grid[i]
            c, A, b = self._tableau(final=grid[i + 1] == 0)
            ones = [1.0] * len(c)
            steps.append(((c, A, b), h, [t + ci * h for ci in c], ones, ones))
        return runge_kutta_plan(grid, steps, f_x0=-1.0, order=self.order, info={"solver": self.name})


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
        grid = _check_grid(grid)
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


FLOW_SOLVERS = ("euler", "heun", "midpoint", "rk3", "rk4", "multistep2", "multistep3")


def make_flow_solver(name: str) -> Solver:
    """The solver named by ``name`` (one of ``FLOW_SOLVERS``)."""
    if name == "euler":
        return FlowEulerSolver()
    if name in _RK_ORDER:
        return FlowRKSolver(name)
    if name in ("multistep2", "multistep3"):
        return ExpMultistepSolver(int(name[-1]))
    raise ValueError(f"unknown flow solver {name!r}; allowed: {', '.join(FLOW_SOLVERS)}")
