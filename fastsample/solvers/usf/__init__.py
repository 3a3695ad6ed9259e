"""S^3 / USF solver schedules as solvers (Liu et al., ICLR 2024, arXiv 2312.07243).

- :mod:`.executor`: :class:`USFSolver`, a solver schedule as a linear Plan; :func:`run_schedule`.
- :mod:`.builtins`: Diffusers' multistep solvers as solver schedules; :func:`from_diffusers`.

The file format is :mod:`fastsample.formats.solver_schedule`; the search is :mod:`fastsample.search`.
"""

from .builtins import builtin, from_diffusers
from .executor import USFSolver, run_schedule

__all__ = ["USFSolver", "builtin", "from_diffusers", "run_schedule"]
