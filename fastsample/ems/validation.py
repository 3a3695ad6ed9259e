"""Error bars and the held-out check of EMS statistics: :func:`summary`, :func:`validate_ems`."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..core import grids
from ..core.model import time_labels
from ..core.schedules import schedule_for_config
from ..formats.ems_file import EMS

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
# the grids a flow scheduler accepts (log-SNR and Karras grids have no finite first point at a flow's t = 1)
FLOW_VALIDATION_GRIDS = tuple(n for n in VALIDATION_GRIDS if grids.GRIDS[n] in grids.FLOW_GRIDS)
SPACINGS = ("leading", "trailing", "linspace")
"""Diffusers' ``timestep_spacing`` values: a pipeline's scheduler config states one (DDPM and SD: "leading")."""


def scheduler_grids(ems: EMS, scheduler_config, n: int) -> dict:
    """{setting: grid} - the time grids ``DPMSolverV3Scheduler.from_config(scheduler_config)`` with these statistics
    runs for ``n`` steps, exactly (snapped to integer timesteps, final step to t = 0 as its config says): "preset"
    (no grid option: the paper's grid on the statistics' range) and, for diffusion models, each of Diffusers'
    :data:`SPACINGS` with the config's ``steps_offset``; only grids within the statistics' lambda range (the
    scheduler refuses the others). Values: (grid, the scheduler's solver options for it)."""
    from ..schedulers.dpmsolver_v3 import DPMSolverV3Scheduler

    plain = dict(time_grid=None, timestep_spacing=None, use_karras_sigmas=False, use_lambdas=False)
    plain["guidance_scale"] = None if ems.guidance_scale == 1.0 else ems.guidance_scale
    settings = {"preset": {}}
    if not schedule_for_config(scheduler_config)[0].is_flow:
        settings.update({sp: {"timestep_spacing": sp} for sp in SPACINGS})
    lo, hi = float(ems.lambdas[0]), float(ems.lambdas[-1])
    out = {}
    for label, kw in settings.items():
        s = DPMSolverV3Scheduler.from_config(scheduler_config, **{**plain, **kw}).use_ems(ems)
        grid = np.asarray(s.make_grid(n), dtype=np.float64)
        with np.errstate(divide="ignore"):
            lam = np.asarray(s.schedule.lambda_(grid), dtype=np.float64)
        lam = lam[np.isfinite(lam)]
        if lam.min() >= lo - 1e-6 * max(1.0, hi - lo) and lam.max() <= hi + 1e-6 * max(1.0, hi - lo):
            opts = s.solver_options(n)
            opts.pop("time_grid")
            out[label] = (grid, opts)
    return out


def validate_ems(
    ems: EMS,
    model_fn: Callable,
    scheduler_config,
    *,
    nfes=(5, 6, 7, 8, 9, 10),
    num_samples: int = 1024,
    seed: int = 1_000_003,
    reference_steps: int = 200,
    batch_size: int = 256,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Decide, per time grid and number of steps, from which lambda DPM-Solver-v3 uses these statistics: only
    where, on held-out starts, they lower its error with confidence. Stores the result in
    ``ems.metadata["validation"]`` (the solver applies it, :func:`~fastsample.solvers.dpmsolver_v3.validated_start`)
    and returns it.

    Grids, for each NFE: each of :data:`VALIDATION_GRIDS` from the statistics' t_start to t_end (flows: from t = 1
    to 0, as their scheduler runs, on :data:`FLOW_VALIDATION_GRIDS`) with the paper's preset options, and the
    grids the scheduler itself runs from ``scheduler_config`` (:func:`scheduler_grids`: its preset and Diffusers'
    spacings, exactly, with its options), each distinct grid once. From ``num_samples`` standard-normal starts
    (seeded by ``seed``, not the statistics' seed) at the grid's first time, solve to its last against a
    reference from the same time to the same end: the statistics-free order-3 solver with ``reference_steps``
    steps on a quadratic-t grid (the largest distance of a reference to half as many steps is stored as its
    error). Candidates: the statistics from the statistics' first lambda, from each of its quartiles (below them
    l = 1, s = b = 0), not at all. Rule, per (grid, NFE), :func:`choose_start`: r = log of the RMS error ratio
    with / without, paired over the same starts, se its standard error (delta method); selected on half the
    starts (better with r + 2 se <= 0, ~98% one-sided confidence; a later start only where it beats an earlier
    one so), confirmed on the other half (r + 2 se <= 0 there, else the statistics are off on that grid). Cost
    per grid and NFE: 5 solves of ``num_samples`` starts; per distinct (first, last) time: 1.5
    ``reference_steps`` model calls (Diffusers' "leading" spacing starts at another time per NFE).
    ``model_fn`` as for :func:`compute_ems`.

    Result: ``decisions`` [{grid, steps, lambdas (the grid's finite ones), use_from_lambda, log_ratio, upper (r
    and r + 2 se on the confirming starts)}], ``rows`` {grid: {nfe: [RMS with all statistics, without, with the
    decision]}}, ``hurt`` [[grid, nfe, with, without]] where all statistics raised the error, ``off`` [[grid,
    nfe]] where they are not used, ``use_from_lambda`` (the most cautious decision: for files read by code
    without per-grid decisions), ``lambda_max``, ``reference``, ``num_samples``, ``seed``, ``rule``.
    """
    from ..solvers.dpmsolver_v3 import DPMSolverV3, StatisticsResolutionError, preset
    from ..solvers.sampling import sample

    schedule, ptype = schedule_for_config(scheduler_config)
    ems.check(prediction_type=ptype, schedule=schedule)
    t0, t1, names = float(ems.metadata["t_start"]), float(ems.metadata["t_end"]), VALIDATION_GRIDS
    if schedule.is_flow:  # the flow scheduler's own grids: from pure noise at t = 1 to t = 0 (infinite lambda)
        t0, t1, names = 1.0, 0.0, FLOW_VALIDATION_GRIDS
    device = torch.device("cpu" if device is None else device)

    def fn(x, t):
        return model_fn(x, time_labels(schedule, t, x, x.dtype))

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

    ref_solver, refs, ref_errors = DPMSolverV3(order=3), {}, []

    def reference(grid):  # the high-accuracy solution from the grid's first time to its last, per (first, last)
        key = (float(grid[0]), float(grid[-1]))
        if key not in refs:
            ends = dict(t_start=key[0], t_end=key[1])
            if key[1] == 0.0 and not schedule.is_flow:  # a VP schedule's t = 0: the final step of the grid
                ends = dict(t_start=key[0], t_end=schedule.t_min, final_zero=True)
            refs[key] = solve(ref_solver, grids.quadratic_t(schedule, reference_steps, **ends))
            half = solve(ref_solver, grids.quadratic_t(schedule, reference_steps // 2, **ends))
            ref_errors.append(math.sqrt(float(sq_err(half, refs[key]).mean())))
        return refs[key]

    lam = ems.lambdas
    starts, off = candidate_starts(lam)

    cases = []  # (label, nfe, grid, solver options), each distinct grid once
    for n in nfes:
        opts = preset(n)
        opts.pop("time_grid")
        named = [(name, grids.make_grid(name, schedule, n, t_start=t0, t_end=t1), opts) for name in names]
        for label, grid, o in named + [(k, *v) for k, v in scheduler_grids(ems, scheduler_config, n).items()]:
            if not any(c[1] == n and len(c[2]) == len(grid) and np.array_equal(c[2], grid) for c in cases):
                cases.append((label, n, grid, o))
    decisions, rows, hurt, off_cells = [], {}, [], []
    for name, n, grid, opts in sorted(cases, key=lambda c: [*names, "preset", *SPACINGS].index(c[0])):
        try:
            runs = [
                sq_err(solve(DPMSolverV3(stats=_from_lambda(ems, a), **opts), grid), reference(grid)) for a in starts
            ]
        except StatisticsResolutionError:  # a step finer than the statistics' grid: not checkable
            continue
        without = sq_err(solve(DPMSolverV3(**opts), grid), reference(grid))
        j, r, upper = choose_start(runs, without)
        with np.errstate(divide="ignore"):
            grid_lam = np.asarray(schedule.lambda_(grid), dtype=np.float64)
        decisions.append(
            {
                "grid": name,
                "steps": len(grid) - 1,
                "lambdas": [float(v) for v in grid_lam[np.isfinite(grid_lam)]],
                "use_from_lambda": off if j is None else starts[j],
                "log_ratio": 0.0 if j is None else r,
                "upper": 0.0 if j is None else upper,
            }
        )
        a, c = math.sqrt(float(runs[0].mean())), math.sqrt(float(without.mean()))
        chosen = c if j is None else math.sqrt(float(runs[j].mean()))
        rows.setdefault(name, {})[str(n)] = [a, c, chosen]
        if a > c:
            hurt.append([name, int(n), a, c])
        if j is None:
            off_cells.append([name, int(n)])
    result = {
        "num_samples": num_samples,
        "seed": seed,
        "rule": "per grid and NFE: select on the even-numbered starts among the starts with r + 2 se <= 0 (log "
        "RMS ratio with / without, paired), a later start only where it beats the earlier choice with r + 2 se <= 0; "
        "keep it if r + 2 se <= 0 on the odd-numbered starts, else off; log_ratio and upper are the odd starts'",
        "reference": {
            "solver": "no statistics, order 3, quadratic t",
            "steps": reference_steps,
            "error": max(ref_errors, default=0.0),
        },
        "decisions": decisions,
        "rows": rows,
        "hurt": hurt,
        "off": off_cells,
        "use_from_lambda": max(d["use_from_lambda"] for d in decisions) if decisions else None,
        "lambda_max": float(lam[-1]),
    }
    ems.metadata["validation"] = result
    return result


def candidate_starts(lambdas) -> tuple[list[float], float]:
    """([the statistics' first lambda, its quartiles], a start beyond the range = off): the lambdas from which the
    validation tries the statistics, for the statistics' increasing lambda grid ``lambdas`` (K,)."""
    lo, hi = float(lambdas[0]), float(lambdas[-1])
    return [lo + (hi - lo) * q for q in (0.0, 0.25, 0.5, 0.75)], hi + 1.0


def log_ratio(a, c) -> tuple[float, float]:
    """Log RMS ratio with / without and its standard error (delta method), from per-start squared errors ``a``
    (with) and ``c`` (without) paired over the same starts, 1-D arrays of equal length."""
    r = 0.5 * math.log(a.mean() / c.mean())
    return r, 0.5 * float(np.std(a / a.mean() - c / c.mean(), ddof=1)) / math.sqrt(len(a))


def choose_start(runs, without) -> tuple[int | None, float, float]:
    """(index into ``runs`` or None = off, log_ratio, upper) - the rule that decides from per-start squared errors,
    ``runs`` [(N,) per candidate start, earliest start (most statistics) first] and ``without`` (N,), paired over
    the same N starts. The statistics' errors are heavy-tailed (a few starts carry most of the squared error), so a
    choice among candidates made on the same starts that test it is optimistic (winner's curse); hence:

    1. select on the even-numbered starts: the candidates with r + 2 se <= 0 there (:func:`log_ratio` against
       ``without``); from the earliest, move to a later one only where it beats the current choice with r + 2 se
       <= 0 (paired against it), else keep the one with more statistics (a start inside the range is a switch
       that costs accuracy of its own);
    2. confirm on the odd-numbered starts, which the selection never saw: kept when r + 2 se <= 0 there (a valid
       one-sided test whatever was selected), else off. ``log_ratio`` and ``upper`` (= r + 2 se) are the
       confirming half's."""

    def upper(a, c):
        r, se = log_ratio(a, c)
        return r, r + 2 * se

    half = [e[0::2] for e in runs]
    ok = [j for j, e in enumerate(half) if upper(e, without[0::2])[1] <= 0]
    if not ok:
        return None, 0.0, 0.0
    j = ok[0]
    for k in ok[1:]:
        if upper(half[k], half[j])[1] <= 0:
            j = k
    r, up = upper(runs[j][1::2], without[1::2])
    return (j, r, up) if up <= 0 else (None, 0.0, 0.0)


def _from_lambda(ems: EMS, start: float) -> EMS:
    """The same statistics (shared arrays) with validation metadata that makes the solver use them from ``start``."""
    out = EMS(metadata=dict(ems.metadata, validation={"use_from_lambda": start}), path=ems.path)
    if ems._arrays is None:
        ems._read_arrays()
    out._arrays = ems._arrays
    return out


def validation_text(v: dict) -> str:
    """The result of :func:`validate_ems` as lines: RMS error with / without / as decided per grid and NFE."""
    lines = [f"validation on {v['num_samples']} held-out starts (reference error {v['reference']['error']:.2g}):"]
    for grid, row in v["rows"].items():
        cells = "; ".join(f"NFE {n} {a:.4f} / {b:.4f} / {c:.4f}" for n, (a, b, c) in row.items())
        lines.append(f"  {grid} (with all / without / used): {cells}")
    if not v["rows"]:
        lines.append("  nothing to check: every step of these NFEs is finer than the statistics' lambda grid")
        return "\n".join(lines)
    if v["hurt"]:
        lines.append("all statistics raised the error at " + ", ".join(f"{g} NFE {n}" for g, n, _, _ in v["hurt"]))
    used = len(v["decisions"]) - len(v.get("off", []))
    lines.append(f"statistics used on {used} of {len(v['decisions'])} (grid, NFE) cases, where they lowered the error")
    if v.get("off"):
        lines.append("not used (DPM-Solver++) at " + ", ".join(f"{g} NFE {n}" for g, n in v["off"]))
    return "\n".join(lines)
