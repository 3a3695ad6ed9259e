"""DPM-Solver-v3 with per-grid validated statistics on held-out mixtures and on the demo models (issue 18).

1. ``mixtures``: the 64-D (linear betas) and 48-D (scaled-linear betas) Gaussian mixtures of seeds 10, 11 (never
   used while designing the fix); statistics as a user gets them (512 samples x 121 lambda points), then
   :func:`fastsample.ems.validate_ems` (its defaults: 1024 starts, NFE 5-10, the named grids and the scheduler's
   own, its rule :func:`fastsample.ems.validation.choose_start`); the rules of :data:`RULES` compared on the same
   validation runs. Never worse: per named grid and NFE 5-10, the preset's options, RMS error against
   the exact ODE solution, mean over held-out noise seeds 1-3 (64 samples each), with the validated statistics,
   with all statistics (shrunk and bounded, no validation) and without; "worse" when the mean with exceeds the
   mean without by more than the seed-to-seed spread (std over the seeds, without). Best grid (NFE 5-10): each
   family's grid and options chosen on noise seed 0, its error on seeds 1-3 (the candidate lists of
   ``bench_dpmsolver_v3.ours`` / ``baselines``: Diffusers' roster in every variant on every grid).
2. ``demo``: the demo DDPM and flow model with their shipped statistics: RMS error against a 500-step reference
   (statistics-free order-3 DPM-Solver-v3 on a quadratic-t grid from the same first to the same last time; its
   distance to 250 steps is reported); never worse on every validated grid (the named ones and the grids the
   scheduler runs from the model's config: its preset and Diffusers' spacings); each family's configuration
   chosen on noise seed 0 and reported on seeds 1-2 (64 samples each).

Run: ``PYTHONPATH=. python benchmarks/bench_dpmsolver_v3_heldout.py [--only mixtures demo] [--setups 64-D 48-D]``;
several processes may run different parts at once: each updates benchmarks/results/dpmsolver_v3_heldout.{json,md}
under a lock. CPU (one thread): about 10 minutes per mixture, 6 per demo model.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import protocol as P
import torch
from bench_dpmsolver_v3 import (
    EMS_KW,
    HELDOUT_SEEDS,
    SETUPS,
    V3_BEST,
    V3_NOEMS,
    V3_OPTIONS,
    V3_PRESET,
    _errors,
    _exact,
    baselines,
    never_worse_cells,
    ours,
    run_scheduler,
    run_unet,
    setup,
    v3_error,
)

from fastsample import DPMSolverV3Scheduler
from fastsample._io import atomic_write, file_lock
from fastsample.core import grids
from fastsample.core.schedules import schedule_for_config
from fastsample.ems import validation
from fastsample.ems.estimation import compute_ems
from fastsample.ems.models import analytic_model_fn
from fastsample.ems.validation import (
    FLOW_VALIDATION_GRIDS,
    VALIDATION_GRIDS,
    candidate_starts,
    log_ratio,
    scheduler_grids,
    validate_ems,
)
from fastsample.formats.ems_file import EMS
from fastsample.solvers.dpmsolver_v3 import DPMSolverV3, preset, validated_start
from fastsample.solvers.sampling import sample

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "dpmsolver_v3_heldout"
SELECTION_NOISE, HELDOUT_NOISE = (0,), (1, 2, 3)  # mixtures: starting-noise seeds to choose / to report
DEMO_SELECTION, DEMO_HELDOUT = (0,), (1, 2)
DIFFUSERS = ("DPM-Solver++ 2M", "DPM-Solver++ 3M", "UniPC")
BEST_NFES = tuple(range(5, 11))  # the issue's NFE 5-10


def choose(cands, err, selection, heldout) -> dict:
    """{family: {"config", "selection", "heldout": [mean, std], "count"}}: per family the candidate
    (family, label, scheduler, ...) with the lowest mean ``err(scheduler, seed)`` over ``selection``, measured
    on ``heldout``; ``count`` is the number of candidates it was chosen from."""
    counts = Counter(c[0] for c in cands)
    best = {}
    for fam, label, s, *_ in cands:
        e = float(np.mean([err(s, k) for k in selection]))
        if np.isfinite(e) and (fam not in best or e < best[fam][0]):
            best[fam] = (e, label, s)
    out = {}
    for fam, (e, label, s) in best.items():
        held = [err(s, k) for k in heldout]
        out[fam] = {
            "config": label,
            "selection": e,
            "heldout": [float(np.mean(held)), float(np.std(held, ddof=1))],
            "count": counts[fam],
        }
    return out


def mixture(label: str, seed: int, best_grid: bool = True, starts: int = 1024) -> dict:
    """Both targets on one held-out mixture (module docstring, part 1); the best-grid one only if ``best_grid``."""
    mix, cfg, schedule = setup(label, seed)
    model = analytic_model_fn(mix, cfg)
    t0 = time.time()
    ems = compute_ems(model, cfg, torch.from_numpy(mix.sample(2048, seed=100 + seed)), seed=seed, **EMS_KW)
    ems_seconds = time.time() - t0
    full = EMS(ems.lambdas, ems.l, ems.s, ems.b, dict(ems.metadata), errors=_errors(ems))
    t0 = time.time()
    seen, choose_start = [], validation.choose_start
    validation.choose_start = lambda runs, without: seen.append((runs, without)) or choose_start(runs, without)
    try:  # the per-start errors of every decision, for the rule comparison
        v = validate_ems(ems, model, cfg, num_samples=starts, dtype=torch.float64)
    finally:
        validation.choose_start = choose_start
    validation_seconds = time.time() - t0
    never = never_worse_cells(mix, schedule, ems, full, HELDOUT_NOISE)
    rules = compare_rules(mix, schedule, ems, full, v, seen, never)
    f = mix.model_fn(schedule)

    def err(s, k):
        x = torch.from_numpy(mix.prior_sample(64, schedule, 1.0, seed=k))
        out = run_scheduler(copy.deepcopy(s[0]), f, schedule, x, s[1])  # a fresh copy: schedulers keep run state
        return float(np.sqrt(np.mean((out.to(torch.float64).numpy() - _exact(mix, schedule, k)) ** 2)))

    best = {}
    for n in BEST_NFES if best_grid else ():
        cands = [(c[0], c[1], (c[2], c[3])) for c in ours(cfg, schedule, n, ems) + baselines(cfg, schedule, n)]
        best[n] = choose(cands, err, SELECTION_NOISE, HELDOUT_NOISE)
        print("mixture", label, seed, n, {k: round(r["heldout"][0], 4) for k, r in best[n].items()}, flush=True)
    return {
        "validation": {k: v[k] for k in ("decisions", "off", "hurt", "rows", "rule", "num_samples", "reference")},
        "lambda_range": [float(ems.lambdas[0]), float(ems.lambdas[-1])],
        "ems_seconds": ems_seconds,
        "validation_seconds": validation_seconds,
        "never_worse": never,
        "rules": rules,
        "best_grid": best,
    }


def _split(rule):
    """A rule that selects on the even-numbered starts and keeps its choice only if r + 2 se <= 0 on the odd ones."""

    def split(runs, without):
        j = rule([e[0::2] for e in runs], without[0::2])
        if j is None:
            return None
        r, se = log_ratio(runs[j][1::2], without[1::2])
        return j if r + 2 * se <= 0 else None

    return split


def _lowest(z, key):
    """The rule "among the starts with r + z se <= 0, the one with the lowest key(r, se)"."""

    def rule(runs, without):
        tests = [log_ratio(e, without) for e in runs]
        ok = [j for j, (r, se) in enumerate(tests) if r + z * se <= 0]
        return min(ok, key=lambda j: key(*tests[j])) if ok else None

    return rule


def _bootstrap(runs, without, reps=2000):
    """Lowest r among the starts whose bootstrap 97.7% upper bound of r (paired resampling of the starts) is <= 0."""
    idx = np.random.default_rng(0).integers(0, len(without), size=(reps, len(without)))
    c = without[idx].mean(1)
    tests = [(log_ratio(e, without)[0], np.quantile(0.5 * np.log(e[idx].mean(1) / c), 0.977)) for e in runs]
    ok = [j for j, (_, up) in enumerate(tests) if up <= 0]
    return min(ok, key=lambda j: tests[j][0]) if ok else None


def _nested(runs, without):
    """Among the starts with r + 2 se <= 0, from the earliest move to a later one only where it beats the current
    choice with r + 2 se <= 0 (paired against it): the library's selection step, here on all starts, unconfirmed."""
    ok = [j for j, (r, se) in enumerate(log_ratio(e, without) for e in runs) if r + 2 * se <= 0]
    j = ok[0] if ok else None
    for k in ok[1:]:
        r, se = log_ratio(runs[k], runs[j])
        j = k if r + 2 * se <= 0 else j
    return j


BONFERRONI_Z = 2.53  # one-sided 2-se level (2.3%) over 4 candidate starts: 0.57% -> z = 2.53
RULES = {
    "2 se, lowest r (session 3)": _lowest(2.0, lambda r, se: r),
    "(a) 2 se, lowest r + 2 se": _lowest(2.0, lambda r, se: r + 2 * se),
    "(b) Bonferroni 2.53 se, lowest r": _lowest(BONFERRONI_Z, lambda r, se: r),
    "(a+b) 2.53 se, lowest r + 2.53 se": _lowest(BONFERRONI_Z, lambda r, se: r + BONFERRONI_Z * se),
    "(c) split: lowest r on even starts, 2 se on odd": _split(_lowest(2.0, lambda r, se: r)),
    "(c+a) split: lowest r + 2 se on even, 2 se on odd": _split(_lowest(2.0, lambda r, se: r + 2 * se)),
    "(d) bootstrap 97.7% bound, lowest r": _bootstrap,
    "(e) earliest start unless a later one beats it (all starts, no split)": _nested,
}


def compare_rules(mix, schedule, ems, full, v, seen, never) -> dict:
    """Per rule of :data:`RULES` and the library's (``validation.choose_start``): its decisions from the per-start
    errors ``seen`` of the validation ``v`` (one (runs, without) per decision), applied by the solver's own
    ``validated_start`` to the held-out cells of ``never``: kept cells, worse cells (as in ``never_worse``), max and
    geometric-mean ratio with / without. Held-out errors per candidate start: mean over the held-out noise seeds."""
    starts, off = candidate_starts(ems.lambdas)
    cells = {}
    for cell in never:
        g, n = cell.rsplit(" ", 1)
        grid = grids.make_grid(g, schedule, int(n), t_start=1.0, t_end=schedule.t_min)
        with np.errstate(divide="ignore"):
            cells[cell] = np.asarray(schedule.lambda_(grid), dtype=np.float64)
    held = {}
    for a in starts:
        st = EMS(
            ems.lambdas, ems.l, ems.s, ems.b, dict(ems.metadata, validation={"use_from_lambda": a}), errors=_errors(ems)
        )
        held[a] = {}
        for c in cells:
            g, n = c.rsplit(" ", 1)
            held[a][c] = float(np.mean([v3_error(mix, schedule, st, g, int(n), k) for k in HELDOUT_NOISE]))
    out = {}
    library = ("library (validate_ems)", lambda runs, without: validation.choose_start(runs, without)[0])
    for name, rule in [library, *RULES.items()]:
        dec = [
            dict(d, use_from_lambda=off if (j := rule(*w)) is None else starts[j]) for d, w in zip(v["decisions"], seen)
        ]
        stats = SimpleNamespace(metadata={"validation": {"decisions": dec}})
        ratio, worse, kept = {}, [], 0
        for c, lam in cells.items():
            a = validated_start(stats, lam)
            none = never[c]["none"]
            e = held[a][c] if a in held else none[0]
            kept += a in held
            ratio[c] = e / none[0]
            if e > none[0] + none[1]:
                worse.append(c)
        r = np.array(list(ratio.values()))
        out[name] = {
            "kept": kept,
            "cells": len(cells),
            "worse": worse,
            "max": float(r.max()),
            "geo": float(np.exp(np.mean(np.log(r)))),
        }
    return out


def _demo_candidates(kind, cfg, schedule, n, ems):
    """(family, label, (scheduler, timesteps or None)) for demo model ``kind`` at ``n`` steps."""
    if kind == "ddpm":
        return [(c[0], c[1], (c[2], c[3])) for c in ours(cfg, schedule, n, ems) + baselines(cfg, schedule, n)]
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)

    def takes_sigmas():  # (family, label prefix, scheduler): the Diffusers flow classes that take sigmas=
        yield "FlowMatchEuler", "", FlowMatchEulerDiscreteScheduler.from_config(cfg)
        for order, st in itertools.product((2, 3), ("bh1", "bh2")):
            s = UniPCMultistepScheduler.from_config(cfg, solver_order=order, solver_type=st, **flow)
            yield "UniPC (flow)", f"order {order}, {st}, ", s

    dpm = {order: DPMSolverMultistepScheduler.from_config(cfg, solver_order=order, **flow) for order in (2, 3)}
    out = [("DPM-Solver++ (flow)", f"{order}M, default grid", (s, None)) for order, s in dpm.items()]
    out += [(fam, f"{label}default grid", (s, None)) for fam, label, s in takes_sigmas()]
    for name in FLOW_VALIDATION_GRIDS:  # v3's grids for the classes that take them (the protocol's (a))
        grid = grids.make_grid(name, schedule, n, t_start=1.0, t_end=0.0)[:-1]
        for fam, label, s in takes_sigmas():
            P.set_grid(s, grid, is_flow=True)
            out.append((fam, f"{label}{name}", (s, s.timesteps)))
    for name in FLOW_VALIDATION_GRIDS:  # the named grids with a start at t = 1 (no log-SNR or Karras on a flow)
        for fam, stats in ((V3_BEST, ems), (V3_NOEMS, None)):
            for order in (2, 3):
                for pp, corr, cp in V3_OPTIONS:
                    kw = dict(solver_order=order, predictor_pseudo=pp, use_corrector=corr, corrector_pseudo=cp)
                    s = DPMSolverV3Scheduler.from_config(cfg, time_grid=name, **kw).use_ems(stats)
                    opts = "".join(k for k, on in (("p", pp), ("c", corr), ("C", cp)) if on) or "-"
                    out.append((fam, f"order {order}, {opts}, {name}", (s, None)))
    return out


def demo_model(kind: str, best_grid: bool = True) -> dict:
    """Part 2 for demo model ``kind`` ("ddpm" or "flow"): never worse (per validated grid and NFE 5-10, the
    preset's options, with / without the statistics, held-out seeds) and, if ``best_grid``, the best-grid table."""
    from fastsample.demo import WEIGHTS_DIR, load_ddpm_pipeline, load_flow_pipeline

    pipe = (load_ddpm_pipeline if kind == "ddpm" else load_flow_pipeline)()
    ems = EMS.load(WEIGHTS_DIR / kind / "ems.safetensors")
    unet, cfg = pipe.unet.eval(), pipe.scheduler.config
    schedule, ptype = schedule_for_config(cfg)
    t_end = 0.0 if schedule.is_flow else schedule.t_min
    names = FLOW_VALIDATION_GRIDS if schedule.is_flow else VALIDATION_GRIDS

    def fn(x, t):
        with torch.no_grad():
            return unet(x.float(), float(schedule.timestep(t))).sample.double()

    def noise(k):
        return torch.randn((64, 1, 16, 16), generator=torch.Generator().manual_seed(k), dtype=torch.float64)

    refs, ref_error = {}, {}
    for k in (DEMO_SELECTION if best_grid else ()) + DEMO_HELDOUT:
        solve = [
            sample(fn, noise(k), schedule, DPMSolverV3(order=3), grids.quadratic_t(schedule, m, t_end=t_end), ptype)
            for m in (250, 500)
        ]
        refs[k], ref_error[k] = solve[1], float((solve[0] - solve[1]).pow(2).mean().sqrt())

    def err(s, k):  # a fresh copy of the candidate; one built on a fixed grid keeps the timesteps it was given
        sched = copy.deepcopy(s[0])
        if s[1] is None:
            sched.set_timesteps(n)
        try:
            out = run_unet(unet, sched, noise(k))
        except ValueError:  # a step finer than the statistics' grid
            return float("inf")
        return float((out - refs[k]).pow(2).mean().sqrt())

    def grid_ref(k, grid):  # the 500-step reference from the grid's first time to its last (leading: t < 1)
        key = (k, float(grid[0]), float(grid[-1]))
        if key not in refs:
            ends = dict(t_start=key[1], t_end=key[2])
            if key[2] == 0.0 and not schedule.is_flow:  # a VP grid's final step to t = 0
                ends = dict(t_start=key[1], t_end=schedule.t_min, final_zero=True)
            with torch.no_grad():
                refs[key] = sample(
                    fn, noise(k), schedule, DPMSolverV3(order=3), grids.quadratic_t(schedule, 500, **ends), ptype
                )
        return refs[key]

    def v3(grid, opts, stats, k):
        with torch.no_grad():
            out = sample(fn, noise(k), schedule, DPMSolverV3(stats=stats, **opts), grid, ptype)
        return float((out - grid_ref(k, grid)).pow(2).mean().sqrt())

    never = {}
    lo = (1.0, 0.0) if schedule.is_flow else (float(ems.metadata["t_start"]), float(ems.metadata["t_end"]))
    for n in range(5, 11):
        opts = preset(n)
        opts.pop("time_grid")
        named = {name: (grids.make_grid(name, schedule, n, t_start=lo[0], t_end=lo[1]), opts) for name in names}
        for name, (g, o) in {**named, **scheduler_grids(ems, cfg, n)}.items():
            e = {lab: [v3(g, o, st, k) for k in DEMO_HELDOUT] for lab, st in (("validated", ems), ("none", None))}
            never[f"{name} {n}"] = {lab: [float(np.mean(v)), float(np.std(v, ddof=1))] for lab, v in e.items()}
    rows = {}
    for n in BEST_NFES if best_grid else ():
        cands = _demo_candidates(kind, cfg, schedule, n, ems)
        rows[n] = choose(cands, err, DEMO_SELECTION, DEMO_HELDOUT)
        print("demo", kind, n, {k: round(r["heldout"][0], 4) for k, r in rows[n].items()}, flush=True)
    m = ems.metadata
    v = m.get("validation") or {}
    return {
        "ems": {k: m.get(k) for k in ("format_version", "grid_size", "num_samples", "seed", "t_start", "t_end")},
        "validation": {k: v.get(k) for k in ("off", "hurt", "rows", "num_samples")},
        "reference_error": ref_error,
        "never_worse": never,
        "rows": rows,
    }


# --- the results file ---------------------------------------------------------------------------------------


def _f(x: float) -> str:
    return f"{x:.4f}" if x < 10 else f"{x:.3g}"


def _never_row(label: str, r: dict) -> str:
    cells = r["never_worse"].values()
    v = r["validation"]
    out = [label, f"{len(v['decisions']) - len(v['off'])}/{len(v['decisions'])}"]
    for name in ("validated", "all statistics"):
        ratios = np.array([c[name][0] / c["none"][0] for c in cells])
        worse = sum(c[name][0] > c["none"][0] + c["none"][1] for c in cells)
        out.append(f"{worse}/{len(ratios)}, {ratios.max():.2f}, {np.exp(np.mean(np.log(ratios))):.2f}")
    both = sum(c["validated"][0] - c["none"][0] > np.hypot(c["validated"][1], c["none"][1]) for c in cells)
    out.append(f"{both}/{len(cells)}")
    se = [(d["upper"] - d["log_ratio"]) / 2 for d in r["validation"]["decisions"] if d["upper"] != 0.0]
    spread = [c["none"][1] / c["none"][0] for c in cells]
    out.append(f"{np.median(se) if se else float('nan'):.3f} / {np.median(spread):.3f}")
    out.append(f"{r['ems_seconds']:.0f} + {r['validation_seconds']:.0f}")
    worse = [k for k, c in r["never_worse"].items() if c["validated"][0] > c["none"][0] + c["none"][1]]
    nw = r["never_worse"]
    out.append(", ".join(f"{k} ({nw[k]['validated'][0] / nw[k]['none'][0]:.2f}x)" for k in worse) or "-")
    return "| " + " | ".join(out) + " |"


def _demo_never(cells: dict) -> str:
    """One line: per validated grid and NFE, v3 with the shipped statistics vs without (preset options)."""
    ratios = {c: v["validated"][0] / v["none"][0] for c, v in cells.items()}
    worse = [c for c, v in cells.items() if v["validated"][0] > v["none"][0] + v["none"][1]]
    lo, hi = min(ratios.values()), max(ratios.values())
    geo = float(np.exp(np.mean(np.log(list(ratios.values())))))
    return (
        f"Never worse (preset options, every validated grid x NFE 5-10, with / without statistics): {len(worse)}/"
        f"{len(cells)} cells worse beyond the seed spread{' (' + ', '.join(worse) + ')' if worse else ''}; ratio "
        f"{lo:.2f}-{hi:.2f}, geometric mean {geo:.2f}."
    )


def _best_rows(label: str, best: dict, ours_fam: str) -> list[str]:
    rows = []
    for n, fams in best.items():
        o, base = fams[ours_fam], fams.get(V3_NOEMS)
        diff = {k: v for k, v in fams.items() if k not in (ours_fam, V3_NOEMS, V3_PRESET, "DEIS (ours)")}
        if not diff:
            continue
        k = min(diff, key=lambda f: diff[f]["heldout"][0])
        d = diff[k]
        rows.append(
            f"| {label} | {n} | {_f(o['heldout'][0])} ± {_f(o['heldout'][1])} | {o['config']} | {o['count']} | "
            + (f"{_f(base['heldout'][0])} ({base['count']}) | " if base else "- | ")
            + f"{_f(d['heldout'][0])} ± {_f(d['heldout'][1])} | {k}: {d['config']} | "
            + f"{sum(diff[f]['count'] for f in diff)} | {o['heldout'][0] / d['heldout'][0]:.2f} |"
        )
    return rows


BEST_HEAD = [
    "| model | NFE | v3 with statistics (validated) | its config | chosen from | v3 without statistics "
    "(chosen from) | best Diffusers | its config | Diffusers chose from | ratio |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def markdown(res: dict) -> str:
    md = [
        "# DPM-Solver-v3 with per-grid validated statistics: held-out mixtures and demo models",
        "",
        "Produced by `benchmarks/bench_dpmsolver_v3_heldout.py` (CPU, float64 solver state).",
        "",
    ]
    mix = res.get("mixtures") or {}
    if mix:
        md += [
            "## Held-out mixtures (seeds 10, 11): never worse than without statistics?",
            "",
            "Per (grid, NFE 5-10) cell, the preset's options, mean RMS error over held-out noise seeds 1-3 (64 "
            "samples each) against the exact ODE solution. worse = mean with > mean without + std over the seeds "
            "(without). Columns: cells where the validation kept the statistics; worse cells, max ratio, "
            "geometric mean ratio (with / without); cells where the mean with exceeds the mean without by more "
            "than the combined spread (both stds in quadrature); median standard error of the validation's log "
            "RMS ratio (paired over its confirming starts, where it kept the statistics) / median relative "
            "seed-to-seed spread; wall seconds for the statistics + the validation (2 shared CPU cores, other jobs "
            "running); the worse cells (validated / without).",
            "",
            "| mixture | statistics used in | validated: worse, max, geo. mean | all statistics: worse, max, geo. mean "
            "| validated: worse beyond both spreads | validation se / seed spread | wall seconds | worse cells |",
            "|---|---|---|---|---|---|---|---|",
        ]
        md += [_never_row(k, r) for k, r in mix.items()]
        ruled = {k: r["rules"] for k, r in mix.items() if "rules" in r}
        if ruled:
            md += [
                "",
                "## Held-out mixtures: validation rules compared on the same validation runs",
                "",
                "Each rule decides from the same per-start errors of the validation (its starts as in the row's "
                "label; the 4 candidate starts and without), the solver's own grid matching applies its decisions "
                "to the held-out cells above (noise seeds 1-3, never seen by the validation). kept = cells using "
                "statistics; worse = as above; max / geo. = max and geometric-mean ratio with / without over the "
                "cells (what is kept). "
                "The first row is the rule this run's library used (its cells equal the table above).",
                "",
                "| mixture | rule | kept | worse | max | geo. mean | worse cells |",
                "|---|---|---|---|---|---|---|",
            ]
            for k, rules in ruled.items():
                for name, q in rules.items():
                    md.append(
                        f"| {k} | {name} | {q['kept']}/{q['cells']} | {len(q['worse'])} | {q['max']:.2f} | "
                        f"{q['geo']:.2f} | {', '.join(q['worse']) or '-'} |"
                    )
        md += [
            "",
            "## Held-out mixtures: best grid and options vs the best Diffusers solver",
            "",
            "Each family's grid and options chosen on noise seed 0 among the number of configurations given; mean ± "
            "std of the RMS error on seeds 1-3. Diffusers = DPM-Solver++ 2M / 3M (midpoint, heun) and UniPC (bh1, "
            "bh2), orders 2-3, on {uniform lambda, uniform t, Karras, quadratic t}; v3 = orders 2-3 x 6 option sets "
            "on the same grids, plus the preset. ratio = v3 with statistics / best Diffusers (< 1: v3 better).",
            "",
            *BEST_HEAD,
        ]
        for k, r in mix.items():
            md += _best_rows(k, {int(n): v for n, v in r["best_grid"].items()}, V3_BEST)
        missing = [k for k, r in mix.items() if not r["best_grid"]]
        if missing:
            md += ["", "Not measured (these runs used --no-best-grid): " + "; ".join(missing) + "."]
        md.append("")
    for kind, r in (res.get("demo") or {}).items():
        e = r["ems"]
        md += [
            f"## Demo {kind}: shipped statistics (format {e['format_version']}, {e['grid_size']} points x "
            f"{e['num_samples']} samples, validated), held-out noise seeds",
            "",
            "RMS error against a 500-step reference (statistics-free order-3 DPM-Solver-v3, quadratic t; 250 vs "
            f"500 steps: {max(r['reference_error'].values()):.1e}); configurations chosen on seed 0, mean ± std "
            "over seeds 1-2 (64 samples each). Validation switched the statistics off at: "
            + (", ".join(f"{g} NFE {n}" for g, n in r["validation"]["off"]) or "nowhere")
            + ".",
            "",
            *BEST_HEAD,
        ]
        cells = r["never_worse"]
        md.insert(len(md) - len(BEST_HEAD), _demo_never(cells))
        md.insert(len(md) - len(BEST_HEAD), "")
        md += _best_rows(kind, {int(n): v for n, v in r["rows"].items()}, V3_BEST)
        if not r["rows"]:
            md += ["", "Best-grid comparison not measured (this run used --no-best-grid)."]
        md.append("")
    return "\n".join(md)


def update(part: str, key: str, value) -> None:
    """Store one result under the lock and rewrite the JSON and Markdown."""
    path = RESULTS / f"{NAME}.json"
    with file_lock(Path(tempfile.gettempdir()) / f"{NAME}.lock", what="benchmark writer"):
        res = json.loads(path.read_text()) if path.exists() else {}
        res.setdefault(part, {})[key] = value
        res["torch"] = torch.__version__
        atomic_write(path, json.dumps(res, indent=1) + "\n")
        atomic_write(RESULTS / f"{NAME}.md", markdown(res))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=["mixtures", "demo"], choices=["mixtures", "demo"])
    p.add_argument("--setups", nargs="*", default=list(SETUPS), help="mixture setups (prefixes: 64-D, 48-D)")
    p.add_argument("--seeds", nargs="*", type=int, default=list(HELDOUT_SEEDS), help="mixture seeds, in this order")
    p.add_argument("--validate-samples", type=int, default=1024, help="mixtures: the validation's starts")
    p.add_argument("--no-best-grid", action="store_true", help="only the never-worse checks")
    p.add_argument("--demo-models", nargs="*", default=["ddpm", "flow"], choices=["ddpm", "flow"])
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if "mixtures" in a.only:
        for label in [s for s in SETUPS if any(s.startswith(x) for x in a.setups)]:
            for seed in a.seeds:
                key = f"{label}, mixture seed {seed}, {a.validate_samples} validation starts"
                update("mixtures", key, mixture(label, seed, not a.no_best_grid, a.validate_samples))
    if "demo" in a.only:
        for kind in a.demo_models:
            update("demo", kind, demo_model(kind, not a.no_best_grid))


if __name__ == "__main__":
    main()
