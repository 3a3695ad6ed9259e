"""Step schedules: an optimised time grid for one model, solver and NFE, as a versioned JSON file.

A step schedule fixes only *where* the steps fall; the solver's own update rule is unchanged, so
every scheduler can run it: Diffusers' through ``set_timesteps(timesteps=...)`` (VP models, integer
training timesteps) or ``set_timesteps(sigmas=...)`` (flow models), fastsample's through the config
key ``step_schedule_file`` or the same arguments. A USF solver schedule (:mod:`fastsample.formats.solver_schedule`)
would also fix each step's prediction, order and corrector, which a step schedule must not, so this
is its own format; its ``grid`` object has the solver schedule's shape (``{"unit", "values"}``).

Units (``grid.unit``):

- ``t``: VP models; n + 1 continuous times t in [0, 1] on the model's integer training timesteps
  (``timestep = N t - 1``), ending at t = 0.
- ``flow_sigma``: flow models; n + 1 *unshifted* flow times (diffusers' ``sigmas`` before SD3's
  ``shift`` or Flux's dynamic ``mu``), from 1 to 0. The scheduler shifts them once, so one file
  serves every resolution of a Flux-style model.

Other keys: ``nfe`` and ``num_steps`` (n), ``solver`` (class and config), ``model`` (fingerprint,
noise schedule, prediction type, flow shift), ``method`` (settings, model calls, seconds),
``conditions`` (selection and held-out seeds and conditions) and ``report`` (selection and held-out
errors of the schedule and of the solver's fixed grids).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .._io import atomic_write
from ..core.grids import check_grid

__all__ = [
    "FORMAT",
    "VERSION",
    "UNITS",
    "StepSchedule",
    "StepScheduleError",
    "load",
    "set_timesteps_kwargs",
    "scheduler_arguments",
]

FORMAT = "fastsample.step_schedule"
VERSION = 1
UNITS = ("t", "flow_sigma")
_KEYS = {"format", "version", "grid", "nfe", "num_steps", "solver", "model", "method", "conditions", "report"}


class StepScheduleError(ValueError):
    """A step schedule that is malformed or does not fit the scheduler it is used with."""


@dataclass(frozen=True)
class StepSchedule:
    """A validated step schedule (see the module docstring); ``values`` float64 (n + 1,), decreasing, ends at 0."""

    values: np.ndarray
    unit: str
    nfe: int
    solver: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    method: dict = field(default_factory=dict)
    conditions: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    def __post_init__(self):
        v = np.asarray(self.values, dtype=np.float64)
        object.__setattr__(self, "values", v)
        if self.unit not in UNITS:
            raise StepScheduleError(f"unknown grid unit {self.unit!r}; allowed: {', '.join(UNITS)}")
        check_grid(v, "the grid", least=None, error=StepScheduleError)
        if v[-1] != 0 or v[0] > 1:
            raise StepScheduleError(f"the grid must lie in [0, 1] and end at 0, got {v.tolist()}")
        if int(self.nfe) < self.num_steps:
            raise StepScheduleError(f"nfe {self.nfe} is less than the {self.num_steps} steps")

    @property
    def num_steps(self) -> int:
        return len(self.values) - 1

    @property
    def is_flow(self) -> bool:
        return self.unit == "flow_sigma"

    # --- use with a scheduler -----------------------------------------------------------------------

    def set_timesteps_kwargs(self, scheduler) -> dict:
        """The ``set_timesteps`` keyword arguments that run this grid on ``scheduler`` (ours or Diffusers')."""
        return set_timesteps_kwargs(scheduler, self.values, self.is_flow)

    def timesteps(self, num_train_timesteps: int) -> np.ndarray:
        """VP: diffusers' integer timesteps of the n evaluation points (int64, decreasing)."""
        if self.is_flow:
            raise StepScheduleError("a flow step schedule has no integer timesteps; pass its `sigmas`")
        return _vp_timesteps(self.values, num_train_timesteps)

    def check_scheduler(self, is_flow: bool, num_inference_steps: int | None = None) -> None:
        """StepScheduleError unless this schedule fits a scheduler of this kind and step count."""
        if is_flow != self.is_flow:
            kind = "flow" if self.is_flow else "VP (diffusion)"
            raise StepScheduleError(f"this step schedule is for a {kind} model; the scheduler is not")
        if num_inference_steps is not None and int(num_inference_steps) != self.num_steps:
            raise StepScheduleError(
                f"the step schedule has {self.num_steps} steps but num_inference_steps={num_inference_steps}; "
                f"pass num_inference_steps={self.num_steps} or use a schedule made for {num_inference_steps} steps"
            )

    # --- serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "grid": {"unit": self.unit, "values": [float(v) for v in self.values]},
            "nfe": int(self.nfe),
            "num_steps": self.num_steps,
            "solver": self.solver,
            "model": self.model,
            "method": self.method,
            "conditions": self.conditions,
            "report": self.report,
        }

    @classmethod
    def from_dict(cls, d: dict) -> StepSchedule:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise StepScheduleError(f"not a step schedule: 'format' is {got!r}, expected {FORMAT!r}")
        if d.get("version") != VERSION:
            raise StepScheduleError(
                f"unsupported step schedule version {d.get('version')!r}; this library reads version {VERSION}"
            )
        extra = set(d) - _KEYS
        if extra:
            raise StepScheduleError(f"unknown key(s) {sorted(extra)}; allowed: {sorted(_KEYS)}")
        g = d.get("grid")
        if not isinstance(g, dict) or set(g) != {"unit", "values"}:
            raise StepScheduleError("'grid' must be an object with 'unit' and 'values'")
        out = cls(
            np.asarray(g["values"], dtype=np.float64),
            str(g["unit"]),
            int(d.get("nfe", len(g["values"]) - 1)),
            *(dict(d.get(k) or {}) for k in ("solver", "model", "method", "conditions", "report")),
        )
        if "num_steps" in d and int(d["num_steps"]) != out.num_steps:
            raise StepScheduleError(f"'num_steps' is {d['num_steps']} but the grid has {out.num_steps} steps")
        return out

    def save(self, path) -> None:
        """Write atomically (see :func:`fastsample._io.atomic_write`)."""
        atomic_write(path, json.dumps(self.to_dict(), indent=1) + "\n")


def set_timesteps_kwargs(scheduler, values, is_flow: bool) -> dict:
    """``set_timesteps`` arguments for a grid in file units on ``scheduler`` (fastsample or Diffusers).

    VP: ``timesteps`` (integer training timesteps, ``N t - 1``); flow: ``sigmas`` (unshifted; the scheduler
    applies its shift or the ``mu`` a pipeline passes), as numpy arrays (Diffusers' UniPC needs an array).
    StepScheduleError if the scheduler takes neither.
    """
    import inspect

    values = np.asarray(values, dtype=np.float64)
    accepted = set(inspect.signature(scheduler.set_timesteps).parameters)
    name = type(scheduler).__name__
    if is_flow:
        if "sigmas" not in accepted:
            raise StepScheduleError(f"{name}.set_timesteps takes no `sigmas`; it cannot run a flow step schedule")
        return {"sigmas": values[:-1].copy()}
    if "timesteps" not in accepted:
        raise StepScheduleError(
            f"{name}.set_timesteps takes no custom `timesteps`, so it cannot run a VP step schedule; use "
            "DPMSolverMultistepScheduler or a fastsample scheduler (DEISScheduler, S3Scheduler, ...)"
        )
    return {"timesteps": _vp_timesteps(values, scheduler.config.num_train_timesteps)}


def _vp_timesteps(values, num_train_timesteps: int) -> np.ndarray:
    """Diffusers' integer timesteps N t - 1 of the evaluation points of a VP grid (int64)."""
    return np.round(np.asarray(values[:-1], dtype=np.float64) * num_train_timesteps - 1.0).astype(np.int64)


def load(path) -> StepSchedule:
    """Read and validate a step schedule file (StepScheduleError naming the file and the reason otherwise)."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError as e:
        raise StepScheduleError(f"step schedule file {path} does not exist") from e
    except json.JSONDecodeError as e:
        raise StepScheduleError(f"{path}: not valid JSON ({e})") from e
    try:
        return StepSchedule.from_dict(d)
    except StepScheduleError as e:
        raise StepScheduleError(f"{path}: {e}") from e


def scheduler_arguments(scheduler, num_inference_steps: int, sigmas=None, timesteps=None) -> tuple:
    """(sigmas, timesteps) for a fastsample scheduler whose config key ``step_schedule_file`` names a file.

    The file's grid replaces what the caller passed (Flux pipelines always pass default ``sigmas``; a
    warning says so); StepScheduleError if the file is for another kind of model or step count.
    """
    from diffusers.utils import logging

    sch = load(scheduler.config.step_schedule_file)
    sch.check_scheduler(scheduler.schedule.is_flow, num_inference_steps)
    if sigmas is not None or timesteps is not None:
        logging.get_logger(__name__).warning(
            f"{type(scheduler).__name__}: the step schedule {scheduler.config.step_schedule_file} fixes the time grid; "
            "the `sigmas`/`timesteps` passed are ignored"
        )
    kw = sch.set_timesteps_kwargs(scheduler)
    return kw.get("sigmas"), kw.get("timesteps")
