"""S^3 / USF search benchmark (Liu et al., arXiv 2312.07243) on the analytic Gaussian-mixture model.

For NFE 4, 5 and 6: search a solver schedule (fitness: RMSE of the final samples against the exact
probability-flow ODE solution from the same noise), then compare on held-out seeds with every
fixed-schedule solver we or Diffusers offer at the same NFE (DDIM, DPM-Solver++ 2M/3M, UniPC
bh1/bh2 orders 2-3, diffusers' DEIS log-rho, our DEIS tAB/rhoAB/log-rho/iPNDM orders 2-4) on four
standard grids, keeping the best. Also runs the timestep-only search (AutoDiffusion) for contrast,
and, with ``--demo``, the same search on the tiny trained digits DDPM with the Frechet distance of
classifier features to the data as fitness.

Writes benchmarks/results/s3.json and s3.md and the found schedules to eval/schedules/.

    python benchmarks/bench_s3.py            # about 15 minutes on 2 CPU cores (the searches: about 8)
    python benchmarks/bench_s3.py --demo     # plus the demo DDPM (a few minutes more)
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

from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import DiscreteVP, betas_for_schedule
from fastsample.search.evolution import report, search
from fastsample.search.problem import SearchProblem

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCHEDULES = ROOT / "eval" / "schedules"
HELDOUT = (7, 8, 9, 10)


def analytic_problem():
    mixture = GaussianMixture.random(dim=8, components=8, seed=0, width=(0.01, 0.1))
    vp = DiscreteVP.from_betas(betas_for_schedule("linear"))
    return SearchProblem.analytic(
        mixture, vp, name="GaussianMixture.random(dim=8, components=8, seed=0, width=(0.01, 0.1))"
    )


def demo_problem():
    from fastsample.demo import digits_split, load_classifier, load_ddpm_pipeline

    pipe = load_ddpm_pipeline()
    clf = load_classifier()
    vp = DiscreteVP.from_config(pipe.scheduler.config)
    unet = pipe.unet

    @torch.no_grad()
    def model_fn(x, t):
        ts = torch.full((len(x),), float(vp.timestep(t)), dtype=torch.float32)
        return unet(x.float(), ts).sample.to(x.dtype)

    @torch.no_grad()
    def features(x):
        return clf.features(x.float().clamp(-1, 1))

    train, _ = digits_split()
    data = torch.as_tensor(np.asarray(train.images), dtype=torch.float32)
    if data.ndim == 3:
        data = data[:, None]
    problem = SearchProblem.from_model(
        model_fn,
        vp,
        tuple(data.shape[1:]),
        features=features,
        reference_steps=None,
        description={"name": "fastsample demo digits DDPM (16x16)", "noise_schedule": vp.describe()},
    )
    problem.target_features = features(data).double()
    return problem


def demo_is_trained(problem) -> tuple[bool, str]:
    """The shipped DDPM must predict the noise at t = 1 (output std near 1); a placeholder does not."""
    x = problem.noise(64, 0)
    std = float(problem.model_fn(x, 1.0).std())
    return std > 0.8, f"eps-prediction std at t = 1 is {std:.2f} (a trained model gives about 1)"


def ablation(problem, nfe, generations, search_kw):
    """The same search with the surrogate replaced by random selection (same evaluation budget)."""
    res = search(problem, nfe, generations=generations, predictor="none", progress=False, **search_kw)
    rep = report(problem, res.schedule, HELDOUT, 512)
    return {
        "nfe": nfe,
        "predictor": "none",
        "heldout": rep["found"],
        "improvement": rep["improvement"],
        "search_fitness_high_fidelity": res.fitness,
    }


def run(
    problem,
    nfes,
    generations,
    metric,
    tag,
    timestep_only_too=True,
    search_kw=None,
    report_n=512,
    ts_generations=40,
    heldout=HELDOUT,
    report_kw=None,
):
    rows = []
    search_kw = dict(search_kw or {})
    with tempfile.TemporaryDirectory() as tmp:
        for nfe in nfes:
            t0 = time.time()
            res = search(
                problem,
                nfe,
                generations=generations,
                metric=metric,
                checkpoint=os.path.join(tmp, f"{tag}_{nfe}.ckpt.json"),
                out=SCHEDULES / f"{tag}_nfe{nfe}.json",
                progress=sys.stderr.isatty(),
                **search_kw,
            )
            t_search = time.time() - t0
            rep = report(problem, res.schedule, heldout, report_n, metric, **(report_kw or {}))
            row = {
                "problem": tag,
                "nfe": nfe,
                "metric": metric,
                "heldout_seeds": list(heldout),
                "baselines_compared": len(rep["baselines"]),
                "search_seconds": round(t_search, 1),
                "evaluations": res.evaluations,
                "search_fitness_high_fidelity": res.fitness,
                "heldout_found": rep["found"],
                "heldout_best_baseline": rep["best_baseline"],
                "improvement": rep["improvement"],
                "baselines_top5": rep["baselines"][:5],
                "schedule_file": str((SCHEDULES / f"{tag}_nfe{nfe}.json").relative_to(ROOT)),
                "schedule_summary": summary(res.schedule),
                "surrogate_rank_corr_mean": float(
                    np.nanmean([h["surrogate_rank_corr"] for h in res.history]) if res.history else float("nan")
                ),
            }
            if timestep_only_too:
                t0 = time.time()
                ts = search(
                    problem,
                    nfe,
                    generations=ts_generations,
                    metric=metric,
                    timestep_only=True,
                    progress=False,
                    **search_kw,
                )
                rep_ts = report(problem, ts.schedule, HELDOUT, report_n, metric)
                row["timestep_only"] = {
                    "heldout": rep_ts["found"],
                    "improvement": rep_ts["improvement"],
                    "seconds": round(time.time() - t0, 1),
                }
            rows.append(row)
            print(
                f"[{tag}] nfe={nfe}: found {rep['found']:.4g} vs best fixed {rep['best_baseline']['fitness']:.4g} "
                f"({rep['best_baseline']['solver']} on {rep['best_baseline']['grid']}), "
                f"{100 * rep['improvement']:.1f}% lower, search {t_search:.0f}s",
                flush=True,
            )
    return rows


def summary(s) -> str:
    parts = []
    for st in s.steps:
        p = "x0" if st.prediction == "data" else "eps"
        c = "+C" if st.corrector else ""
        d = st.derivatives[0] if st.derivatives else None
        lo = "lo" if d is not None and len(d.points) < st.order - 1 else ""
        r = f"(c={d.coef:+.2f})" if d is not None and d.scaling == "linear" else ""
        parts.append(f"{p}{st.order}{lo}{r}{c}")
    return ("AFS " if s.afs != "none" else "") + " ".join(parts)


def write_md(result):
    lines = [
        "# S^3 / USF schedule search (bench_s3.py)",
        "",
        f"Machine: {result.get('machine', '?')}; torch threads {result['threads']};"
        f" total {result.get('total_seconds', 0):.0f} s (analytic part).",
        "",
        "Fitness (gmm): RMSE of final samples against the exact ODE solution from the same noise;"
        " held-out seeds " + ", ".join(map(str, HELDOUT)) + " (512 samples each), never seen by the search.",
        "Best fixed = the best of DDIM, DPM-Solver++ 2M/3M, UniPC bh1/bh2 (orders 2, 3), DEIS log-rho (diffusers)"
        " and our DEIS tAB/rhoAB/log-rho/iPNDM orders 2-4, each on uniform-t, quadratic-t, uniform-lambda and"
        " Karras grids (the best of 92 solver x grid pairs, chosen on the held-out seeds themselves).",
        "",
        "| problem | NFE | metric | searched (held-out) | best fixed (held-out) | best fixed solver | improvement |"
        " timestep-only search | search time | schedule |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        b = r["heldout_best_baseline"]
        ts = r.get("timestep_only")
        ts_s = f"{ts['heldout']:.4g} ({100 * ts['improvement']:.0f}%)" if ts else "-"
        lines.append(
            f"| {r['problem']} | {r['nfe']} | {r.get('metric', 'rmse')} | {r['heldout_found']:.4g} |"
            f" {b['fitness']:.4g} |"
            f" {b['solver']} / {b['grid']} |"
            f" {100 * r['improvement']:.1f}% | {ts_s} | {r['search_seconds']:.0f} s | `{r['schedule_summary']}` |"
        )
    lines += [
        "",
        "Schedule notation: per step x0/eps = data/noise prediction, then the Taylor order; `lo` = low-order"
        " derivative estimate; `(c=..)` = linear derivative scaling 1 + c h; `+C` = corrector; `AFS` = analytical"
        " first step (one extra step for the same NFE).",
    ]
    ab = result.get("ablation_no_surrogate")
    if ab:
        lines += [
            "",
            f"Ablation at NFE {ab['nfe']}: the same search with random selection instead of the surrogate ranking"
            f" reaches {ab['heldout']:.4g} held-out ({100 * ab['improvement']:.1f}% below the best fixed solver).",
        ]
        same = [r for r in result["rows"] if r["problem"] == "gmm" and r["nfe"] == ab["nfe"]]
        if same:
            gain = 1 - same[0]["heldout_found"] / ab["heldout"]
            verdict = "no measurable gain from" if abs(gain) < 0.05 else f"{100 * gain:+.1f}% from"
            lines[-1] += (
                f" With the surrogate: {same[0]['heldout_found']:.4g}, i.e. {verdict} the surrogate ranking on this"
                " cheap analytic problem at this evaluation budget."
            )
    corr = [r.get("surrogate_rank_corr_mean") for r in result["rows"] if r.get("surrogate_rank_corr_mean") is not None]
    if corr:
        lines += [
            "",
            "Surrogate (MLP) rank correlation with the measured low-fidelity fitness of the candidates it selected,"
            " mean over generations: " + ", ".join(f"{c:.2f}" for c in corr) + ".",
        ]
    if "search_seconds_all_nfe" in result:
        gmm_nfe = ", ".join(str(r["nfe"]) for r in result["rows"] if r["problem"] == "gmm")
        lines += ["", f"Search time for NFE {gmm_nfe} (gmm) together: {result['search_seconds_all_nfe']:.0f} s."]
    if result.get("demo_note"):
        lines += ["", result["demo_note"]]
    (RESULTS / "s3.md").write_text("\n".join(lines) + "\n")


DEMO_BASELINES = (
    "ddim",
    "dpmsolver++2m",
    "dpmsolver++3m",
    "unipc-bh2",
    "unipc3-bh2",
    "deis-logrho3",
    "deis-tab3",
    "deis-ipndm3",
)


def run_demo(result, args):
    """The demo DDPM with the Frechet-distance fitness (a reduced baseline set: each evaluation is a U-Net run)."""
    demo = demo_problem()
    trained, why = demo_is_trained(demo)
    result["rows"] = [r for r in result["rows"] if r["problem"] != "demo_ddpm"]
    if not trained:
        result["demo_note"] = f"Demo DDPM search skipped: the shipped weights are not a trained model yet ({why})."
        return
    t0 = time.time()
    result["rows"] += run(
        demo,
        args.demo_nfe,
        args.demo_generations,
        "fid",
        "demo_ddpm",
        timestep_only_too=False,
        search_kw={"low_fidelity": 128, "high_fidelity": 256, "evaluate_per_generation": 8, "promote": 2},
        report_n=512,
        heldout=(7,),
        report_kw={"solvers": DEMO_BASELINES, "grid_names": ("time_uniform", "logSNR")},
    )
    result["demo_note"] = (
        f"Demo DDPM (16x16 digits, {time.time() - t0:.0f} s): fitness = Frechet distance of the demo classifier's"
        " features to the digits training set; held-out = one seed of 512 samples; baselines reduced to "
        + ", ".join(DEMO_BASELINES)
        + " on uniform-t and uniform-lambda grids (each evaluation runs the U-Net)."
    )


def demo_only(args):
    """Add the ablation (if missing) and the demo DDPM rows to an existing s3.json (the analytic rows are kept)."""
    path = RESULTS / "s3.json"
    result = json.loads(path.read_text()) if path.exists() else {"benchmark": "bench_s3", "rows": [], "threads": 1}
    gmm_rows = [r for r in result["rows"] if r["problem"] == "gmm"]
    result["search_seconds_all_nfe"] = round(sum(r["search_seconds"] for r in gmm_rows), 1)
    if args.ablation and "ablation_no_surrogate" not in result:
        result["ablation_no_surrogate"] = ablation(
            analytic_problem(), args.ablation, args.generations, {"high_fidelity": 512}
        )
        print("ablation (random selection instead of the surrogate):", result["ablation_no_surrogate"], flush=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    run_demo(result, args)
    path.write_text(json.dumps(result, indent=1) + "\n")
    write_md(result)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6])
    ap.add_argument("--generations", type=int, default=60)
    ap.add_argument("--ts-generations", type=int, default=30, help="generations of the timestep-only search")
    ap.add_argument("--demo", action="store_true", help="also search on the demo digits DDPM (Frechet distance)")
    ap.add_argument("--demo-nfe", type=int, nargs="+", default=[5])
    ap.add_argument("--demo-generations", type=int, default=10)
    ap.add_argument("--demo-only", action="store_true", help="only the demo DDPM, merged into an existing s3.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ablation", type=int, default=5, help="NFE of the no-surrogate ablation (0: skip)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    SCHEDULES.mkdir(parents=True, exist_ok=True)
    if args.demo_only:
        return demo_only(args)
    t0 = time.time()
    rows = run(analytic_problem(), args.nfe, args.generations, "rmse", "gmm", search_kw={"high_fidelity": 512})
    result = {
        "benchmark": "bench_s3",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "threads": args.threads,
        "rows": rows,
    }
    if args.demo:
        demo = demo_problem()
        result["rows"] += run(
            demo,
            args.demo_nfe,
            max(8, args.generations // 4),
            "fid",
            "demo_ddpm",
            timestep_only_too=False,
            search_kw={"low_fidelity": 128, "high_fidelity": 512, "evaluate_per_generation": 8, "promote": 2},
            report_n=512,
        )
    else:
        result["demo_note"] = "Demo DDPM search not run (pass --demo)."
    result["total_seconds"] = time.time() - t0
    (RESULTS / "s3.json").write_text(json.dumps(result, indent=1) + "\n")
    write_md(result)
    return result


if __name__ == "__main__":
    main()
