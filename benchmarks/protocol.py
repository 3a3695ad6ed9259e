"""The comparison protocol every benchmark script uses (written down in benchmarks/README.md).

(a) Baselines: :func:`vp_roster` / :func:`flow_roster` list Diffusers' schedulers in every variant;
    :func:`set_grid` gives any of them (and any fastsample scheduler) exactly one of our time grids, and
    :func:`vp_grids` / :func:`flow_grids` are every grid a fastsample scheduler gets, plus each Diffusers
    class's pipeline defaults (``PIPELINE_DEFAULT``).
(b) :func:`choose`: a configuration is chosen on ``SELECTION_SEEDS`` and reported on the disjoint
    ``HELDOUT_SEEDS``, with the number of configurations it was chosen from.
(c) :func:`comparison_table`: Markdown whose labels and counts all come from the data.
(d) :func:`interleaved_timing`: the same repeats for every contestant, interleaved, median and spread.
(e) :func:`per_sample_rmse`, :func:`converged_reference`, :func:`bootstrap_ci`, :func:`fd_bootstrap`:
    error against a reference solution of the same noise, and confidence intervals over samples.

Grids are arrays of the ``n`` evaluation points in the unit the scheduler's ``set_timesteps`` takes:
integer training timesteps (int64, decreasing) for VP models, flow sigmas in (0, 1] (float64,
decreasing, unshifted) for flow models. Every run then steps to the class's own final point (sigma = 0,
except Diffusers' DEISMultistep, which ends at the sigma of timestep 0 as shipped).
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    IPNDMScheduler,
    UniPCMultistepScheduler,
)

from fastsample import DEISScheduler
from fastsample._io import atomic_write
from fastsample.core import grids
from fastsample.core.schedules import RectifiedFlow
from fastsample.fid.bootstrap import bootstrap_ci, fd_bootstrap, per_sample_rmse  # noqa: F401 (re-exported)
from fastsample.formats.step_schedule import set_timesteps_kwargs

RESULTS = Path(__file__).resolve().parent / "results"
SELECTION_SEEDS = (0, 1)
HELDOUT_SEEDS = (100, 101)
assert not set(SELECTION_SEEDS) & set(HELDOUT_SEEDS)
PIPELINE_DEFAULT = "pipeline default"


class GridRefused(ValueError):
    """The scheduler cannot run the given grid exactly (it ignores or rewrites it)."""


# --- (a) the baseline roster and the grid each gets ----------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """One Diffusers scheduler variant: ``cls.from_config(config, **options)``."""

    label: str
    cls: type
    options: dict = field(default_factory=dict)

    def make(self, config, **extra):
        return self.cls.from_config(config, **self.options, **extra)


def _lof(label, cls, options):
    return [
        Baseline(f"{label}{'' if lof else ' no-lof'}", cls, {**options, "lower_order_final": lof})
        for lof in (True, False)
    ]


def vp_roster() -> list[Baseline]:
    """Diffusers' VP schedulers in every variant: solver, order, type, ``lower_order_final`` on/off (UniPC also
    ending at sigma_min: Diffusers' UniPC bh1 gives NaN on a last step to sigma = 0).

    DDIM, IPNDM and DEISMultistep cannot take a custom grid from ``set_timesteps`` (see :func:`set_grid`);
    DPM-Solver++ order 1 is DDIM (eta = 0) on any grid.
    """
    out = [Baseline("DDIM", DDIMScheduler, {"set_alpha_to_one": True}), Baseline("IPNDM", IPNDMScheduler)]
    out.append(Baseline("DPM-Solver++ 1 (DDIM)", DPMSolverMultistepScheduler, {"solver_order": 1}))
    for order in (2, 3):
        for st in ("midpoint", "heun"):
            out += _lof(
                f"DPM-Solver++ {order}M {st}", DPMSolverMultistepScheduler, {"solver_order": order, "solver_type": st}
            )
        out += _lof(f"DPM-Solver++ {order}S", DPMSolverSinglestepScheduler, {"solver_order": order})
    for variant in ("bh1", "bh2"):
        for order in (1, 2, 3):
            for final in ("zero", "sigma_min"):  # bh1 (and bh2 without lower_order_final) give NaN at sigma 0
                opts = {"solver_order": order, "solver_type": variant, "final_sigmas_type": final}
                out += _lof(
                    f"UniPC {variant} {order}{' final sigma_min' * (final != 'zero')}", UniPCMultistepScheduler, opts
                )
    for order in (1, 2, 3):
        out += _lof(f"DEISMultistep {order}", DEISMultistepScheduler, {"solver_order": order})
    return out


def flow_roster() -> list[Baseline]:
    """Diffusers' flow-matching schedulers: FlowMatch Euler / Heun, and UniPC and DPM-Solver++ on flow sigmas."""
    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}
    out = [
        Baseline("FlowMatchEuler", FlowMatchEulerDiscreteScheduler),
        Baseline("FlowMatchHeun", FlowMatchHeunDiscreteScheduler),
    ]
    for variant in ("bh1", "bh2"):
        for order in (1, 2, 3):
            out += _lof(
                f"UniPC {variant} {order} (flow)",
                UniPCMultistepScheduler,
                {**flow, "solver_order": order, "solver_type": variant},
            )
    for order in (2, 3):
        out += _lof(f"DPM-Solver++ {order}M (flow)", DPMSolverMultistepScheduler, {**flow, "solver_order": order})
    return out


# Classes whose ``step`` reads the grid only from ``self.timesteps`` / ``self.sigmas`` (set by ``set_timesteps``
# from the same formula for any timesteps), so a grid their ``set_timesteps`` cannot take is given by setting those
# two arrays; tests/test_benchmark_protocol.py checks this reproduces each class's own ``set_timesteps`` exactly.
_STATE_ROUTE = (UniPCMultistepScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler)


def _vp_sigmas(scheduler, timesteps) -> np.ndarray:
    sig = np.array(((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5)
    return np.interp(timesteps, np.arange(len(sig)), sig)


def _state_route(scheduler, grid: np.ndarray, is_flow: bool) -> None:
    scheduler.set_timesteps(len(grid))  # resets the multistep state; keeps the class's own final sigma
    last = float(scheduler.sigmas[-1])
    if is_flow:
        sigmas, ts = grid, grid * scheduler.config.num_train_timesteps
    else:
        sigmas, ts = _vp_sigmas(scheduler, grid), grid
    scheduler.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
    scheduler.timesteps = torch.from_numpy(np.asarray(ts, dtype=np.float64)).to(scheduler.timesteps.dtype)
    scheduler.num_inference_steps = len(grid)


def set_grid(scheduler, grid, is_flow: bool) -> str:
    """Run ``scheduler.set_timesteps`` on exactly ``grid`` (module docstring units); returns the route used.

    Routes: the ``timesteps=`` (VP) / ``sigmas=`` (flow) argument, converted by
    ``fastsample.formats.step_schedule.set_timesteps_kwargs``, where the class takes and honours it; else, for
    the classes in ``_STATE_ROUTE``, the state its own ``set_timesteps`` builds for those timesteps.
    :class:`GridRefused` for any other class, or when the timesteps after the call are not the grid.
    """
    grid = np.asarray(grid, dtype=np.float64 if is_flow else np.int64)
    name = type(scheduler).__name__
    n_train = scheduler.config.num_train_timesteps
    takes = ("sigmas" if is_flow else "timesteps") in inspect.signature(scheduler.set_timesteps).parameters
    # Diffusers' UniPC takes `sigmas` only with flow sigmas (VP: no custom grid argument at all), and
    # DPM-Solver++ builds flow sigmas from num_inference_steps alone.
    if isinstance(scheduler, UniPCMultistepScheduler) and not is_flow:
        takes = False
    if isinstance(scheduler, DPMSolverMultistepScheduler) and is_flow:
        takes = False
    if takes:
        values = np.concatenate([grid, [0.0]]) if is_flow else np.concatenate([(grid + 1.0) / n_train, [0.0]])
        try:
            scheduler.set_timesteps(**set_timesteps_kwargs(scheduler, values, is_flow))
        except (ValueError, TypeError) as e:
            raise GridRefused(f"{name}.set_timesteps refused the grid: {e}") from e
        route = "argument"
    elif isinstance(scheduler, _STATE_ROUTE):
        _state_route(scheduler, grid, is_flow)
        route = "state"
    else:
        raise GridRefused(f"{name} takes no custom grid (its step() hard-codes its own spacing)")
    got = (scheduler.sigmas[:-1] if is_flow else scheduler.timesteps).double().numpy()
    want = grid
    # multi-stage solvers (Heun, RK) add stage points between the grid's: the grid must be among them, in order
    near = np.isclose(got[:, None], want[None, :], rtol=1e-5, atol=1e-3)
    hit = [int(np.argmax(near[:, j])) if near[:, j].any() else -1 for j in range(len(want))]
    same = got.shape == want.shape and bool(np.all(near.diagonal()))
    if not same and (len(got) < len(want) or min(hit) < 0 or np.any(np.diff(hit) <= 0) or hit[0] != 0):
        raise GridRefused(f"{name} ignores the grid: {got.tolist()} instead of {want.tolist()}")
    return route


SPACINGS = ("trailing", "linspace", "leading")
OUR_TIME_GRIDS = ("uniform_t", "quadratic_t", "uniform_lambda", "karras")


def vp_grids(config, n: int) -> dict[str, np.ndarray]:
    """Every VP grid a fastsample scheduler offers for ``n`` steps, as int64 timesteps (a grid whose rounded
    timesteps repeat is left out): Diffusers' spacings and our time grids, read off ``DEISScheduler``."""
    out = {}
    for name in SPACINGS + OUR_TIME_GRIDS:
        kw = {"timestep_spacing": name} if name in SPACINGS else {"time_grid": name}
        s = DEISScheduler.from_config(config, **kw)
        s.set_timesteps(n)
        ts = s.timesteps.double().numpy()
        if np.allclose(ts, np.round(ts)) and len(np.unique(np.round(ts))) == n:
            out[name] = np.round(ts).astype(np.int64)
    return out


def flow_grids(n: int) -> dict[str, np.ndarray]:
    """Flow grids (shift 1) for ``n`` steps, as sigmas: ``RectifiedFlowScheduler``'s default (n equal steps to
    0), quadratic in t to 0 (its ``time_grid='quadratic_t'``), and Diffusers' FlowMatch default
    (``linspace(1, 1/N, n)``, then a step to 0). Karras and log-SNR grids have no finite start on a flow."""
    fs = RectifiedFlow()
    f = FlowMatchEulerDiscreteScheduler()
    f.set_timesteps(n)
    return {
        "uniform_t": grids.flow_shift(fs, n)[:-1],
        "quadratic_t": grids.quadratic_t(fs, n, t_end=0.0)[:-1],
        "FlowMatch default": f.sigmas[:-1].double().numpy(),
    }


def own_grid_options(cls, is_flow: bool) -> dict[str, dict]:
    """Grid options a Diffusers class's own config offers: each timestep spacing (VP), Karras sigmas,
    LU lambdas; ``{"default (own)": {}}`` at least."""
    p = inspect.signature(cls.__init__).parameters
    out = {"default (own)": {}} if is_flow or "timestep_spacing" not in p else {}
    if not is_flow and "timestep_spacing" in p:
        out |= {f"{s} (own)": {"timestep_spacing": s} for s in SPACINGS}
    if "use_karras_sigmas" in p:
        out["karras (own)"] = {"use_karras_sigmas": True}
    if "use_lu_lambdas" in p and not is_flow:
        out["lu lambdas (own)"] = {"use_lu_lambdas": True}
    return out


def configurations(
    make: Callable[..., object],
    nfe: int,
    is_flow: bool,
    grids_for: Callable[[int], Mapping[str, np.ndarray]],
    own: Mapping[str, dict] | None = None,
) -> dict[str, Callable[[], object]]:
    """Every grid configuration of one scheduler variant at a budget of ``nfe`` model calls.

    Each grid of ``grids_for(k)`` given through :func:`set_grid` (refused grids are left out) and each own
    option (``make(**option)``, then ``set_timesteps(k)``), with the largest step count k whose run makes at
    most ``nfe`` calls (one call per entry of ``timesteps``); a configuration whose timesteps and sigmas
    repeat an earlier one's is left out. Values build a fresh scheduler ready to run.
    """

    def fits(build):
        try:
            return len(build().timesteps) <= nfe
        except (GridRefused, ValueError, IndexError):
            return False

    own = own or {}
    out, seen = {}, set()
    for name in list(grids_for(nfe)) + list(own):
        for k in range(nfe, 0, -1):
            if name in own:

                def build(k=k, kw=own[name]):
                    s = make(**kw)
                    s.set_timesteps(k)
                    return s
            else:
                grid = grids_for(k).get(name)
                if grid is None:
                    continue

                def build(grid=grid):
                    s = make()
                    set_grid(s, grid, is_flow)
                    return s

            if fits(build):
                s = build()
                key = (tuple(s.timesteps.tolist()), tuple(getattr(s, "sigmas", torch.zeros(0)).tolist()))
                if key not in seen:  # an own option that repeats one of our grids is one configuration
                    seen.add(key)
                    out[name] = build
                break
    return out


VP_FAMILIES = {  # Diffusers classes by family; IPNDMScheduler runs its own noise schedule, not the model's
    "DDIM": DDIMScheduler,
    "DPM-Solver++ multistep": DPMSolverMultistepScheduler,
    "DPM-Solver++ singlestep": DPMSolverSinglestepScheduler,
    "UniPC": UniPCMultistepScheduler,
    "DEISMultistep": DEISMultistepScheduler,
}
VP_PIPELINE_DEFAULTS = {  # `Class.from_config(pipe.scheduler.config)`: shipped options, lower_order_final included
    "DDIM": DDIMScheduler,
    "DPM-Solver++ 2M": DPMSolverMultistepScheduler,
    "UniPC": UniPCMultistepScheduler,
    "DEISMultistep": DEISMultistepScheduler,
}
OUR_DEIS = [("tab", o) for o in (2, 3, 4)] + [("rhoab", 3), ("logrho", 2), ("logrho", 3), ("ipndm", 3), ("ipndm", 4)]
OUR_DEIS += [("rhork", o) for o in (2, 3, 4)]


def vp_methods(config, nfe: int) -> dict[str, dict[str, Callable[[], object]]]:
    """method -> {configuration label -> scheduler builder} at a budget of ``nfe`` calls, for a VP model whose
    scheduler config is ``config``: each Diffusers family (every variant of :func:`vp_roster` on every grid of
    :func:`vp_grids` it can take and on its own grid options), each at its pipeline defaults, each variant of
    our ``DEISScheduler`` on every grid; "all Diffusers" / "all fastsample DEIS" are the unions of a side."""
    from functools import lru_cache

    grids_for = lru_cache(None)(lambda k: vp_grids(config, k))
    out = {}
    for family, cls in VP_FAMILIES.items():
        cfgs = {}
        for b in (b for b in vp_roster() if b.cls is cls):
            built = configurations(lambda b=b, **kw: b.make(config, **kw), nfe, False, grids_for,
                                   own_grid_options(cls, False))  # fmt: skip
            cfgs |= {f"{b.label}, {g}": f for g, f in built.items()}
        out[f"{family} (diffusers)"] = cfgs
    out["all Diffusers"] = {k: v for c in list(out.values()) for k, v in c.items()}
    for label, cls in VP_PIPELINE_DEFAULTS.items():
        built = configurations(lambda cls=cls, **kw: cls.from_config(config, **kw), nfe, False, lambda k: {},
                               {PIPELINE_DEFAULT: {}})  # fmt: skip
        out[f"{label} (diffusers, {PIPELINE_DEFAULT})"] = built
    ours_all = {}
    for variant in dict.fromkeys(v for v, _ in OUR_DEIS):
        cfgs = {}
        for v, order in (x for x in OUR_DEIS if x[0] == variant):
            for lof in (True, False) if variant != "rhork" else (True,):
                kw = {"deis_variant": v, "solver_order": order, "lower_order_final": lof}
                built = configurations(lambda kw=kw: DEISScheduler.from_config(config, **kw), nfe, False, grids_for)
                cfgs |= {f"{v} {order}{'' if lof else ' no-lof'}, {g}": f for g, f in built.items()}
        out[f"DEIS {variant} (fastsample)"] = cfgs
        ours_all |= cfgs
    out["all fastsample DEIS"] = ours_all
    return out


def sample(scheduler, model: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The Diffusers pipeline loop: ``model(x, timestep)`` then ``step`` for every entry of ``timesteps``."""
    for ts in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, ts) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(model(x_in, float(ts)), ts, x).prev_sample
    return x


# --- (b) selection and held-out seeds ------------------------------------------------------------------


@dataclass
class Choice:
    """A method's configuration chosen on the selection seeds, and its numbers on the held-out seeds."""

    method: str
    config: str
    selection: float
    heldout: float
    count: int
    heldout_values: np.ndarray  # per-sample values on the held-out seeds (for confidence intervals)

    def to_dict(self) -> dict:
        lo, hi = bootstrap_ci(self.heldout_values)
        return {"method": self.method, "config": self.config, "selection": self.selection,
                "heldout": self.heldout, "heldout_ci95": [lo, hi], "count": self.count}  # fmt: skip


def choose(
    method: str,
    configs: Mapping[str, object],
    evaluate: Callable[[object, Sequence[int]], np.ndarray | None],
    selection_seeds: Sequence[int] = SELECTION_SEEDS,
    heldout_seeds: Sequence[int] = HELDOUT_SEEDS,
) -> Choice | None:
    """The configuration with the lowest mean of ``evaluate(config, selection_seeds)`` (per-sample values;
    None: not applicable), evaluated once more on ``heldout_seeds``. None if no configuration applies.
    ``count`` is the number of configurations that gave a finite selection value: what it chose from."""
    if set(selection_seeds) & set(heldout_seeds):
        raise ValueError(f"selection seeds {selection_seeds} and held-out seeds {heldout_seeds} overlap")
    scores = {}
    for key, cfg in configs.items():
        v = evaluate(cfg, selection_seeds)
        if v is not None and np.all(np.isfinite(v)):
            scores[key] = float(np.mean(v))
    if not scores:
        return None
    best = min(scores, key=scores.get)
    held = np.asarray(evaluate(configs[best], heldout_seeds), dtype=np.float64)
    return Choice(method, best, scores[best], float(held.mean()), len(scores), held)


def choose_all(
    configs: Mapping[object, Mapping[str, Mapping[str, object]]],
    evaluate,
    log=print,
    selection_seeds: Sequence[int] = SELECTION_SEEDS,
    heldout_seeds: Sequence[int] = HELDOUT_SEEDS,
) -> dict:
    """:func:`choose` for every column (e.g. NFE) and method of ``configs[column][method][label] = build``;
    ``evaluate(build, seeds)`` runs once per builder and seed set (methods such as "all ..." share builders).
    Returns {(method, column): Choice.to_dict()}."""
    memo = {}

    def cached(build, seeds):
        key = (id(build), tuple(seeds))
        if key not in memo:
            memo[key] = evaluate(build, seeds)
        return memo[key]

    out = {}
    for col, methods in configs.items():
        t0 = time.perf_counter()
        for method, cfgs in methods.items():
            ch = choose(method, cfgs, cached, selection_seeds, heldout_seeds)
            if ch is not None:
                out[method, col] = ch.to_dict()
        log(f"{col}: {len(methods)} methods in {time.perf_counter() - t0:.0f} s")
    return out


# --- (c) tables ----------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3g}"


def comparison_table(
    choices: Mapping[tuple[str, object], dict], columns: Sequence, ratio: tuple[str, str] | None = None
) -> str:
    """Markdown, one row per method (labels: the ``choices`` keys (method, column)), one column per entry of
    ``columns``: held-out value [bootstrap 95% CI] (chosen configuration); a ``count`` column, "chose from N
    configurations" (the range over the columns); with ``ratio = (a, b)`` a last row of a's / b's held-out value."""
    methods = list(dict.fromkeys(m for m, _ in choices))
    lines = ["| method | count | " + " | ".join(str(c) for c in columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for m in methods:
        counts = [choices[m, c]["count"] for c in columns if (m, c) in choices]
        cnt = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
        cells = []
        for c in columns:
            d = choices.get((m, c))
            cells.append("-" if d is None else f"{_fmt(d['heldout'])} [{_fmt(d['heldout_ci95'][0])}, "
                         f"{_fmt(d['heldout_ci95'][1])}] ({d['config']})")  # fmt: skip
        lines.append(f"| {m} | chose from {cnt} | " + " | ".join(cells) + " |")
    if ratio:
        a, b = ratio
        cells = [_fmt(choices[a, c]["heldout"] / choices[b, c]["heldout"]) if (a, c) in choices and (b, c) in choices
                 else "-" for c in columns]  # fmt: skip
        lines.append(f"| ratio {a} / {b} | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ratios(choices: Mapping[tuple[str, object], dict], columns: Sequence, a: str, b: str) -> dict:
    """Per column: held-out value of method ``a`` / method ``b`` (for README quotes)."""
    return {
        c: choices[a, c]["heldout"] / choices[b, c]["heldout"]
        for c in columns
        if (a, c) in choices and (b, c) in choices
    }


def write_results(name: str, data: dict, markdown: str) -> None:
    """benchmarks/results/<name>.json and <name>.md, each written atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / f"{name}.json", json.dumps(data, indent=1, default=_jsonable) + "\n")
    atomic_write(RESULTS / f"{name}.md", markdown)


def replace_readme_block(begin: str, end: str, text: str) -> None:
    """Replace README.md's lines between the markers ``begin`` and ``end`` (both must be there) with ``text``."""
    path = RESULTS.parents[1] / "README.md"
    readme = path.read_text()
    a, b = readme.find(begin), readme.find(end)
    if a < 0 or b < a:
        raise SystemExit(f"{path}: the markers {begin!r} ... {end!r} are missing")
    atomic_write(path, readme[: a + len(begin)] + "\n" + text + "\n" + readme[b:])


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


# --- (d) timing ----------------------------------------------------------------------------------------


def interleaved_timing(contestants: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict:
    """Time each callable ``repeats`` times, interleaved (A B A B ...) after ``warmup`` untimed rounds.

    Returns name -> {"median", "min", "max", "q1", "q3", "repeats", "seconds"} (seconds per call)."""
    for _ in range(warmup):
        for fn in contestants.values():
            fn()
    times = {k: [] for k in contestants}
    for _ in range(repeats):
        for k, fn in contestants.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k, v in times.items():
        a = np.asarray(v)
        out[k] = {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()),
                  "q1": float(np.quantile(a, 0.25)), "q3": float(np.quantile(a, 0.75)), "repeats": len(a),
                  "seconds": a.tolist()}  # fmt: skip
    return out


# --- (e) error against a reference, confidence intervals (per_sample_rmse, bootstrap_ci and fd_bootstrap:
# fastsample.fid.bootstrap, shared with `fastsample sweep`) ---------------------------------------------


def converged_reference(solve: Callable[[int], torch.Tensor], steps: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """The reference ``solve(steps[1])`` and how far it moved from ``solve(steps[0])`` (mean per-sample RMSE):
    the report states this number beside the smallest method error it is compared with."""
    a, b = solve(steps[0]), solve(steps[1])
    change = float(per_sample_rmse(a, b).mean())
    return b, {"steps": list(steps), "mean_rmse_between": change}
