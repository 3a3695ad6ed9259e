"""Fixed-schedule baselines for the S^3 search: every solver and grid we and Diffusers offer at an NFE."""

from __future__ import annotations

import math

import numpy as np

from ..core import grids
from ..formats.solver_schedule import ScheduleError
from ..solvers.sampling import sample as generic_sample
from ..solvers.usf.builtins import builtin, first_point_usable
from .problem import SearchProblem, fitness_of

# --- baselines ------------------------------------------------------------------------------------------


def _grid_for(name, ns, n, t_start, t_end):
    """A baseline grid by its name in :data:`fastsample.core.grids.GRIDS`, from t_start to t_end (0: data;
    a VP grid then steps from its last trained time to 0, a flow grid spaces its points down to 0)."""
    end = {"final_zero": True} if t_end == 0 and not ns.is_flow else {"t_end": t_end}
    return grids.make_grid(name, ns, n, t_start=t_start, **end)


BASELINE_GRIDS = ("time_uniform", "time_quadratic", "logSNR", "karras")


def baseline_grids(ns) -> tuple:
    """The names in :data:`BASELINE_GRIDS` defined for the noise schedule (flows: :data:`grids.FLOW_GRIDS`)."""
    return tuple(g for g in BASELINE_GRIDS if not ns.is_flow or grids.GRIDS[g] in grids.FLOW_GRIDS)


SCHEDULE_BASELINES = ("ddim", "dpmsolver++2m", "dpmsolver++3m", "unipc-bh1", "unipc-bh2", "unipc3-bh2", "deis-logrho3")


def baseline_solvers():
    """name -> ('schedule', builtin name) or ('solver', Solver): the fixed-schedule solvers we and Diffusers offer."""
    from ..solvers import DEISSolver

    out = {name: ("schedule", name) for name in SCHEDULE_BASELINES}
    for variant in ("tab", "rhoab", "logrho", "ipndm"):
        for order in (2, 3, 4):  # "(fastsample)": the builtin "deis-logrho3" is Diffusers' DEIS, kept beside ours
            out[f"deis-{variant}{order} (fastsample)"] = ("solver", DEISSolver(variant, order))
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
        for gname in baseline_grids(problem.noise_schedule) if grid_names is None else grid_names:
            grid = _grid_for(gname, problem.noise_schedule, nfe, problem.t_start, problem.t_end)
            vals = []
            for seed in seeds:
                x, ref = problem.batch(seed, n)
                try:
                    if kind == "schedule":
                        first_usable = first_point_usable(problem.noise_schedule, grid[0])
                        out = problem.run(builtin(obj, nfe, first_usable=first_usable).with_grid(grid), x)
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
