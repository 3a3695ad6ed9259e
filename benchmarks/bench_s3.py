"""S^3 / USF searched schedules (Liu et al., arXiv 2312.07243) against every fixed solver, under the protocol.

On the analytic Gaussian mixture (8-D, 8 components, DDPM linear betas, exact denoiser) at NFE 4, 5, 6:
the searched schedule (fitness: RMSE of the final samples against the exact probability-flow ODE solution
from the same noise, on seeds 1000 and 1001) against every fixed solver (benchmarks/README.md): each
Diffusers family in every variant on every grid a fastsample scheduler gets and on its own grid options,
each at its pipeline defaults, and our DEIS variants on every grid. Fixed solvers choose their
configuration on the search's own seeds (1000, 1001: selection) and every method is reported on the held-out
seeds 7-10 (512 samples each) as the mean per-sample RMSE with a bootstrap interval.

By default the searched schedules are the files in eval/schedules/ (their search settings and number of
evaluated schedules are read from the files); ``--search`` reruns the searches (writing those files), the
timestep-only search (AutoDiffusion) and the no-surrogate ablation, about 15 CPU-minutes.

    nice -n 10 python benchmarks/bench_s3.py            # under a CPU-minute
    nice -n 10 python benchmarks/bench_s3.py --search   # reruns the searches

Writes benchmarks/results/s3.json and s3.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import protocol as P
import torch
from diffusers import DDIMScheduler
from diffusers.utils import logging as dlogging

from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import DiscreteVP, betas_for_schedule
from fastsample.formats.solver_schedule import SolverSchedule
from fastsample.formats.solver_schedule import load as load_schedule
from fastsample.search.evolution import search
from fastsample.search.problem import SearchProblem

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ROOT / "eval" / "schedules"
SELECTION = (1000, 1001)  # the seeds the search evaluates on (low and high fidelity)
HELDOUT = (7, 8, 9, 10)
N_SELECTION, N_HELDOUT = 256, 512
CONFIG = DDIMScheduler(beta_schedule="linear").config
NAME = "GaussianMixture.random(dim=8, components=8, seed=0, width=(0.01, 0.1))"


def analytic_problem():
    mixture = GaussianMixture.random(dim=8, components=8, seed=0, width=(0.01, 0.1))
    vp = DiscreteVP.from_betas(betas_for_schedule("linear"))
    assert np.allclose(vp.alphas_cumprod, DiscreteVP.from_config(CONFIG).alphas_cumprod)
    return SearchProblem.analytic(mixture, vp, name=NAME)


def evaluator(problem):
    """evaluate(cfg, seeds) -> per-sample RMSE; cfg: a scheduler builder or a SolverSchedule."""
    vp = problem.noise_schedule

    def evaluate(cfg, seeds):
        out = []
        for seed in seeds:
            x, ref = problem.batch(seed, N_HELDOUT if seed in HELDOUT else N_SELECTION)
            try:
                if isinstance(cfg, SolverSchedule):
                    y = problem.run(cfg, x)
                else:
                    y = P.sample(cfg(), lambda x, ts: problem.model_fn(x, float(vp.t_of_timestep(ts))), x.clone())
            except (RuntimeError, ValueError, IndexError):  # e.g. Diffusers' UniPC: singular system without lof
                return None
            out.append(P.per_sample_rmse(y, ref))
        return np.concatenate(out)

    return evaluate


def searched(problem, nfe, args, tmp) -> tuple[SolverSchedule, dict]:
    """The searched schedule for ``nfe``: rerun (``--search``) or read from eval/schedules/, with its provenance."""
    path = SCHEDULES / f"gmm_nfe{nfe}.json"
    if args.search:
        t0 = time.time()
        search(problem, nfe, generations=args.generations, high_fidelity=512, out=path,
                     checkpoint=Path(tmp) / f"gmm_{nfe}.ckpt.json", progress=False)  # fmt: skip
        print(f"NFE {nfe}: searched in {time.time() - t0:.0f} s", flush=True)
    schedule = load_schedule(path)
    prov = schedule.metadata["provenance"]
    if schedule.metadata["model"]["name"] != NAME or schedule.nfe != nfe:
        raise SystemExit(f"{path} was searched for another problem or NFE; rerun with --search")
    return schedule, prov


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6])
    ap.add_argument("--search", action="store_true", help="rerun the searches (writes eval/schedules/gmm_nfe*.json)")
    ap.add_argument("--generations", type=int, default=60)
    ap.add_argument("--ts-generations", type=int, default=30, help="generations of the timestep-only search")
    ap.add_argument("--ablation", type=int, default=5, help="NFE of the no-surrogate ablation (with --search)")
    args = ap.parse_args(argv)
    dlogging.set_verbosity_error()
    torch.set_num_threads(1)
    t0 = time.time()
    problem = analytic_problem()
    evaluate = evaluator(problem)
    configs, extra, provenance = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for nfe in args.nfe:
            methods = P.vp_methods(CONFIG, nfe)
            methods["all fixed solvers"] = {**methods["all Diffusers"], **methods["all fastsample DEIS"]}
            configs[nfe] = methods
            schedule, prov = searched(problem, nfe, args, tmp)
            provenance[nfe] = prov
            found = {"S3 searched schedule (fastsample)": schedule}
            if args.search:
                ts = search(problem, nfe, generations=args.ts_generations, timestep_only=True, progress=False)
                found["timestep-only search (fastsample)"] = ts.schedule
                provenance[nfe]["timestep_only_evaluations"] = ts.evaluations
            for label, s in found.items():
                held = evaluate(s, HELDOUT)
                count = prov["evaluations"] if label.startswith("S3") else provenance[nfe]["timestep_only_evaluations"]
                extra[label, nfe] = P.Choice(label, summary(s), float("nan"), float(held.mean()), count, held).to_dict()
        if args.search and args.ablation:
            ab = search(problem, args.ablation, generations=args.generations, predictor="none", high_fidelity=512,
                        progress=False)  # fmt: skip
            held = evaluate(ab.schedule, HELDOUT)
            label = "S3 search, random selection instead of the surrogate (ablation)"
            extra[label, args.ablation] = P.Choice(label, summary(ab.schedule), float("nan"), float(held.mean()),
                                                   ab.evaluations, held).to_dict()  # fmt: skip
    choices = P.choose_all(configs, evaluate, selection_seeds=SELECTION, heldout_seeds=HELDOUT)
    choices |= extra
    res = {
        "run": "search" if args.search else "shipped schedules",
        "problem": NAME,
        "nfe": args.nfe,
        "selection_seeds": list(SELECTION),
        "heldout_seeds": list(HELDOUT),
        "samples": {"selection": N_SELECTION, "heldout": N_HELDOUT},
        "search_provenance": provenance,
        "choices": [{**d, "nfe": nfe} for (m, nfe), d in choices.items()],
        "ratio_searched_over_all_fixed": P.ratios(
            choices, args.nfe, "S3 searched schedule (fastsample)", "all fixed solvers"
        ),
        "seconds": time.time() - t0,
    }
    P.write_results("s3", res, markdown(res, choices))
    print(markdown(res, choices))


def markdown(res, choices) -> str:
    prov = res["search_provenance"]
    ratio = res["ratio_searched_over_all_fixed"]
    lines = [
        "# S^3 / USF searched schedules vs every fixed solver (`benchmarks/bench_s3.py`"
        + (" --search)" if res["run"] == "search" else ")"),
        "",
        f"Problem: {res['problem']}, DDPM linear betas, exact denoiser. Per-sample RMSE against the exact ODE solution"
        f" of the same noise; held-out seeds {res['heldout_seeds']} ({res['samples']['heldout']} samples each). Fixed"
        f" solvers chose their configuration on the search's seeds {res['selection_seeds']}"
        f" ({res['samples']['selection']} samples each). Cell: held-out mean [bootstrap 95% CI] (configuration);"
        " count: configurations the method chose from (for a search: the schedules it evaluated).",
        "",
        "Searched schedules: "
        + "; ".join(
            f"NFE {n}: {p['generations']} generations, {p['evaluations']} schedules evaluated, {p['seconds']:.0f} s"
            for n, p in prov.items()
        )
        + (" (rerun here)." if res["run"] == "search" else " (eval/schedules/, read from the files)."),
        "",
        P.comparison_table(choices, res["nfe"], ratio=("S3 searched schedule (fastsample)", "all fixed solvers")),
        "Improvement of the searched schedule over the best fixed solver (held-out): "
        + ", ".join(f"NFE {n}: {100 * (1 - r):.1f}%" for n, r in ratio.items())
        + ".",
        "",
        "Schedule notation: per step x0/eps = data/noise prediction, then the Taylor order; `lo` = low-order"
        " derivative estimate; `(c=..)` = linear derivative scaling 1 + c h; `+C` = corrector; `AFS` = analytical"
        " first step.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
