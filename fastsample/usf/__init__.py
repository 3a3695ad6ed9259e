"""S^3 / USF solver schedules (Liu et al., ICLR 2024, arXiv 2312.07243): format, executor and search."""

from .executor import USFSolver, sample
from .schedule import ScheduleError, SolverSchedule, from_diffusers, from_usf, load

__all__ = ["SolverSchedule", "ScheduleError", "USFSolver", "load", "sample", "from_diffusers", "from_usf", "search"]


def search(*args, **kwargs):
    """See :func:`fastsample.usf.search.search` (imported lazily)."""
    from .search import search as _search

    return _search(*args, **kwargs)
