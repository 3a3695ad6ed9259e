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

__all__ = ["Plan", "Solver", "History", "linear_step"]


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

    @property
    def nfe(self) -> int:
        return len(self.eval_times)

    @property
    def history_len(self) -> int:
        """How many past evaluations the step reads (states and predictions)."""
        m = max(self.w_eps.shape[1], self.w_x0.shape[1])
        return max(m, int(self.ref.max()) + 1) if self.nfe else 1

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


class Solver:
    """Base class. Subclasses set ``name`` and ``order`` and implement :meth:`prepare`.

    ``stages`` is the number of model calls per grid step (1 for multistep solvers).
    """

    name: str = "solver"
    order: int = 1
    stages: int = 1

    def prepare(self, schedule, grid: np.ndarray) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return num_steps * self.stages

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"
