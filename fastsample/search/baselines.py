"""Fixed-schedule baselines for the S^3 search: every solver and grid we and Diffusers offer at an NFE."""

from __future__ import annotations

import math

import numpy as np

from ..core import grids
from ..formats.solver_schedule import ScheduleError
from ..solvers.sampling import sample as generic_sample
from ..solvers.usf.builtins import builtin
from .problem import SearchProblem, fitness_of

# --- baselines ------------------------------------------------------------------------------------------


def _grid_for(name, ns, n, t_start, t_end):
    final_zero = t_end == 0
    kw = dict(t_start=t_start, final_zero=final_zero)
    if not final_zero:
        kw["t_end"] = t_end
    if name == "time_uniform":
        return grids.uniform_t(ns, n, **kw)
    if name == "time_quadratic":
        return grids.quadratic_t(ns, n, **kw)
    if name == "logSNR":
        return grids.uniform_lambda(ns, n, **kw)
    if name == "karras":
        return grids.karras(ns, n, **kw)
    raise ValueError(name)


BASELINE_GRIDS = ("time_uniform", "time_quadratic", "logSNR", "karras")
SCHEDULE_BASELINES = ("ddim", "dpmsolver++2m", "dpmsolver++3m", "unipc-bh1", "unipc-bh2", "unipc3-bh2", "deis-logrho3")


def baseline_solvers():
    """name -> ('schedule', builtin name) or ('solver', Solver): the fixed-schedule solvers we and Diffusers offer."""
    from ..solvers import DEISSolver

    out = {name: ("schedule", name) for name in SCHEDULE_BASELINES}
    for variant in ("tab", "rhoab", "logrho", "ipndm"):
        for order in (2, 3, 4):
            out[f"deis-{variant}{order}"] = ("solver", DEISSolver(variant, order))
    return out


def evaluate_baselines(
    problem: SearchProblem, nfe: int, seeds, n: int, metric: str = "rmse", solvers=None, grid_names=None
) -> list[dict]:
    """Fitness of every baseline solver x standard grid at ``nfe`` on the given seeds (sorted, best first).

    ``solvers`` / ``grid_names`` restrict the comparison (names from :func:`baseline_solvers`, ``BASELINE_GRIDS``).
    """
    rows = []
    for name, (kind, obj) in baseline_solvers().items():
        if solvers is not None and name not in solvers:
            continue
        for gname in BASELINE_GRIDS if grid_names is None else grid_names:
            grid = _grid_for(gname, problem.noise_schedule, nfe, problem.t_start, problem.t_end)
            vals = []
            for seed in seeds:
                x, ref = problem.batch(seed, n)
                try:
                    if kind == "schedule":
                        out = problem.run(builtin(obj, nfe).with_grid(grid), x)
                    else:
                        out = generic_sample(
                            problem.model_fn,
                            x,
                            problem.noise_schedule,
                            obj,
                            grid,
                            problem.prediction_type,
                            check_finite=False,
                        )
                    vals.append(fitness_of(problem, out, ref, metric))
                except (ScheduleError, ValueError, FloatingPointError):
                    vals.append(math.inf)
            rows.append({"solver": name, "grid": gname, "fitness": float(np.mean(vals))})
    return sorted(rows, key=lambda r: r["fitness"])

