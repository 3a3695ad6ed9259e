"""``fastsample search``: find an S^3 solver schedule (Liu et al., arXiv 2312.07243) for a model and NFE.

Models: ``gmm`` (an analytic Gaussian mixture; fitness against the exact ODE solution), ``demo-ddpm``
and ``demo-flow`` (the shipped digits DDPM and flow model; fitness ``fid`` = Frechet distance of the demo
classifier's features to the digits training data, or ``rmse`` / ``sample_rmse`` against a reference
solution of the same noise, UniPC-3 with 100 steps; see :func:`.problem.fitness_of`). Writes the schedule (JSON,
with provenance) to ``--out`` and, with ``--report``, the held-out comparison with every fixed solver.

    fastsample search --model gmm --nfe 5 --out eval/schedules/gmm_nfe5.json --report
"""

from __future__ import annotations

import argparse
import json
import sys

from .._args import ArgumentParser, positive_int
from .._io import UserError, atomic_write, refuse_existing

__all__ = ["main", "build_parser"]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("gmm", "demo-ddpm", "demo-flow"), default="gmm")
    p.add_argument("--nfe", type=positive_int, required=True, help="model evaluations of the schedule")
    p.add_argument("--out", required=True, help="where to write the found schedule (JSON)")
    p.add_argument(
        "--metric", choices=("rmse", "sample_rmse", "fid"), default=None, help="default: rmse (gmm), fid (demo models)"
    )
    p.add_argument("--generations", type=positive_int, default=30)
    p.add_argument(
        "--offspring", type=positive_int, default=200, help="candidates per generation ranked by the surrogate"
    )
    p.add_argument("--evaluate", type=positive_int, default=16, help="candidates evaluated per generation")
    p.add_argument("--low-fidelity", type=positive_int, default=128, help="samples per low-fidelity evaluation")
    p.add_argument("--high-fidelity", type=positive_int, default=256, help="samples per high-fidelity evaluation")
    p.add_argument("--predictor", choices=("mlp", "ridge", "none"), default="mlp")
    p.add_argument("--timestep-only", action="store_true", help="search the grid only (AutoDiffusion)")
    p.add_argument("--base", default="unipc-bh2", help="base solver for --timestep-only")
    p.add_argument(
        "--no-afs", action="store_true", help="do not consider the analytical first step (never on flow models)"
    )
    p.add_argument("--checkpoint", default=None, help="checkpoint file (resumed when present)")
    p.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", action="store_true", help="print the held-out comparison with fixed solvers")
    p.add_argument("--report-json", default=None, help="also write the held-out report to this JSON file")
    p.add_argument("--gmm-dim", type=positive_int, default=8)
    p.add_argument("--gmm-components", type=positive_int, default=8)
    p.add_argument("--gmm-seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace an existing --out / --report-json file")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="fastsample search", description=__doc__.splitlines()[0])
    _add_arguments(p)
    return p


def _problem(args):
    from ..core.analytic import GaussianMixture
    from ..core.schedules import DiscreteVP, betas_for_schedule
    from .problem import SearchProblem

    if args.model == "gmm":
        mix = GaussianMixture.random(args.gmm_dim, args.gmm_components, seed=args.gmm_seed, width=(0.01, 0.1))
        name = f"GaussianMixture.random(dim={args.gmm_dim}, components={args.gmm_components}, seed={args.gmm_seed})"
        return SearchProblem.analytic(mix, DiscreteVP.from_betas(betas_for_schedule("linear")), name=name), "rmse"
    import torch

    from .._io import tree_digest
    from ..core.model import time_labels
    from ..core.schedules import schedule_for_config
    from ..demo import WEIGHTS_DIR, digits_split, load_classifier, load_ddpm_pipeline, load_flow_pipeline

    which = args.model.removeprefix("demo-")
    pipe = load_ddpm_pipeline() if which == "ddpm" else load_flow_pipeline()
    clf = load_classifier()
    ns, ptype = schedule_for_config(pipe.scheduler.config)
    if ns.is_flow and float(pipe.scheduler.config.get("shift", 1.0)) != 1.0:
        raise UserError("the search's flow grids are in model time: a shifted flow model is not supported")

    @torch.no_grad()
    def model_fn(x, t):
        return pipe.unet(x.float(), time_labels(ns, t, x)).sample.to(x.dtype)

    @torch.no_grad()
    def features(x):
        return clf.features(x.float().clamp(-1, 1))

    data = digits_split()[0].images
    metric = args.metric or "fid"
    prob = SearchProblem.from_model(
        model_fn,
        ns,
        tuple(data.shape[1:]),
        prediction_type=ptype,
        features=features,
        reference_steps=None if metric == "fid" else 100,
        # a flow starts where Diffusers' flow UniPC / DPM-Solver++ do, at the largest trained t below 1: there
        # lambda is finite, so the first point gives derivatives
        t_start=1.0 - 1.0 / ns.num_train_timesteps if ns.is_flow else None,
        description={
            "name": f"fastsample demo digits {'DDPM' if which == 'ddpm' else 'flow model'} (16x16)",
            "noise_schedule": ns.describe(),
            "sha256": tree_digest(WEIGHTS_DIR / which),
            "classifier_sha256": tree_digest(WEIGHTS_DIR / "classifier"),
        },
    )
    prob.target_features = features(data).double()
    return prob, metric


def _run(args) -> int:
    import torch

    from .evolution import report, search

    # the output files are checked before the search, not after it
    outs = [refuse_existing(args.out, args.force)]
    if args.report_json:
        outs.append(refuse_existing(args.report_json, args.force))
    if args.checkpoint and refuse_existing(args.checkpoint, force=True).resolve() in {o.resolve() for o in outs}:
        raise UserError(f"--checkpoint {args.checkpoint} is also an output file; give it its own name")
    if len({o.resolve() for o in outs}) < len(outs):
        raise UserError("--out and --report-json name the same file")
    torch.set_num_threads(args.threads)
    problem, default_metric = _problem(args)
    metric = args.metric or default_metric
    res = search(
        problem,
        args.nfe,
        generations=args.generations,
        offspring=args.offspring,
        evaluate_per_generation=args.evaluate,
        low_fidelity=args.low_fidelity,
        high_fidelity=args.high_fidelity,
        metric=metric,
        predictor=args.predictor,
        timestep_only=args.timestep_only,
        base=args.base,
        allow_afs=not (args.no_afs or problem.noise_schedule.is_flow),
        checkpoint=args.checkpoint,
        out=args.out,
        seed=args.seed,
        progress=not args.quiet,
        time_budget_s=args.time_budget,
    )
    print(
        f"wrote {args.out}: nfe {res.schedule.nfe}, {metric} {res.fitness:.5g} ({res.evaluations} evaluations, "
        f"{res.seconds:.0f} s)"
    )
    if args.report or args.report_json:
        rep = report(problem, res.schedule, metric=metric)
        b = rep["best_baseline"]
        print(
            f"held-out {metric}: found {rep['found']:.5g}; best fixed solver {b['solver']} on {b['grid']}: "
            f"{b['fitness']:.5g} ({100 * rep['improvement']:.1f}% lower)"
        )
        if args.report_json:
            atomic_write(args.report_json, json.dumps(rep, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return _run(args)


if __name__ == "__main__":
    raise SystemExit(main())
