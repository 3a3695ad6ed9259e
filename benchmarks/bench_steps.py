"""Optimised step schedules (fastsample.steps; GITS-style DP + refinement, arXiv 2405.11326) vs fixed grids.

For each model and solver and NFE: the optimised grid's held-out error divided by the same solver's
error on its best fixed grid (trailing / uniform, Karras, log-SNR, quadratic, AYS-style), the best
chosen on the selection seeds (its error against the teacher there) and reported on the disjoint held-out
seeds, as the comparison protocol asks (benchmarks/README.md). Errors: RMS difference of the final
samples from the exact probability-flow ODE solution (analytic Gaussian mixtures) or from the teacher
(DPM-Solver++(3M), fine grid; demo models).

Parts: ``analytic`` (VP mixture: DEIS tAB3, DPM-Solver++(2M) ours and Diffusers', UniPC-bh2; flow
mixture: our multistep2 and Euler, Diffusers' flow UniPC and FlowMatchEuler; NFE 4-10), ``ddpm`` and
``flow`` (the shipped demo models: the main solver at NFE 4-10, whose schedules are shipped under
eval/schedules/, the others at NFE 5), ``s3`` (S^3 search vs ours at NFE 5 on the analytic VP mixture
with the same number of sample evaluations), ``analysis`` (what limits the optimiser: the DP path alone, the
optimiser, the optimiser continued, random-start searches, 16 instead of 4 selection seeds), ``intervals``
(the stored demo rows' per-sample bootstrap intervals, their grids rerun on the held-out seeds without a new
search; refuses rows that no longer reproduce). Writes benchmarks/results/steps.{json,md}.

    nice -n 10 python benchmarks/bench_steps.py            # all parts
    nice -n 10 python benchmarks/bench_steps.py --parts analytic,s3
    nice -n 10 python benchmarks/bench_steps.py --parts analysis --analysis-cases demo-ddpm
    python benchmarks/bench_steps.py --parts none    # redo the choices and steps.md from steps.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from protocol import bootstrap_ci, per_sample_rmse

from fastsample import DEISScheduler, RectifiedFlowScheduler, S3Scheduler
from fastsample._io import atomic_write
from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import DiscreteVP, RectifiedFlow, betas_for_schedule
from fastsample.steps import Condition, SchedulerRunner, StepProblem, compute_teachers, fixed_grids, optimize
from fastsample.steps.models import demo
from fastsample.steps.optimize import combine, refine, teacher_model_calls, to_schedule, unit_errors

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCHEDULES = ROOT / "eval" / "schedules"
NFES = (4, 5, 6, 7, 8, 9, 10)
MAIN = {"ddpm": "UniPC-bh2 (ours, S3Scheduler)", "flow": "multistep2 (ours)"}  # shipped schedules
DEMO = dict(seeds=range(4), heldout_seeds=range(100, 108), batch_size=64, fine_steps=40, teacher_substeps=2)
VP_CFG = {"beta_schedule": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon"}


def vp_solvers(cfg):
    return {
        "DEIS tAB3 (ours)": lambda: DEISScheduler.from_config(cfg),
        "DPM-Solver++2M (ours, S3Scheduler)": lambda: S3Scheduler.from_config(cfg, builtin_schedule="dpmsolver++2m"),
        "DPM-Solver++2M (diffusers)": lambda: DPMSolverMultistepScheduler.from_config(cfg),
        "UniPC-bh2 (ours, S3Scheduler)": lambda: S3Scheduler.from_config(cfg, builtin_schedule="unipc-bh2"),
    }


def flow_solvers(cfg):
    return {
        "multistep2 (ours)": lambda: RectifiedFlowScheduler.from_config(cfg, solver="multistep2"),
        "Euler (ours)": lambda: RectifiedFlowScheduler.from_config(cfg, solver="euler"),
        "UniPC-bh2 flow (diffusers)": lambda: UniPCMultistepScheduler.from_config(
            cfg, use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=cfg.get("shift", 1.0)
        ),
        "FlowMatchEuler (diffusers)": lambda: FlowMatchEulerDiscreteScheduler.from_config(cfg),
    }


def heldout_units(problem, runner, grids_by_name, teachers, mixture=None) -> dict:
    """{name: {(c, seed): per-sample held-out errors}} for each named grid: against the exact ODE solution
    (``mixture``, exact ends computed once per problem) or against the held-out teacher."""
    if mixture is None:
        return {
            name: unit_errors(problem, lambda x, cond, g=g: runner.run(g, x, cond), teachers, "heldout")
            for name, g in grids_by_name.items()
        }
    cond = problem.heldout_conditions[0]
    xs = [problem.noise(cond, s) for s in problem.heldout_seeds]
    key = id(problem)
    if key not in _EXACT:
        _EXACT[key] = [mixture.ode_solve(x.double().numpy(), problem.noise_schedule, 1.0, 0.0) for x in xs]
    return {
        name: {
            (0, s): per_sample_rmse(runner.run(g, x, cond), e)
            for s, x, e in zip(problem.heldout_seeds, xs, _EXACT[key])
        }
        for name, g in grids_by_name.items()
    }


_EXACT = {}


def intervals(ours: dict, fixed: dict) -> dict:
    """95% bootstrap intervals over the held-out samples (protocol.bootstrap_ci, paired resampling) of our
    per-sample RMSE and of its ratio to the fixed grid's; units as from :func:`heldout_units`."""
    if len({c for c, _ in ours}) != 1:
        raise ValueError("intervals pool the samples of one condition; this problem has several")
    a = np.concatenate([ours[k] for k in sorted(ours)])
    b = np.concatenate([fixed[k] for k in sorted(ours)])
    idx = np.arange(len(a))  # bootstrap_ci resamples float64 values: the indices come back as floats
    return {
        "ratio": float(a.mean() / b.mean()),
        "optimised_ci": list(bootstrap_ci(a)),
        "ratio_ci": list(bootstrap_ci(idx, lambda i: a[i.astype(np.int64)].mean() / b[i.astype(np.int64)].mean())),
        "heldout_samples": len(a),
    }


def choose_fixed(row: dict) -> dict:
    """The best fixed grid chosen on the selection seeds (``selection_starts``: each start grid's error against
    the teacher there), reported on the held-out seeds; adds best_fixed, best_fixed_heldout, ratio, fixed_count."""
    sel = {k: v for k, v in row["selection_starts"].items() if k in row["fixed_heldout"]}
    best = min(sel, key=sel.get)
    row.update(
        best_fixed=best,
        best_fixed_heldout=row["fixed_heldout"][best],
        ratio=row["optimised_heldout"] / row["fixed_heldout"][best],
        fixed_count=len(sel),
        best_fixed_chosen_on="selection seeds",
    )
    return row


def run_model(tag, problem, solvers, nfes_for, max_evals, mixture=None, ship=None):
    """Optimise every solver at its NFEs on one problem; rows with held-out ratios (and shipped files)."""
    rows = []
    with tempfile.TemporaryDirectory() as ckpt:
        t0, c0 = time.perf_counter(), time.process_time()
        teachers = compute_teachers(problem, ckpt)
        teacher_s, teacher_cpu = time.perf_counter() - t0, time.process_time() - c0
        for name, make in solvers.items():
            for nfe in nfes_for(name):
                runner = SchedulerRunner(make(), problem)
                c1 = time.process_time()
                res = optimize(problem, runner, nfe, teachers, ckpt, max_evals)
                search_cpu = time.process_time() - c1
                n = runner.steps_for(nfe)
                units = heldout_units(
                    problem, runner, {"optimised": res.grid, **fixed_grids(problem, n)}, teachers, mixture
                )
                errs = {k: combine(u) for k, u in units.items()}
                ours = errs.pop("optimised")
                fixed = {k: e["mean"] for k, e in errs.items()}
                rms = {"optimised": ours["rms"], "fixed": {k: e["rms"] for k, e in errs.items()}}
                ours = ours["mean"]
                best_rms = min(rms["fixed"], key=rms["fixed"].get)
                row = {
                    "model": tag,
                    "solver": name,
                    "nfe": nfe,
                    "optimised_heldout": ours,
                    "fixed_heldout": fixed,
                    "rms_heldout": rms,
                    "rms_ratio": rms["optimised"] / rms["fixed"][best_rms],
                    "rms_best_fixed": best_rms,
                    "selection_optimised": res.selection_error,
                    "selection_starts": res.start_errors,
                    "start": res.start,
                    "grid": res.grid.tolist(),
                    "search_evaluations": res.evaluations,
                    "search_model_calls": res.model_calls,
                    "search_sample_evaluations": res.model_samples,
                    "search_seconds": res.seconds,
                    "search_cpu_seconds": search_cpu,
                    "teacher_model_calls": teacher_model_calls(problem),
                    "teacher_seconds_all_units": teacher_s,
                    "teacher_cpu_seconds_all_units": teacher_cpu,
                    "teacher_selection_share": len(problem.units("selection"))
                    / (len(problem.units("selection")) + len(problem.units("heldout"))),
                }
                rows.append(choose_fixed(row))
                row.update(intervals(units["optimised"], units[row["best_fixed"]]))
                print(f"{tag:10s} {name:36s} NFE {nfe:2d}: ratio {row['ratio']:.3f} ({row['best_fixed']})", flush=True)
                if ship is not None and name == ship[0]:
                    sched = to_schedule(problem, runner, res, teachers)
                    sched.save(SCHEDULES / f"steps_{ship[1]}_nfe{nfe}.json")
    return rows


MIXTURE = dict(seeds=range(4), heldout_seeds=range(100, 132), batch_size=128, dtype=torch.float64, fine_steps=64)


def flow_mixture_problem(**kw):
    rf = RectifiedFlow()
    fmix = GaussianMixture.random(dim=8, components=8, seed=1, width=(0.01, 0.1))
    args = {**MIXTURE, **kw}
    q = StepProblem(fmix.model_fn(rf, "flow_prediction"), rf, "flow_prediction", [Condition((8,))], **args)
    return q, fmix, flow_solvers(dict(FlowMatchEulerDiscreteScheduler().config))


def analytic(max_evals):
    vp = DiscreteVP.from_betas(betas_for_schedule("linear"))
    mix = GaussianMixture.random(dim=8, components=8, seed=0, width=(0.01, 0.1))
    p = StepProblem(mix.model_fn(vp), vp, "epsilon", [Condition((8,))], **MIXTURE)
    rows = run_model("mixture-vp", p, vp_solvers(VP_CFG), lambda name: NFES, max_evals, mixture=mix)
    q, fmix, solvers = flow_mixture_problem()
    rows += run_model("mixture-flow", q, solvers, lambda name: NFES, max_evals, mixture=fmix)
    return rows


def _random_grid(problem, n, rng):
    """An n-step grid with interior points at random (Dirichlet(3) step lengths on the fine grid's span)."""
    fine = problem.fine_grid()
    q = np.concatenate([[0.0], np.cumsum(rng.dirichlet(3 * np.ones(n)))]) * (len(fine) - 1)
    g = np.interp(q, np.arange(len(fine)), fine)
    return problem.snap(g)


def what_limits(problem, runner, nfe, teachers, max_evals, restarts, seed=0) -> dict:
    """Selection errors / the best fixed grid's: the DP path alone, the optimiser (DP or fixed start + Nelder-Mead
    with ``max_evals`` runs), the optimiser continued for 3 ``max_evals`` more, and the best of ``restarts``
    Nelder-Mead searches (``max_evals`` each) from random grids; the grids of the optimiser and the best search."""
    res = optimize(problem, runner, nfe, teachers, None, max_evals)
    fixed = {k: v for k, v in res.start_errors.items() if k != "dp"}
    best = min(fixed, key=fixed.get)

    def err(g):
        return combine(unit_errors(problem, lambda x, c: runner.run(g, x, c), teachers, "selection"))["mean"]

    longer, long_err, _ = refine(problem, err, res.grid, 3 * max_evals)
    rng = np.random.default_rng(seed)
    n = runner.steps_for(nfe)
    found = [refine(problem, err, _random_grid(problem, n, rng), max_evals) for _ in range(restarts)]
    multi, multi_err, _ = min([(longer, long_err, 0)] + found, key=lambda f: f[1])
    return {
        "nfe": nfe,
        "best_fixed": best,
        "selection_over_best_fixed": {
            "dp_only": res.start_errors["dp"] / fixed[best],
            "optimiser": res.selection_error / fixed[best],
            "optimiser_continued": long_err / fixed[best],
            "best_of_random_restarts": multi_err / fixed[best],
            "random_restarts_each": [f[1] / fixed[best] for f in found],
        },
        "evaluations": {"optimiser": res.evaluations, "continued": 3 * max_evals, "restarts": [restarts, max_evals]},
        "grids": {"optimiser": res.grid, "best_search": multi, "fixed": fixed_grids(problem, n)[best]},
    }


ANALYSIS_DEMO = {"demo-flow": ("flow", 4), "demo-ddpm": ("ddpm", 5)}  # the worst NFE 4-6 rows of the main solvers


def analysis(cases, max_evals, demo_evals, restarts):
    """What limits the optimiser (issue 15): search (restarts, longer runs), selection-set size, held-out noise.
    ``cases``: of ``mixture-flow`` (Euler and multistep2 at NFE 4-6) and :data:`ANALYSIS_DEMO`'s keys."""
    out = []
    if "mixture-flow" in cases:
        q, fmix, solvers = flow_mixture_problem()
        q16, _, _ = flow_mixture_problem(seeds=range(16))
        teachers, teachers16 = compute_teachers(q), compute_teachers(q16)
        for name in ("Euler (ours)", "multistep2 (ours)"):
            for nfe in (4, 5, 6):
                runner = SchedulerRunner(solvers[name](), q)
                a = what_limits(q, runner, nfe, teachers, max_evals, restarts)
                big = optimize(q16, SchedulerRunner(solvers[name](), q16), nfe, teachers16, None, max_evals)
                grids = {**a.pop("grids"), "selection_16_seeds": big.grid}
                units = heldout_units(q, runner, grids, None, fmix)
                a["heldout_over_best_fixed"] = {
                    k: intervals(units[k], units["fixed"]) for k in ("optimiser", "best_search", "selection_16_seeds")
                }
                out.append({"model": "mixture-flow", "solver": name, **a})
                print(json.dumps(out[-1]["selection_over_best_fixed"]), flush=True)
    for case in [c for c in ANALYSIS_DEMO if c in cases]:
        which, nfe = ANALYSIS_DEMO[case]
        p, solvers = demo_problem(which)
        teachers = compute_teachers(p)
        runner = SchedulerRunner(solvers[MAIN[which]](), p)
        a = what_limits(p, runner, nfe, teachers, demo_evals, 2)
        units = heldout_units(p, runner, a.pop("grids"), teachers)
        a["heldout_over_best_fixed"] = {k: intervals(units[k], units["fixed"]) for k in ("optimiser", "best_search")}
        out.append({"model": case, "solver": MAIN[which], **a})
        print(json.dumps(out[-1]["selection_over_best_fixed"]), flush=True)
    return out


def demo_problem(which):
    """(problem, solvers) of a shipped demo model, as searched and reported."""
    spec, shape = demo(which)
    from fastsample import demo as shipped

    pipe = shipped.load_ddpm_pipeline() if which == "ddpm" else shipped.load_flow_pipeline()
    cfg = dict(pipe.scheduler.config)
    p = StepProblem(conditions=[Condition(shape)], **DEMO, **spec)
    return p, (vp_solvers(cfg) if which == "ddpm" else flow_solvers(cfg))


def demo_part(which, max_evals):
    p, solvers = demo_problem(which)
    main = MAIN[which]
    ship = (main, f"demo_{which}_{'unipc-bh2' if which == 'ddpm' else 'multistep2'}")
    return run_model(
        f"demo-{which}", p, solvers, lambda name: NFES if name == main else (4, 5, 6), max_evals, ship=ship
    )


def demo_intervals(rows):
    """Add the per-sample intervals to stored demo rows without searching again: the stored optimised grid
    and the chosen fixed grid rerun on the held-out seeds; refuses rows whose error no longer reproduces."""
    for which in ("ddpm", "flow"):
        mine = [r for r in rows if r["model"] == f"demo-{which}"]
        if not mine:
            continue
        p, solvers = demo_problem(which)
        teachers = compute_teachers(p)
        for r in mine:
            runner = SchedulerRunner(solvers[r["solver"]](), p)
            fixed = fixed_grids(p, runner.steps_for(r["nfe"]))[r["best_fixed"]]
            units = heldout_units(p, runner, {"optimised": np.asarray(r["grid"]), "fixed": fixed}, teachers)
            for name, stored in (("optimised", r["optimised_heldout"]), ("fixed", r["best_fixed_heldout"])):
                got = combine(units[name])["mean"]
                if not np.isclose(got, stored, rtol=1e-5):
                    raise RuntimeError(
                        f"{r['model']} {r['solver']} NFE {r['nfe']}: {name} held-out error {got:.6g} does not "
                        f"reproduce the stored {stored:.6g}; rerun --parts {which}"
                    )
            r.update(intervals(units["optimised"], units["fixed"]))
            print(f"{r['model']} {r['solver']} NFE {r['nfe']}: ratio CI {r['ratio_ci']}", flush=True)


def s3_part(max_evals):
    """S^3 search and ours at NFE 5 on the analytic VP mixture, with about the same sample evaluations."""
    from fastsample.search.evolution import report, search
    from fastsample.search.problem import SearchProblem

    vp = DiscreteVP.from_betas(betas_for_schedule("linear"))
    mix = GaussianMixture.random(dim=8, components=8, seed=0, width=(0.01, 0.1))
    kw = dict(seeds=[0, 1, 2, 3], heldout_seeds=[10, 11, 12, 13], batch_size=128, dtype=torch.float64, fine_steps=64)
    p = StepProblem(mix.model_fn(vp), vp, "epsilon", [Condition((8,))], **kw)
    runner = SchedulerRunner(S3Scheduler(builtin_schedule="unipc-bh2"), p)
    t0 = time.perf_counter()
    res = optimize(p, runner, 5, max_evals=max_evals)
    ours_s, ours_samples = time.perf_counter() - t0, p.model_fn.samples
    sp = SearchProblem.analytic(mix, vp)
    counter = {"samples": 0}
    inner = sp.model_fn

    def counted(x, t):
        counter["samples"] += len(x)
        return inner(x, t)

    sp.model_fn = counted
    gens, t1 = 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # one generation more at a time, resumed, until our budget
        while counter["samples"] < ours_samples and gens < 64:
            gens += 1
            found = search(sp, 5, generations=gens, checkpoint=Path(tmp) / "s3.json", progress=False)
    s3_s, s3_samples = time.perf_counter() - t1, counter["samples"]
    heldout = list(p.heldout_seeds)
    rep = report(sp, found.schedule, heldout, 128)
    sq, count = 0.0, 0
    for sd in heldout:
        x, ref = sp.batch(sd, 128)
        out = runner.run(res.grid, x, p.conditions[0])
        sq, count = sq + float(((out.double() - ref) ** 2).sum()), count + ref.numel()
    return {
        "nfe": 5,
        "ours": {"heldout_rmse": float(np.sqrt(sq / count)), "sample_evaluations": ours_samples, "seconds": ours_s},
        "s3": {
            "heldout_rmse": rep["found"],
            "sample_evaluations": s3_samples,
            "generations": gens,
            "seconds": s3_s,
            "note": "S^3's reference is the exact ODE solution (no model calls); ours counts its teacher",
        },
        "heldout_samples": "seeds 10-13 x 128 (SearchProblem.batch noise, exact reference)",
    }


def analysis_markdown(rows) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## What limits the optimiser (selection and held-out error / the best fixed grid's)",
        "",
        "Selection columns: the DP path alone; the optimiser as shipped (its refinement runs in `evals`); the",
        "optimiser continued for 3x as many runs; the best of that and of Nelder-Mead searches from random grids",
        "(`restarts` x runs each). Held-out: the optimiser's grid, the best search's grid, and the optimiser's grid",
        "when it searches 16 selection seeds instead of 4 (analytic only), with 95% bootstrap intervals.",
        "",
        "| model | solver | NFE | DP only | optimiser (evals) | continued | best of restarts (restarts x runs) |"
        " held-out: optimiser | best search | 16 selection seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in rows:
        s, h, e = a["selection_over_best_fixed"], a["heldout_over_best_fixed"], a["evaluations"]

        def cell(k, h=h):
            if k not in h:
                return "-"
            lo, hi = h[k]["ratio_ci"]
            return f"{h[k]['ratio']:.3f} [{lo:.3f}, {hi:.3f}]"

        lines.append(
            f"| {a['model']} | {a['solver']} | {a['nfe']} | {s['dp_only']:.3f} | {s['optimiser']:.3f}"
            f" ({e['optimiser']}) | {s['optimiser_continued']:.3f} | {s['best_of_random_restarts']:.3f}"
            f" ({e['restarts'][0]} x {e['restarts'][1]}) | {cell('optimiser')} | {cell('best_search')} |"
            f" {cell('selection_16_seeds')} |"
        )
    return lines


def markdown(results) -> str:
    lines = [
        "# Optimised step schedules (fastsample.steps) vs the same solver's best fixed grid",
        "",
        "Generated by `benchmarks/bench_steps.py`. Error: per-sample RMSE against the exact ODE solution",
        "(analytic mixtures) or the teacher (DPM-Solver++(3M), fine grid; demo models) of the same noise, averaged",
        "over held-out seeds never used in the search. ratio = the optimised grid's error / the solver's error on",
        "its best fixed grid (trailing or uniform, Karras, log-SNR, quadratic, AYS-style), the best chosen on the",
        "selection seeds (count: the fixed grids it chose from) and reported on the held-out seeds. rms ratio: the",
        "RMS over all held-out samples instead, the baseline's grid picked on the held-out seeds (favours it); a few",
        "samples whose trajectory changes mode dominate it (the search minimises the per-sample RMSE).",
        "Target: ratio <= 0.7 at NFE 4-6, <= 1 at NFE 8-10. [a, b]: 95% bootstrap intervals over the held-out",
        "samples (paired for the ratio; benchmarks/protocol.py). Held-out samples: 32 x 128 (analytic), 8 x 64 (demo).",
        "",
        "| model | solver | NFE | optimised [95% CI] | best fixed (grid) | count | ratio [95% CI] | target met |"
        " rms ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        target = 0.7 if r["nfe"] <= 6 else 1.0 if r["nfe"] >= 8 else None
        met = "-" if target is None else ("yes" if r["ratio"] <= target else f"**no** (+{r['ratio'] - target:.2f})")
        ci = r.get("ratio_ci"), r.get("optimised_ci")
        ratio_ci = f" [{ci[0][0]:.3f}, {ci[0][1]:.3f}]" if ci[0] else " (no interval)"
        err_ci = f" [{ci[1][0]:.4g}, {ci[1][1]:.4g}]" if ci[1] else ""
        lines.append(
            f"| {r['model']} | {r['solver']} | {r['nfe']} | {r['optimised_heldout']:.4g}{err_ci} | "
            f"{r['best_fixed_heldout']:.4g} ({r['best_fixed']}) | chose from {r['fixed_count']} | {r['ratio']:.3f}"
            f"{ratio_ci} | {met} | {r['rms_ratio']:.3f} |"
        )
    lines += ["", "## Optimisation cost per NFE (demo models, main solver)", ""]
    lines += [
        "| model | solver | NFE | teacher calls | search calls | batch | CPU s (teacher + search) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        if r["model"].startswith("demo") and r["solver"] in MAIN.values():
            teacher = r["teacher_cpu_seconds_all_units"] * r["teacher_selection_share"]
            lines.append(
                f"| {r['model']} | {r['solver']} | {r['nfe']} | {r['teacher_model_calls']} | {r['search_model_calls']} "
                f"| {results['demo_batch_size']} | {teacher + r['search_cpu_seconds']:.0f} ({teacher:.0f} + "
                f"{r['search_cpu_seconds']:.0f}) |"
            )
    lines += [
        "",
        f"One torch thread; the 2-core machine was shared (load average {results['load_average']}). CPU s counts "
        "the selection teacher only (the held-out teacher serves the report).",
    ]
    lines += analysis_markdown(results.get("analysis"))
    s3 = results.get("s3")
    if s3:
        lines += [
            "",
            "## S^3 search vs ours, analytic VP mixture, NFE 5, same sample-evaluation budget",
            "",
            f"- ours (UniPC-bh2 + optimised steps): held-out RMSE {s3['ours']['heldout_rmse']:.4g}, "
            f"{s3['ours']['sample_evaluations']} sample evaluations, {s3['ours']['seconds']:.0f} s",
            f"- S^3 ({s3['s3']['generations']} generations): held-out RMSE {s3['s3']['heldout_rmse']:.4g}, "
            f"{s3['s3']['sample_evaluations']} sample evaluations, {s3['s3']['seconds']:.0f} s ({s3['s3']['note']})",
        ]
    return "\n".join(lines) + "\n"


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="analytic,ddpm,flow,s3")
    ap.add_argument("--max-evals", type=int, default=300, help="refinement runs, analytic parts")
    ap.add_argument("--demo-max-evals", type=int, default=40, help="refinement runs, demo models")
    ap.add_argument("--restarts", type=int, default=4, help="random-start searches per case, analysis part")
    ap.add_argument("--analysis-cases", default="mixture-flow,demo-flow,demo-ddpm")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # two OpenMP threads on a shared 2-core machine run ~100x slower (spin waits)
    parts = [] if args.parts == "none" else args.parts.split(",")
    prefix = {"analytic": "mixture", "ddpm": "demo-ddpm", "flow": "demo-flow"}
    rows = []
    if "analytic" in parts:
        rows += analytic(args.max_evals)
    for which in ("ddpm", "flow"):
        if which in parts:
            rows += demo_part(which, args.demo_max_evals)
    s3 = s3_part(args.max_evals) if "s3" in parts else None
    cases = args.analysis_cases.split(",")
    limits = analysis(cases, args.max_evals, args.demo_max_evals, args.restarts) if "analysis" in parts else None
    # merge into the results file as it is now (another part may have written it meanwhile)
    out = RESULTS / "steps.json"
    results = json.loads(out.read_text()) if out.exists() else {"rows": []}
    rerun = tuple(prefix[p] for p in parts if p in prefix)
    kept = [r for r in results["rows"] if not rerun or not r["model"].startswith(rerun)]
    results["rows"] = [choose_fixed(r) for r in kept] + rows
    if "intervals" in parts:
        demo_intervals(results["rows"])
    if s3 is not None:
        results["s3"] = s3
    if limits is not None:  # merged by case: cases not rerun keep their rows
        results["analysis"] = [a for a in results.get("analysis", []) if a["model"] not in cases] + limits
    if {"ddpm", "flow"} & set(parts):  # the load the demo cost rows were measured under
        results["load_average"] = [round(v, 1) for v in os.getloadavg()]
    if rerun or s3 is not None:  # the analysis rows carry their own evaluation counts
        results["settings"] = {"max_evals": args.max_evals, "demo_max_evals": args.demo_max_evals}
        results["demo_batch_size"] = DEMO["batch_size"]
        results["environment"] = {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "machine": platform.machine(),
        }
    atomic_write(out, json.dumps(results, indent=1, default=_jsonable) + "\n")
    atomic_write(RESULTS / "steps.md", markdown(results))
    print((RESULTS / "steps.md").read_text())


if __name__ == "__main__":
    main()
