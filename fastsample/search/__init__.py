"""S^3 search for solver schedules (Liu et al., arXiv 2312.07243): an evaluation app, ``fastsample search``.

- :mod:`.problem`: :class:`SearchProblem` (model, noises, reference) and the fitness.
- :mod:`.genotype`: solver schedules as genes and surrogate features.
- :mod:`.baselines`: every fixed-schedule solver x grid at an NFE.
- :mod:`.evolution`: :func:`search` (evolutionary, surrogate-ranked, multi-fidelity) and :func:`report`.
- :mod:`.cli`: the ``fastsample search`` command.
"""

from .baselines import baseline_solvers, evaluate_baselines
from .evolution import SearchResult, report, search
from .problem import SearchProblem

__all__ = ["SearchProblem", "SearchResult", "search", "evaluate_baselines", "report", "baseline_solvers"]
