"""S^3 / USF solver schedules (Liu et al., ICLR 2024, arXiv 2312.07243): format, executor and search.

- :mod:`.schedule`: the versioned JSON format, validation, converters and the USF-file importer.
- :mod:`.executor`: :class:`USFSolver`, a schedule as a linear Plan; :func:`sample`.
- :mod:`.search`: :func:`search` (evolutionary, surrogate-ranked, multi-fidelity) and :func:`report`.
- :mod:`.cli`: ``fastsample search``.
"""

from .executor import USFSolver, sample
from .schedule import ScheduleError, SolverSchedule, from_diffusers, from_usf, load
from .search import SearchProblem, report, search

__all__ = [
    "SolverSchedule",
    "ScheduleError",
    "USFSolver",
    "SearchProblem",
    "load",
    "sample",
    "from_diffusers",
    "from_usf",
    "search",
    "report",
]
