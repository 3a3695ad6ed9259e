"""``S3Scheduler``: runs an S^3 / USF solver schedule (Liu et al., arXiv 2312.07243) as a drop-in Diffusers scheduler.

``S3Scheduler.from_schedule(path)`` (config key ``schedule_file``) executes a schedule file: its
own time grid, per-step prediction type, Taylor order, derivative estimates and correctors. Its NFE
is fixed, so ``num_inference_steps`` must equal it (ScheduleError otherwise). Without a file the
scheduler runs the converter named by ``builtin_schedule`` (``unipc-bh2``, ``dpmsolver++2m``, ...;
see :data:`fastsample.solvers.usf.builtins.BUILTINS`) on the usual grid for any number of steps. VP and
flow models; a schedule with the analytical first step sets ``init_noise_sigma`` to sigma_1 / sigma_0,
which VP pipelines multiply their starting noise by.
"""

from __future__ import annotations

import os

import numpy as np
from diffusers.utils import logging

from ..formats.solver_schedule import ScheduleError, SolverSchedule, load
from ..solvers.base import Solver
from ..solvers.usf.builtins import builtin, first_point_usable
from ..solvers.usf.executor import USFSolver
from .adapter import FastScheduler

logger = logging.get_logger(__name__)

__all__ = ["S3Scheduler"]


class _ScheduleSolver(Solver):
    """The adapter's solver: the USF executor on a builtin made for the grid's length, or on the file's schedule."""

    name = "usf"

    def __init__(self, builtin_name: str | None, solver_schedule: SolverSchedule | None = None):
        self.builtin_name, self.solver_schedule = builtin_name, solver_schedule
        self.order = 1

    def plan(self, schedule, grid):
        """A builtin is made for the grid's length (img2img restarts it afresh); a file's schedule is truncated."""
        if self.builtin_name is not None:
            sch = builtin(self.builtin_name, len(grid) - 1, first_usable=first_point_usable(schedule, grid[0]))
            return USFSolver(sch).plan(schedule, grid)
        skip = self.solver_schedule.num_steps - (len(grid) - 1)
        return USFSolver(self.solver_schedule.tail(skip)).plan(schedule, grid)


class S3Scheduler(FastScheduler):
    artifact_keys = FastScheduler.artifact_keys + ("schedule_file",)
    config_keys = {"schedule_file": None, "builtin_schedule": "unipc-bh2"}

    @classmethod
    def from_schedule(cls, path, **kwargs) -> S3Scheduler:
        """A scheduler for the schedule file at ``path`` (other config keys as for ``from_config``)."""
        return cls(schedule_file=os.fspath(path), **kwargs)

    def make_solver(self):
        path = self.config.schedule_file
        if path and self.config.step_schedule_file:
            raise ScheduleError("a solver schedule file fixes its own time grid; do not also set `step_schedule_file`")
        self.solver_schedule = load(path) if path else None
        if self.solver_schedule is None:
            builtin(self.config.builtin_schedule, 1)  # an unknown name fails at construction
            return _ScheduleSolver(self.config.builtin_schedule)
        return _ScheduleSolver(None, self.solver_schedule)

    def make_grid(self, num_inference_steps: int, sigmas=None, timesteps=None, mu=None) -> np.ndarray:
        sch, s = self.solver_schedule, self.schedule
        if sch is None:
            return super().make_grid(num_inference_steps, sigmas=sigmas, timesteps=timesteps, mu=mu)
        sch.check_nfe(num_inference_steps)
        if sigmas is not None or timesteps is not None:
            logger.warning(
                "S3Scheduler: the schedule file fixes the time grid; the `sigmas`/`timesteps` passed are ignored"
            )
        if sch.afs != "none" and s.is_flow:
            raise ScheduleError("schedules with the analytical first step run on VP pipelines only")
        grid = sch.times(s)
        if not s.is_flow:
            grid = self._snap(grid)
        return grid

    def _set_grid(self, grid, device=None):
        super()._set_grid(grid, device)
        self.init_noise_sigma = float(self.plan.info.get("x_scale", 1.0))
