"""S^3 search: find a solver schedule for a model and an NFE budget (Liu et al., arXiv 2312.07243).

An evolutionary search over USF's decision space (the time grid, and per step the prediction
type, Taylor order, low-order derivative estimation, a linear derivative scaling 1 + c h and the
corrector; the analytical first step as a variant with one more step), in which a surrogate
predictor (a small MLP on schedule features, trained on every schedule evaluated so far) ranks the
offspring of each generation and only the best-ranked ones are evaluated: the S^3 idea. Fitness is
the RMSE of the final samples against a reference solution from the same noise (the exact ODE
solution for analytic models, a high-NFE run otherwise) or, optionally, the Frechet distance of
sample features (:func:`fastsample.fid.frechet_distance`). Evaluation is multi-fidelity: every
candidate on a few samples, the promising ones on more; the result is the best at high fidelity.
``timestep_only=True`` keeps a base solver's decisions and searches the grid alone (AutoDiffusion,
Li et al., arXiv 2309.10438). State is checkpointed atomically after every generation and resumed
bit for bit; a checkpoint of another problem or other settings is refused.

:func:`evaluate_baselines` and :func:`report` give the held-out check: the found schedule's
fitness on seeds not used in the search next to every fixed-schedule solver's at the same NFE.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .._io import UserError, atomic_write, file_lock
from ..formats.solver_schedule import ScheduleError, SolverSchedule, Step
from ..solvers.usf.builtins import builtin, first_point_usable
from .baselines import SCHEDULE_BASELINES, _grid_for, baseline_grids, evaluate_baselines
from .genotype import _features, _key, _make_step, _step_genes, _t_of_u, _u_of_t
from .problem import SearchProblem, fitness_of

# --- the search -------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    schedule: SolverSchedule
    fitness: float
    evaluations: int
    generations: int
    history: list
    seconds: float


def _stalled(history, window: int = 5) -> float:
    """1 when the best high-fidelity fitness has not improved for ``window`` generations (mutations then grow)."""
    if len(history) <= window:
        return 0.0
    return float(history[-1]["best_high"] >= history[-1 - window]["best_high"])


def _spearman(a, b) -> float:
    """Rank correlation of the surrogate's predictions with the measured fitness of the evaluated candidates."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _read_checkpoint(path, config: dict) -> dict:
    """A checkpoint's state, refused (UserError) when unreadable or written for another search."""
    try:
        with open(path) as f:
            state = json.load(f)
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        missing = {"config", "generation", "seconds", "rng", "archive", "history"} - set(state)
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"checkpoint {path} is not a readable search checkpoint ({e}); delete it to restart") from None
    theirs = state["config"] if isinstance(state["config"], dict) else {}
    if theirs != config:
        diff = sorted(k for k in set(config) | set(theirs) if theirs.get(k) != config.get(k))
        raise UserError(
            f"checkpoint {path} was written for another search (it differs in {', '.join(diff)}); "
            "use another --checkpoint or delete it"
        )
    return state


@dataclass(frozen=True)
class Evolution:
    """The constants of the evolutionary search (set by hand on the mixture problems; a checkpoint assumes them).

    Grid moves are in the search's unit grid coordinate u in (0, 1) (see :mod:`.genotype`).
    """

    grid_step_scales: tuple = (0.02, 0.05, 0.1)  # std of a grid move in u, one drawn per mutation
    grid_move_share: float = 0.5  # chance that an inner grid point moves
    end_step: float = 0.02  # std of a move of the last grid point (grids not ending at 0), in u
    end_range: tuple = (0.9, 1.0)  # where that last point may go, in u
    genes_per_mutation: float = 1.5  # expected step-gene changes per mutation (times the stall boost)
    max_gene_rate: float = 0.5  # cap on the per-gene change probability
    orders: tuple = (1, 2, 3)  # Taylor orders a mutated step may take ...
    order_weights: tuple = (0.2, 0.45, 0.35)  # ... with these probabilities
    coef_step: float = 0.1  # std of a move of the derivative-scaling coefficient c
    coef_range: tuple = (-1.5, 1.5)  # range of c
    coef_keep: float = 0.8  # chance a mutated c moves (else it resets to 0)
    grid_blend: float = 0.3  # chance a crossover child's grid blends both parents' (else one parent's)
    crossover: float = 0.3  # chance a child comes from crossover (else from mutation)
    mutate_after_crossover: float = 0.5  # chance a crossover child is also mutated
    stall_boost: float = 2.0  # mutations grow up to 1 + this while the best stalls
    elite: int = 6  # parents: the best at high fidelity ...
    low_parents: int = 12  # ... and the best at low fidelity
    random_picks: int = 2  # candidates per generation evaluated at random beside the surrogate's picks


EVOLUTION = Evolution()


PREDICTORS = ("mlp", "ridge", "none")
"""Surrogates of :func:`search`: an MLP or ridge regressor on schedule features, or none (random picks)."""


class _Surrogate:
    """MLP (or ridge) regressor of log fitness on schedule features: ranks candidates before evaluation."""

    def __init__(self, kind: str, seed: int):
        self.kind, self.seed, self.model = kind, seed, None

    def fit(self, X, y):
        if self.kind == "none":  # no surrogate: needs no scikit-learn
            return
        from sklearn.linear_model import Ridge
        from sklearn.neural_network import MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if len(y) < 8:
            self.model = None
            return
        if self.kind == "ridge":
            reg = Ridge(alpha=1.0)
        else:
            reg = MLPRegressor(hidden_layer_sizes=(64, 32), alpha=1e-3, max_iter=400, random_state=self.seed)
        self.model = make_pipeline(StandardScaler(), reg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(X, y)

    def predict(self, X, rng=None):
        if self.model is None or self.kind == "none":
            return np.zeros(len(X)) if rng is None else rng.random(len(X))
        return self.model.predict(X)


def search(
    problem: SearchProblem,
    nfe: int,
    generations: int = 30,
    offspring: int = 200,
    evaluate_per_generation: int = 16,
    promote: int = 4,
    low_fidelity: int = 128,
    high_fidelity: int = 256,
    search_seed: int = 1000,
    metric: str = "rmse",
    predictor: str = "mlp",
    timestep_only: bool = False,
    base: str = "unipc-bh2",
    allow_afs: bool = True,
    checkpoint: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    time_budget_s: float | None = None,
) -> SearchResult:
    """Search a schedule of exactly ``nfe`` model calls for ``problem`` (see the module docstring).

    Low fidelity: ``low_fidelity`` samples from seed ``search_seed``; high fidelity: ``high_fidelity``
    samples from seed ``search_seed + 1``. Each generation makes ``offspring`` candidates by mutation and
    crossover of parents (the best at high fidelity, then at low fidelity; mutations grow while the best
    stalls), the surrogate (``predictor``: ``"mlp"``, ``"ridge"``, or ``"none"``: no surrogate, uniform random
    picks, which measures what the surrogate of arXiv 2312.07243 buys, ``benchmarks/bench_s3.py --ablation``, and
    needs no scikit-learn) picks ``evaluate_per_generation`` of them (plus two at random), and the ``promote``
    best low-fidelity schedules not yet checked are evaluated at high fidelity. With ``checkpoint`` the state
    (archive, RNG, history) is written atomically after each generation with a fingerprint of the problem's
    description and every setting but ``generations`` and ``time_budget_s``; a later call with the same path
    resumes to the bit-identical result, one with another fingerprint raises UserError, and a second search on
    the same checkpoint at once is refused. ``out``: where the best schedule is written (JSON).
    """
    from tqdm.auto import tqdm

    from .. import __version__

    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; allowed: {', '.join(PREDICTORS)}")
    ns, t0, t1 = problem.noise_schedule, problem.t_start, problem.t_end
    final_zero = t1 == 0
    t_end_pos = ns.t_min if final_zero else t1
    if final_zero and t_end_pos <= 0:
        t_end_pos = float(ns.t_of_lambda(np.array([12.0]))[0])
    if allow_afs and ns.is_flow:
        raise ValueError("the analytical first step applies to VP models only; search flows with allow_afs=False")
    first_usable = first_point_usable(ns, t0)
    rng = np.random.default_rng(seed)
    archive: dict[str, dict] = {}
    start_gen, elapsed0 = 0, 0.0
    history = []
    # everything the search's course depends on (not `generations` or the time budget: a resumed search
    # may run longer); a checkpoint written for anything else is refused
    config = json.loads(
        json.dumps(
            dict(
                model=problem.description,
                prediction_type=problem.prediction_type,
                t_start=t0,
                t_end=t1,
                nfe=nfe,
                metric=metric,
                low=low_fidelity,
                high=high_fidelity,
                search_seed=search_seed,
                offspring=offspring,
                evaluate_per_generation=evaluate_per_generation,
                promote=promote,
                predictor=predictor,
                timestep_only=timestep_only,
                base=base,
                allow_afs=allow_afs,
                seed=seed,
                library=__version__,
            ),
            default=str,
        )
    )
    lock = contextlib.nullcontext()
    if checkpoint is not None:
        lock = file_lock(f"{checkpoint}.lock", wait=False, what=f"search using checkpoint {checkpoint}")
    with lock:
        if checkpoint is not None and os.path.exists(checkpoint):
            state = _read_checkpoint(checkpoint, config)
            archive, history = state["archive"], state["history"]
            start_gen, elapsed0 = state["generation"], state["seconds"]
            rng.bit_generator.state = state["rng"]

        def sched_of(entry) -> SolverSchedule:
            return SolverSchedule.from_dict(entry["schedule"])

        def evaluate(s: SolverSchedule, fidelity: str) -> float:
            k = _key(s)
            entry = archive.setdefault(k, {"schedule": s.to_dict(), "low": None, "high": None})
            if entry[fidelity] is None:
                n, sd = (low_fidelity, search_seed) if fidelity == "low" else (high_fidelity, search_seed + 1)
                x, ref = problem.batch(sd, n)
                try:
                    entry[fidelity] = fitness_of(problem, problem.run(s, x), ref, metric)
                except (ScheduleError, FloatingPointError, ValueError):
                    entry[fidelity] = math.inf
            return entry[fidelity]

        # -- the initial population: converter schedules on standard grids, with and without AFS
        def seeds_population():
            pop = []
            names = [base] if timestep_only else list(SCHEDULE_BASELINES)
            for name in names:
                for gname in baseline_grids(ns):
                    grid = _grid_for(gname, ns, nfe, t0, t1)
                    pop.append(builtin(name, nfe, first_usable=first_usable).with_grid(grid))
                    if allow_afs and not timestep_only:
                        grid = _grid_for(gname, ns, nfe + 1, t0, t1)
                        b = builtin(name, nfe + 1)
                        steps = (Step(b.steps[0].prediction, 1),) + b.steps[1:]
                        try:
                            pop.append(SolverSchedule(steps, grid, "t", "zero_x0"))
                        except ScheduleError:
                            pass
            return pop

        def mutate(s: SolverSchedule, boost: float = 1.0) -> SolverSchedule:
            n = s.num_steps
            u = _u_of_t(ns, s.grid[1 : n if final_zero else n], t0, t_end_pos)
            sigma_u = boost * rng.choice(EVOLUTION.grid_step_scales)
            mask = rng.random(len(u)) < EVOLUTION.grid_move_share
            u = np.sort(np.clip(u + mask * rng.normal(0, sigma_u, len(u)), 1e-3, 1 - 1e-3))
            if len(u) and np.any(np.diff(u) < 1e-3):
                u = np.sort(rng.uniform(0.01, 0.99, len(u)))
            inner = _t_of_u(ns, u, t0, t_end_pos)
            if final_zero:
                tail = [0.0]
            else:
                end_u = _u_of_t(ns, s.grid[-1], t0, t_end_pos) + rng.normal(0, EVOLUTION.end_step)
                end_u = float(np.clip(end_u, *EVOLUTION.end_range))
                tail = [float(_t_of_u(ns, end_u, t0, t_end_pos))]
            grid = np.concatenate([[s.grid[0]], inner, tail])
            if timestep_only:
                return SolverSchedule(s.steps, grid, "t", s.afs)
            steps = list(s.steps)
            p = min(EVOLUTION.max_gene_rate, boost * EVOLUTION.genes_per_mutation / n)
            for i, st in enumerate(steps):
                if i == 0 and s.afs != "none":
                    continue
                g = _step_genes(st)
                old = list(g)
                if rng.random() < p:
                    g[0] = "noise" if g[0] == "data" else "data"
                if rng.random() < p:
                    g[1] = int(rng.choice(EVOLUTION.orders, p=EVOLUTION.order_weights))
                if rng.random() < p:
                    g[2] = int(rng.integers(1, 3))
                if rng.random() < 2 * p:
                    g[3] = (
                        float(np.clip(g[3] + rng.normal(0, EVOLUTION.coef_step), *EVOLUTION.coef_range))
                        if rng.random() < EVOLUTION.coef_keep
                        else 0.0
                    )
                if rng.random() < p:
                    g[4] = not g[4]
                if g != old:
                    steps[i] = _make_step(i, n, *g, final_zero, first_usable)
            return SolverSchedule(tuple(steps), grid, "t", s.afs)

        def crossover(a: SolverSchedule, b: SolverSchedule) -> SolverSchedule:
            if a.num_steps != b.num_steps or a.afs != b.afs:
                return a
            steps = (
                a.steps if timestep_only else tuple(x if rng.random() < 0.5 else y for x, y in zip(a.steps, b.steps))
            )
            grid = a.grid if rng.random() < 0.5 else b.grid
            if rng.random() < EVOLUTION.grid_blend:
                w = rng.random()
                ua = _u_of_t(ns, a.grid[1:-1], t0, t_end_pos)
                ub = _u_of_t(ns, b.grid[1:-1], t0, t_end_pos)
                inner = _t_of_u(ns, np.sort(w * ua + (1 - w) * ub), t0, t_end_pos)
                grid = np.concatenate([[a.grid[0]], inner, [a.grid[-1]]])
            return SolverSchedule(steps, grid, "t", a.afs)

        def ranked(fid: str):
            items = [(v[fid], k) for k, v in archive.items() if v[fid] is not None and math.isfinite(v[fid])]
            return sorted(items)

        t_begin = time.time()
        if not archive:
            for s in seeds_population():
                evaluate(s, "low")
        surrogate = _Surrogate(predictor, seed)
        bar = tqdm(range(start_gen, generations), desc=f"S3 search nfe={nfe}", disable=not progress, leave=False)
        gen = start_gen
        for gen in bar:
            if time_budget_s is not None and time.time() - t_begin + elapsed0 > time_budget_s:
                break
            keys = [k for k, v in archive.items() if v["low"] is not None and math.isfinite(v["low"])]
            X = np.stack([_features(sched_of(archive[k]), nfe, ns, t0, t_end_pos) for k in keys])
            y = np.log10(np.array([archive[k]["low"] for k in keys]) + 1e-12)
            surrogate.fit(X, y)
            elite = [k for _, k in ranked("high")[: EVOLUTION.elite]]
            low = [k for _, k in ranked("low")[: EVOLUTION.low_parents] if k not in elite]
            parents = [archive[k] for k in elite + low]
            stall = _stalled(history)
            cands, seen = [], set(archive)
            tries = 0
            while len(cands) < offspring and tries < offspring * 5:
                tries += 1
                pa = sched_of(parents[int(rng.integers(len(parents)))])
                try:
                    boost = 1.0 + EVOLUTION.stall_boost * stall * rng.random()
                    if rng.random() < EVOLUTION.crossover and len(parents) > 1:
                        child = crossover(pa, sched_of(parents[int(rng.integers(len(parents)))]))
                        child = mutate(child, boost) if rng.random() < EVOLUTION.mutate_after_crossover else child
                    else:
                        child = mutate(pa, boost)
                except (ScheduleError, ValueError):
                    continue
                k = _key(child)
                if k in seen:
                    continue
                seen.add(k)
                cands.append(child)
            if not cands:
                break
            pred = surrogate.predict(np.stack([_features(c, nfe, ns, t0, t_end_pos) for c in cands]), rng)
            order = list(np.argsort(pred)[:evaluate_per_generation])
            rest = [i for i in range(len(cands)) if i not in order]
            order += list(rng.choice(rest, size=min(EVOLUTION.random_picks, len(rest)), replace=False)) if rest else []
            got = np.array([evaluate(cands[i], "low") for i in order])
            ok = np.isfinite(got)
            rank_corr = _spearman(pred[order][ok], np.log10(got[ok] + 1e-12)) if ok.sum() > 2 else float("nan")
            promoted = 0
            for _, k in ranked("low"):
                if promoted >= promote:
                    break
                if archive[k]["high"] is None:
                    evaluate(sched_of(archive[k]), "high")
                    promoted += 1
            best_high = ranked("high")[0][0] if ranked("high") else math.inf
            history.append(
                {
                    "generation": gen,
                    "evaluated": len(archive),
                    "best_low": ranked("low")[0][0],
                    "best_high": best_high,
                    "surrogate_rank_corr": rank_corr,
                }
            )
            bar.set_postfix(best=f"{best_high:.4g}", evals=len(archive))
            if checkpoint is not None:
                state = {
                    "config": config,
                    "generation": gen + 1,
                    "seconds": elapsed0 + time.time() - t_begin,
                    "rng": rng.bit_generator.state,
                    "archive": archive,
                    "history": history,
                }
                atomic_write(checkpoint, json.dumps(state))
        bar.close()
        # final: the top low-fidelity ones all checked at high fidelity
        for _, k in ranked("low")[: 3 * promote]:
            evaluate(sched_of(archive[k]), "high")
        best_fit, best_key = ranked("high")[0]
        seconds = elapsed0 + time.time() - t_begin
        best = sched_of(archive[best_key]).with_metadata(
            nfe=nfe,
            model=problem.description,
            guidance_scale=None,
            provenance={
                "method": "S3 evolutionary search with surrogate predictor"
                + (" (timesteps only)" if timestep_only else ""),
                "reference": "arXiv 2312.07243",
                "fitness": {"metric": metric, "value": best_fit, "samples": high_fidelity, "seed": search_seed + 1},
                "low_fidelity": {"samples": low_fidelity, "seed": search_seed},
                "predictor": predictor,
                "generations": gen + 1,
                "evaluations": len(archive),
                "seconds": round(seconds, 2),
                "search_seed": seed,
                "library": "fastsample",
            },
        )
        if out is not None:
            best.save(out)
        return SearchResult(best, best_fit, len(archive), gen + 1, history, seconds)


def report(
    problem: SearchProblem,
    schedule: SolverSchedule,
    seeds=(7, 8, 9, 10),
    n: int = 512,
    metric="rmse",
    solvers=None,
    grid_names=None,
) -> dict:
    """Held-out check: the schedule's fitness on ``seeds`` (not used by the search) and every baseline's."""
    vals = []
    for sd in seeds:
        x, ref = problem.batch(sd, n)
        vals.append(fitness_of(problem, problem.run(schedule, x), ref, metric))
    found = float(np.mean(vals))
    base = evaluate_baselines(problem, schedule.nfe, seeds, n, metric, solvers, grid_names)
    best = base[0]
    return {
        "nfe": schedule.nfe,
        "metric": metric,
        "heldout_seeds": list(seeds),
        "samples_per_seed": n,
        "found": found,
        "best_baseline": best,
        "ratio": found / best["fitness"] if best["fitness"] > 0 else math.inf,
        "improvement": 1.0 - found / best["fitness"] if best["fitness"] > 0 else 0.0,
        "baselines": base,
    }
