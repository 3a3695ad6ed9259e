"""Error bars and the held-out check of EMS statistics: :func:`summary`, :func:`validate_ems`."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..formats.ems_file import EMS, schedule_for_config

# --- error bars and validation ------------------------------------------------------------------------------


def summary(ems: EMS) -> str:
    """Text summary of the statistics' errors: per statistic and third of the lambda range, the median |t| against
    DPM-Solver++'s value (l = 1, s = b = 0) and the James-Stein weight the solver gives it; ends with whether more
    samples are needed (some statistic partly noise, weight 0.2-0.8, at more than a tenth of the points)."""
    from ..solvers.dpmsolver_v3 import shrink

    m = ems.metadata
    lines = [f"{m.get('grid_size')} lambda points x {m.get('num_samples')} samples, shape {m.get('shape')}"]
    if ems.se_l is None:
        return "\n".join(lines + ["no standard errors (format version 1): recompute to get them"])
    k = len(ems.lambdas)
    thirds = np.array_split(np.arange(k), 3)
    partly = {}
    for name, target in (("l", 1.0), ("s", 0.0), ("b", 0.0)):
        est = np.asarray(getattr(ems, name), dtype=np.float64).reshape(k, -1)
        se = np.asarray(getattr(ems, "se_" + name), dtype=np.float64).reshape(k, -1)
        w = np.broadcast_to(shrink(est, se, target)[1], est.shape).mean(axis=1)
        z = np.abs(est - target) / np.maximum(se, 1e-300)
        cells = [
            f"lambda {ems.lambdas[i[0]]:+.1f}..{ems.lambdas[i[-1]]:+.1f}: "
            f"|t| {np.median(z[i]):.1f}, weight {w[i].mean():.2f}"
            for i in thirds
        ]
        lines.append(f"{name}: " + "; ".join(cells))
        partly[name] = int(np.sum((w >= 0.2) & (w <= 0.8)))
    noisy = {n: c for n, c in partly.items() if c > k / 10}
    if noisy:
        what = ", ".join(f"{n} at {c} of {k} points" for n, c in noisy.items())
        lines.append(
            f"more samples needed: partly noise ({what}; the solver shrinks them toward DPM-Solver++); "
            f"4x the samples (--num-samples {4 * int(m.get('num_samples', 0))}) halves the errors"
        )
    else:
        lines.append("enough samples: each statistic is either resolved or indistinguishable from DPM-Solver++'s value")
    return "\n".join(lines)


VALIDATION_GRIDS = ("uniform_lambda", "uniform_t", "quadratic_t", "karras")


def validate_ems(
    ems: EMS,
    model_fn: Callable,
    scheduler_config,
    *,
    nfes=(5, 6, 8, 10),
    num_samples: int = 64,
    seed: int = 1_000_003,
    reference_steps: int = 200,
    batch_size: int = 64,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Check on held-out starts that DPM-Solver-v3 with these statistics beats it without them; choose from which
    lambda on the solver uses them. Stores the result in ``ems.metadata["validation"]`` and returns it.

    From ``num_samples`` standard-normal starts (seeded by ``seed``, not the statistics' seed) at the statistics'
    t_start, solve to t_end with the paper's preset options for each NFE on each grid of
    :data:`VALIDATION_GRIDS`, with and without statistics, against a reference: the statistics-free order-3
    solver with ``reference_steps`` steps on a quadratic-t grid (its distance to half as many steps is stored as
    its error). Statistics are tried from each of the lambdas in the grid's first point and its quartiles on
    (below them l = 1, s = b = 0) and not at all; the solver then uses the start with the lowest mean log error
    ratio (with / without) over grids and NFEs among those not worse anywhere by more than two standard errors
    of that ratio (over the starts); "not at all" always qualifies. ``model_fn`` as for :func:`compute_ems`.

    Result: ``rows`` {grid: {nfe: [RMS with all statistics, without, with them from the chosen lambda]}},
    ``hurt`` [[grid, nfe, with, without]] where all statistics raised the error, ``use_from_lambda``,
    ``reference``, ``num_samples``, ``seed``. The scheduler warns once when ``hurt`` is not empty.
    """
    from ..core import grids as grid_fns
    from ..solvers.dpmsolver_v3 import DPMSolverV3, StatisticsResolutionError, preset
    from ..solvers.sampling import sample

    schedule, ptype = schedule_for_config(scheduler_config)
    ems.check(prediction_type=ptype, schedule=schedule)
    t0, t1 = float(ems.metadata["t_start"]), float(ems.metadata["t_end"])
    device = torch.device("cpu" if device is None else device)

    def fn(x, t):
        return model_fn(x, torch.full((len(x),), float(schedule.timestep(t)), device=x.device, dtype=x.dtype))

    g = torch.Generator().manual_seed(seed)
    x = torch.randn((num_samples, *ems.shape), generator=g, dtype=torch.float64).to(device, dtype)

    def solve(solver, grid):
        with torch.no_grad():
            outs = [
                sample(fn, x[i : i + batch_size], schedule, solver, grid, ptype) for i in range(0, len(x), batch_size)
            ]
        return torch.cat(outs).to(torch.float64)

    def sq_err(a, b):  # per-sample mean squared error (num_samples,)
        return (a - b).pow(2).reshape(len(a), -1).mean(1).cpu().numpy()

    ref_solver = DPMSolverV3(order=3)
    ref = solve(ref_solver, grid_fns.quadratic_t(schedule, reference_steps, t_start=t0, t_end=t1))
    half = solve(ref_solver, grid_fns.quadratic_t(schedule, reference_steps // 2, t_start=t0, t_end=t1))
    lam = ems.lambdas
    starts = [float(lam[0]) + (float(lam[-1]) - float(lam[0])) * q for q in (0.0, 0.25, 0.5, 0.75)]
    starts.append(float(lam[-1]) + 1.0)  # not at all
    cells = {}  # (grid, nfe) -> [per-sample squared errors without, with from each start]
    for name in VALIDATION_GRIDS:
        for n in nfes:
            opts = preset(n)
            opts.pop("time_grid")
            grid = grid_fns.make_grid(name, schedule, n, t_start=t0, t_end=t1)
            try:
                runs = [sq_err(solve(DPMSolverV3(stats=_from_lambda(ems, a), **opts), grid), ref) for a in starts[:-1]]
            except StatisticsResolutionError:  # a step finer than the statistics' grid: not checkable
                continue
            without = sq_err(solve(DPMSolverV3(**opts), grid), ref)
            cells[(name, int(n))] = [without, *runs, without]

    def log_ratio(a, c):  # log RMS ratio and its standard error over the starts (delta method)
        r = 0.5 * math.log(a.mean() / c.mean())
        return r, 0.5 * float(np.std(a / a.mean() - c / c.mean(), ddof=1)) / math.sqrt(len(a))

    best, best_mean = len(starts) - 1, 0.0
    for j in range(len(starts) - 1):
        stats = [log_ratio(v[1 + j], v[0]) for v in cells.values()]
        if stats and all(r <= 2 * se for r, se in stats) and np.mean([r for r, _ in stats]) < best_mean:
            best, best_mean = j, float(np.mean([r for r, _ in stats]))
    rows, hurt = {}, []
    for (name, n), v in cells.items():
        a, c, chosen = (math.sqrt(float(u.mean())) for u in (v[1], v[0], v[1 + best]))
        rows.setdefault(name, {})[str(n)] = [a, c, chosen]
        if a > c:
            hurt.append([name, n, a, c])
    result = {
        "num_samples": num_samples,
        "seed": seed,
        "reference": {"solver": "no statistics, order 3, quadratic t", "steps": reference_steps, "error": 0.0},
        "rows": rows,
        "hurt": hurt,
        "use_from_lambda": starts[best] if cells else None,  # nothing checked: no decision
        "lambda_max": float(lam[-1]),
    }
    result["reference"]["error"] = float(math.sqrt(float(sq_err(half, ref).mean())))
    ems.metadata["validation"] = result
    return result


def _from_lambda(ems: EMS, start: float) -> EMS:
    """The same statistics (shared arrays) with validation metadata that makes the solver use them from ``start``."""
    out = EMS(metadata=dict(ems.metadata, validation={"use_from_lambda": start}), path=ems.path)
    if ems._arrays is None:
        ems._read_arrays()
    out._arrays = ems._arrays
    return out


def validation_text(v: dict) -> str:
    """The result of :func:`validate_ems` as lines: RMS error with / without statistics per grid and NFE."""
    lines = [f"validation on {v['num_samples']} held-out starts (reference error {v['reference']['error']:.2g}):"]
    for grid, row in v["rows"].items():
        cells = "; ".join(f"NFE {n} {a:.4f} / {b:.4f} / {c:.4f}" for n, (a, b, c) in row.items())
        lines.append(f"  {grid} (with / without / used): {cells}")
    if not v["rows"]:
        lines.append("  nothing to check: every step of these NFEs is finer than the statistics' lambda grid")
        return "\n".join(lines)
    if v["hurt"]:
        lines.append("all statistics raised the error at " + ", ".join(f"{g} NFE {n}" for g, n, _, _ in v["hurt"]))
    lam = v["use_from_lambda"]
    lines.append(
        f"the solver uses the statistics from lambda {lam:.2f} on"
        if lam <= v["lambda_max"]
        else "the solver does not use the statistics (DPM-Solver++): they did not help on this check"
    )
    return "\n".join(lines)

