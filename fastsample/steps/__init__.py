"""Optimised step schedules for any model and solver: ``fastsample steps`` (GITS, arXiv 2405.11326).

- :mod:`.schedule_file`: the versioned JSON step-schedule file (:class:`StepSchedule`, :func:`load`).
- :mod:`.optimize`: teacher trajectories, the first-order cost matrix, dynamic programming and the
  refinement with the real solver (:func:`optimize_steps`).
- :mod:`.models`: ``model_fn`` adapters for Diffusers UNets, transformers, pipelines and the demo models.
- :mod:`.cli`: the ``fastsample steps`` command.
"""

from ..formats.step_schedule import StepSchedule, StepScheduleError, load
from .optimize import (
    CheckpointMismatch,
    Condition,
    SchedulerRunner,
    StepProblem,
    compute_teachers,
    cost_matrix,
    dp_path,
    fixed_grids,
    heldout_report,
    optimize,
    optimize_steps,
    refine,
)

__all__ = [
    "CheckpointMismatch",
    "Condition",
    "SchedulerRunner",
    "StepProblem",
    "StepSchedule",
    "StepScheduleError",
    "compute_teachers",
    "cost_matrix",
    "dp_path",
    "fixed_grids",
    "heldout_report",
    "load",
    "optimize",
    "optimize_steps",
    "refine",
]
