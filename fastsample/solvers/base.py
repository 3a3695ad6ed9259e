"""The solver interface: ``prepare`` once per grid (float64, CPU), then a pure ``step``.

Every solver in the library is a sequence of model evaluations. A :class:`Plan` says where the
model is evaluated (``eval_times``, one entry per model call, so ``len(eval_times)`` is the NFE)
and how the next state is formed after evaluation k from the stored history. For the linear
solvers (DDIM, DEIS, iPNDM, RK in rho, DPM-Solver++, ...) that rule is

    x_next = a[k] * x[k - ref[k]] + sum_j w_eps[k, j] * eps[k - j] + sum_j w_x0[k, j] * x0[k - j]

with x[i], eps[i], x0[i] the state, noise prediction and data prediction at evaluation i.
Coefficients are float64 numpy arrays; the step does float32 (float64 for float64 input)
tensor arithmetic with Python-float scalars, so it never synchronises with a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.grids import check_grid

__all__ = ["Plan", "Solver", "History", "linear_step", "runge_kutta_plan", "final_order_cap"]


@dataclass(frozen=True)
class History:
    """What the step may read: the last few states and predictions, most recent last."""

    x: Sequence[torch.Tensor]
    x0: Sequence[torch.Tensor]
    eps: Sequence[torch.Tensor]


@dataclass(frozen=True)
class Plan:
    """A solver prepared on one time grid.

    Attributes:
        eval_times: float64 (nfe,), the time of each model evaluation, in order.
        grid: float64 (n + 1,), the solver's step boundaries; ``grid[-1]`` is the end time.
        step_of_eval: int64 (nfe,), which grid step each evaluation belongs to.
        ref, a, w_eps, w_x0: the linear update rule (see module docstring), (nfe,) and (nfe, m).
        order: the solver's global order of accuracy on smooth problems.
    """

    eval_times: np.ndarray
    grid: np.ndarray
    step_of_eval: np.ndarray
    ref: np.ndarray
    a: np.ndarray
    w_eps: np.ndarray
    w_x0: np.ndarray
    order: int
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.eval_times)
        for name in ("step_of_eval", "ref", "a"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"Plan.{name} must have shape ({n},)")
        for name in ("w_eps", "w_x0"):
            if getattr(self, name).ndim != 2 or getattr(self, name).shape[0] != n:
                raise ValueError(f"Plan.{name} must have shape ({n}, m)")
        if np.any(self.eval_times <= 0):
            raise ValueError("a plan may not evaluate the model at t <= 0")

    @classmethod
    def multistep(cls, grid, a, w_eps, w_x0, order: int, info: dict | None = None, **extra):
        """A plan with one model call at the start of each grid step (multistep solvers)."""
        grid = np.asarray(grid, dtype=np.float64)
        n = len(grid) - 1
        return cls(
            eval_times=grid[:-1].copy(),
            grid=grid,
            step_of_eval=np.arange(n),
            ref=np.zeros(n, dtype=np.int64),
            a=a,
            w_eps=w_eps,
            w_x0=w_x0,
            order=order,
            info=info or {},
            **extra,
        )

    @property
    def nfe(self) -> int:
        return len(self.eval_times)

    @property
    def history_len(self) -> int:
        """How many past evaluations the step reads (states and predictions)."""
        m = max(self.w_eps.shape[1], self.w_x0.shape[1])
        return max(m, int(self.ref.max()) + 1) if self.nfe else 1

    def correct(self, k: int, history: History) -> History:
        """The history with the newest state x[k] replaced by a corrected one (UniC-style correctors).

        Called after evaluation k is pushed and before :meth:`step`; pure. The base plan has no corrector.
        """
        return history

    def step(self, k: int, history: History) -> torch.Tensor:
        return linear_step(self, k, history)


def linear_step(plan: Plan, k: int, history: History) -> torch.Tensor:
    """The next state after evaluation k; pure (reads ``history``, returns a new tensor).

    ``history`` holds at least ``plan.history_len`` entries ending with evaluation k.
    Arithmetic dtype: that of the predictions (float32, or float64); output in that dtype.
    """
    r = int(plan.ref[k])
    out = history.x[-1 - r].to(history.eps[-1].dtype) * float(plan.a[k])
    for j in np.flatnonzero(plan.w_eps[k]):
        out.add_(history.eps[-1 - j], alpha=float(plan.w_eps[k, j]))
    for j in np.flatnonzero(plan.w_x0[k]):
        out.add_(history.x0[-1 - j], alpha=float(plan.w_x0[k, j]))
    return out


def final_order_cap(i: int, n: int) -> int:
    """The highest order step i of n may have under Diffusers' ``lower_order_final`` rule.

    With fewer than 15 steps the last step is first order and the one before at most second order
    (the multistep schedulers' stabiliser for few steps); any other step is not capped (returns n + 1).
    """
    if n < 15 and i == n - 1:
        return 1
    if n < 15 and i == n - 2:
        return 2
    return n + 1


def prediction_form_ddim(schedule, grid) -> Plan:
    """DDIM as x' = alpha' x0 + sigma' eps (Song et al., arXiv 2010.02502); finite where alpha = 0."""
    tn = np.asarray(grid, dtype=np.float64)[1:]
    return Plan.multistep(grid, np.zeros(len(tn)), schedule.sigma(tn)[:, None], schedule.alpha(tn)[:, None], order=1)


def concat_plans(first: Plan, rest: Plan, grid) -> Plan:
    """``first`` then ``rest`` (whose history reads never reach back into ``first``)."""

    def cat(a, b):
        m = max(a.shape[1], b.shape[1])
        return np.concatenate([np.pad(a, ((0, 0), (0, m - a.shape[1]))), np.pad(b, ((0, 0), (0, m - b.shape[1])))])

    return Plan(
        eval_times=np.concatenate([first.eval_times, rest.eval_times]),
        grid=np.asarray(grid, dtype=np.float64),
        step_of_eval=np.concatenate([first.step_of_eval, rest.step_of_eval + len(first.grid) - 1]),
        ref=np.concatenate([first.ref, rest.ref]),
        a=np.concatenate([first.a, rest.a]),
        w_eps=cat(first.w_eps, rest.w_eps),
        w_x0=cat(first.w_x0, rest.w_x0),
        order=rest.order,
        info=dict(rest.info),
    )


def runge_kutta_plan(grid, steps, f_x0: float, order: int, info: dict) -> Plan:
    """A :class:`Plan` from explicit Runge-Kutta steps (Butcher tableaux), one stage per model call.

    ``steps`` holds, per grid step, ``(tableau, h, stage_times, a, scale)``: the
    :class:`~.tableaux.Tableau`, the step size h in the integration variable, the model-evaluation time of each
    stage, and per stage s the factors of the state that follows it (stage s + 1, or the step's
    end for the last): ``a[s] * x_start + scale[s] * h * sum_j W[s][j] f_j`` with W = (A[1:], b).
    The derivative is f = eps + f_x0 * x0 (f_x0 = 0: dy/drho = eps; f_x0 = -1: flow velocity).
    """
    times, step_of_eval, refs, a_all, rows = [], [], [], [], []
    for i, (tab, h, stage_t, a, scale) in enumerate(steps):
        weights = list(tab.A[1:]) + [tab.b]
        for s in range(len(tab.c)):
            times.append(stage_t[s])
            step_of_eval.append(i)
            refs.append(s)
            a_all.append(a[s])
            rows.append([scale[s] * h * weights[s][s - j] for j in range(s + 1)])
    m = max(len(r) for r in rows)
    w = np.array([r + [0.0] * (m - len(r)) for r in rows])
    return Plan(
        eval_times=np.asarray(times, dtype=np.float64),
        grid=np.asarray(grid, dtype=np.float64),
        step_of_eval=np.asarray(step_of_eval, dtype=np.int64),
        ref=np.asarray(refs, dtype=np.int64),
        a=np.asarray(a_all, dtype=np.float64),
        w_eps=w,
        w_x0=f_x0 * w if f_x0 else np.zeros((len(times), 1)),
        order=order,
        info=info,
    )


class Solver:
    """Base class. Subclasses set ``name`` and ``order`` and implement :meth:`prepare`.

    ``stages`` is the number of model calls per grid step (1 for multistep solvers).
    """

    name: str = "solver"
    order: int = 1
    stages: int = 1

    def prepare(self, schedule, grid: np.ndarray) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError

    def plan(self, schedule, grid) -> Plan:
        """Validate ``grid`` and prepare; the entry point that samplers and the adapter use.

        A grid that starts where alpha = 0 (pure noise, t = 1 of a flow) begins with one DDIM
        step written in prediction form, x' = alpha' x0 + sigma' eps, which is finite there;
        the solver's own plan then starts at ``grid[1]``.
        """
        grid = check_grid(grid)
        if float(schedule.alpha(grid[0])) > 0:
            return self.prepare(schedule, grid)
        if len(grid) == 2:
            return prediction_form_ddim(schedule, grid)
        return concat_plans(prediction_form_ddim(schedule, grid[:2]), self.prepare(schedule, grid[1:]), grid)

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return num_steps * self.stages

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"
