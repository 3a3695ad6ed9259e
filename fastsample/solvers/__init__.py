"""Solvers: ``prepare(schedule, grid) -> Plan`` once per grid, then a pure linear step (see :mod:`.base`)."""

from .base import History, Plan, Solver, linear_step
from .ddim import DDIMSolver
from .deis import VARIANTS as DEIS_VARIANTS
from .deis import DEISSolver

__all__ = ["History", "Plan", "Solver", "linear_step", "DDIMSolver", "DEISSolver", "DEIS_VARIANTS"]
