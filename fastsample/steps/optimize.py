"""Optimised time steps for any model and solver (GITS, Chen et al., ICML 2024, arXiv 2405.11326).

Given a model ``model_fn(x, t, **kwargs)`` (our notation: continuous t in (0, 1], output of
``prediction_type``), a solver (a fastsample or Diffusers scheduler, run through its real
``set_timesteps`` and ``step`` loop), an NFE and a set of conditions, find the n = NFE / stages
steps that minimise the final error against a high-accuracy teacher, over all the conditions
(per model, not per prompt):

1. **Teacher.** For each unit (condition, seed; a batch of ``batch_size`` noises) DPM-Solver++(3M)
   (:class:`~fastsample.solvers.flow.ExpMultistepSolver`) integrates the fine grid (``fine_steps`` = M
   steps, each cut into ``teacher_substeps`` equal steps in t), recording the teacher state x*_j and the
   model output at every fine point j, and the end state.
2. **Cost.** C[i, j] (i < j) is the RMS error of one first-order step (DDIM in prediction form,
   x' = alpha_j x0_i + sigma_j eps_i) from the teacher state at fine point i to fine point j, RMS over a
   condition's seeds, then the mean over conditions. It reuses the recorded outputs: no model call.
3. **Dynamic programming.** The n-step path from fine point 0 to M with the least summed cost.
   *Multistep history:* the cost is the first-order local error from the teacher state, which ignores the
   history a multistep (or multistage) solver carries; the true solver enters in steps 4 and 5.
4. **Start.** The DP path and the solver's fixed grids (:func:`fixed_grids`) are run with the real
   solver on the selection units; the one with the least selection error is the start. Error
   (:func:`combine`): the per-sample RMSE of the final samples against the teacher's end states, averaged
   over the samples and then over the conditions. (The RMS over all samples is reported alongside; a few
   samples whose trajectory changes mode dominate it, so it is too noisy to search on.)
5. **Refinement.** Nelder-Mead on the interior points' positions (in fine-grid steps, through a softmax so
   every candidate is an ordered grid; VP points snapped to training timesteps) on the real solver's
   selection error, restarted from the best grid with a fresh, narrower simplex while it improves (the
   snapped objective has plateaus on which one run stops early). The start is evaluated first and the
   best grid evaluated is kept, so the selection error is never worse than the start's.

Flow models: grids are in *unshifted* time (diffusers' ``sigmas`` before ``shift`` / ``mu``); each
condition's ``mu`` (Flux) or the static ``flow_shift`` (SD3) maps them to model time, so one schedule is
optimised over, and serves, several resolutions. Held-out errors (:func:`heldout_report`) use seeds and
conditions not used in the search. Teacher units can be split over processes (``rank``/``world``) and
are checkpointed, with the cost matrix, in a folder whose fingerprint must match the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .._io import atomic_path, atomic_write
from ..core import grids
from ..core.parameterization import check_prediction_type
from ..core.schedules import DiscreteVP, RectifiedFlow, schedule_for_config
from ..formats.step_schedule import StepSchedule, set_timesteps_kwargs
from ..solvers.multistep import ExpMultistepSolver
from ..solvers.sampling import observe
from ..solvers.sampling import sample as run_plan

__all__ = [
    "Condition",
    "StepProblem",
    "SchedulerRunner",
    "CheckpointMismatch",
    "fixed_grids",
    "compute_teachers",
    "cost_matrix",
    "dp_path",
    "refine",
    "optimize",
    "heldout_report",
    "optimize_steps",
    "unit_errors",
    "combine",
]

AYS_TABLE = "StableDiffusionTimesteps"  # diffusers' AysSchedules (Sabour et al., arXiv 2404.14507)


class CheckpointMismatch(ValueError):
    """A checkpoint folder made for other inputs (model, conditions, seeds or settings)."""


@dataclass(frozen=True)
class Condition:
    """One condition: the sample ``shape`` (without batch), the Flux ``mu`` (None: static shift), and the
    model's keyword arguments (class labels, prompt embeddings; a leading dimension of 1 or a scalar is
    repeated over the batch)."""

    shape: tuple
    mu: float | None = None
    kwargs: dict = field(default_factory=dict)
    name: str = ""

    def describe(self) -> dict:
        kw = {k: (v.tolist() if torch.is_tensor(v) and v.numel() <= 16 else _short(v)) for k, v in self.kwargs.items()}
        return {"name": self.name, "shape": list(self.shape), "mu": self.mu, "kwargs": kw}

    def batch_kwargs(self, n: int) -> dict:
        out = {}
        for k, v in self.kwargs.items():
            if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == 1:
                v = v.expand(n, *v.shape[1:])
            elif isinstance(v, (int, float)) or (torch.is_tensor(v) and v.ndim == 0):
                v = torch.full((n,), v, dtype=torch.long if isinstance(v, int) else torch.float32)
            out[k] = v
        return out


def _short(v):
    if torch.is_tensor(v):
        return {"shape": list(v.shape), "sha256": hashlib.sha256(v.detach().cpu().numpy().tobytes()).hexdigest()[:16]}
    return v


class _Counted:
    """``model_fn`` with a count of calls and of samples evaluated."""

    def __init__(self, fn):
        self.fn, self.calls, self.samples = fn, 0, 0

    def __call__(self, x, t, **kw):
        self.calls += 1
        self.samples += len(x)
        return self.fn(x, t, **kw)


@dataclass
class StepProblem:
    """What the optimiser works on (see the module docstring).

    Args:
        model_fn: ``f(x, t, **condition.kwargs) -> output`` of ``prediction_type``; x (B, *shape), t float.
        noise_schedule: :class:`~fastsample.core.schedules.DiscreteVP` or ``RectifiedFlow``.
        conditions, seeds: the selection set (each condition with each seed: one batch of noise).
        heldout_seeds: seeds for the held-out report (disjoint from ``seeds``).
        heldout_conditions: conditions for the held-out report (default: ``conditions``).
        flow_shift, time_shift_type: the static shift (used where a condition has no ``mu``) and the form.
        fine_steps, teacher_substeps: M and the teacher's steps per fine step.
        description: model identity (name, fingerprint) for the file.
    """

    model_fn: Callable
    noise_schedule: object
    prediction_type: str
    conditions: Sequence[Condition]
    seeds: Sequence[int]
    heldout_seeds: Sequence[int] = ()
    heldout_conditions: Sequence[Condition] | None = None
    batch_size: int = 16
    flow_shift: float = 1.0
    time_shift_type: str = "exponential"
    fine_steps: int = 64
    teacher_substeps: int = 2
    dtype: torch.dtype = torch.float32
    description: dict = field(default_factory=dict)

    def __post_init__(self):
        s = self.noise_schedule
        if not isinstance(s, (DiscreteVP, RectifiedFlow)):
            raise ValueError(
                f"step schedules support DiscreteVP and RectifiedFlow noise schedules, got {type(s).__name__}"
            )
        self.prediction_type = check_prediction_type(self.prediction_type, s.is_flow)
        self.conditions = list(self.conditions)
        self.heldout_conditions = list(self.conditions if self.heldout_conditions is None else self.heldout_conditions)
        self.seeds, self.heldout_seeds = [int(v) for v in self.seeds], [int(v) for v in self.heldout_seeds]
        if not self.conditions or not self.seeds:
            raise ValueError("need at least one condition and one selection seed")
        overlap = set(self.seeds) & set(self.heldout_seeds)
        if overlap:
            raise ValueError(f"held-out seeds must differ from the selection seeds; both have {sorted(overlap)}")
        for c in self.conditions + self.heldout_conditions:
            if c.mu is not None and not s.is_flow:
                raise ValueError(f"condition {c.name or c.shape}: `mu` applies to flow models only")
        if self.fine_steps < 2 or self.teacher_substeps < 1:
            raise ValueError("fine_steps must be >= 2 and teacher_substeps >= 1")
        self.model_fn = self.model_fn if isinstance(self.model_fn, _Counted) else _Counted(self.model_fn)

    @property
    def is_flow(self) -> bool:
        return self.noise_schedule.is_flow

    @property
    def unit(self) -> str:
        return "flow_sigma" if self.is_flow else "t"

    def model_time(self, grid, cond: Condition) -> np.ndarray:
        """Model times of a grid in file units: flow grids shifted once (``mu`` or the static shift)."""
        g = np.asarray(grid, dtype=np.float64)
        if not self.is_flow:
            return g
        if cond.mu is not None:
            return grids.shift_sigmas(g, mu=cond.mu, time_shift_type=self.time_shift_type)
        return grids.shift_sigmas(g, shift=self.flow_shift)

    def snap(self, grid) -> np.ndarray | None:
        """VP: interior points onto training timesteps (None if two coincide); flow: unchanged."""
        g = np.asarray(grid, dtype=np.float64).copy()
        if self.is_flow:
            return g if np.all(np.diff(g) < 0) else None
        s = self.noise_schedule
        g[:-1] = s.t_of_timestep(np.clip(np.round(s.timestep(g[:-1])), 0, s.num_train_timesteps - 1))
        return g if np.all(np.diff(g) < 0) else None

    def fine_grid(self) -> np.ndarray:
        """M + 1 fine points in file units: VP uniform in lambda on training timesteps, flow uniform in t."""
        m = self.fine_steps
        if self.is_flow:
            return np.linspace(1.0, 0.0, m + 1)
        s = self.noise_schedule
        g = grids.uniform_lambda(s, m - 1, t_start=s.t_max, t_end=s.t_min, final_zero=True)
        g[:-1] = s.t_of_timestep(np.round(s.timestep(g[:-1])))
        return np.concatenate([np.unique(g[:-1])[::-1], [0.0]])

    def noise(self, cond: Condition, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn((self.batch_size, *cond.shape), generator=g, dtype=torch.float32).to(self.dtype)

    def units(self, split: str) -> list[tuple[int, int]]:
        conds, seeds = (
            (self.conditions, self.seeds) if split == "selection" else (self.heldout_conditions, self.heldout_seeds)
        )
        return [(c, s) for c in range(len(conds)) for s in seeds]

    def condition(self, split: str, c: int) -> Condition:
        return (self.conditions if split == "selection" else self.heldout_conditions)[c]

    def fingerprint(self) -> str:
        """Hash of everything the teachers and costs depend on, including the model's output on a probe."""
        cond = self.conditions[0]
        g = torch.Generator().manual_seed(1234)
        x = torch.randn((2, *cond.shape), generator=g).to(self.dtype)
        t = float(self.model_time(np.array([0.5]), cond)[0])
        with torch.no_grad():
            probe = self.model_fn.fn(x, t, **cond.batch_kwargs(2)).double().cpu().numpy()
        d = {
            "description": self.description,
            "schedule": self.noise_schedule.describe(),
            "prediction_type": self.prediction_type,
            "conditions": [c.describe() for c in self.conditions],
            "heldout_conditions": [c.describe() for c in self.heldout_conditions],
            "seeds": self.seeds,
            "heldout_seeds": self.heldout_seeds,
            "batch_size": self.batch_size,
            "flow": [self.flow_shift, self.time_shift_type],
            "fine": [self.fine_steps, self.teacher_substeps],
            "dtype": str(self.dtype),
            "probe": np.round(probe, 4).tolist(),
        }
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def settings(self) -> dict:
        return {
            "conditions": [c.describe() for c in self.conditions],
            "seeds": self.seeds,
            "heldout_conditions": [c.describe() for c in self.heldout_conditions],
            "heldout_seeds": self.heldout_seeds,
            "batch_size": self.batch_size,
        }


# --- the real solver ---------------------------------------------------------------------------------


class SchedulerRunner:
    """Runs a grid with a scheduler's real ``set_timesteps`` (``timesteps=`` / ``sigmas=``, ``mu``) and step loop.

    Works for fastsample and Diffusers schedulers alike; the model sees the time of the scheduler's own
    timestep label (as in a pipeline). ``stages``: model calls per step (``scheduler.order``).
    """

    def __init__(self, scheduler, problem: StepProblem):
        self.scheduler, self.problem = scheduler, problem
        c = scheduler.config
        name = type(scheduler).__name__
        sched, ptype = schedule_for_config(c)
        if sched.is_flow != problem.is_flow:
            raise ValueError(f"{name} is configured for a {'flow' if sched.is_flow else 'VP'} model")
        if not sched.is_flow and not np.allclose(
            sched.alphas_cumprod, problem.noise_schedule.alphas_cumprod, rtol=1e-6
        ):
            raise ValueError(
                f"{name}'s noise schedule (betas) differs from the model's; build it from the model's config"
            )
        if ptype != problem.prediction_type:
            raise ValueError(f"{name} expects {ptype!r} outputs but the model gives {problem.prediction_type!r}")
        self.dynamic = bool(c.get("use_dynamic_shifting", False))
        if problem.is_flow and not self.dynamic:
            # ours and UniPC: flow_shift (with use_flow_sigmas); FlowMatch schedulers: shift
            shift = float(c.get("flow_shift", 1.0) if "use_flow_sigmas" in c else c.get("shift", 1.0))
            if not math.isclose(shift, problem.flow_shift):
                raise ValueError(f"{type(scheduler).__name__} shifts by {shift}, the problem by {problem.flow_shift}")
        self.stages = int(getattr(scheduler, "order", 1))

    def describe(self) -> dict:
        cfg = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        return {"class": type(self.scheduler).__name__, "module": type(self.scheduler).__module__, "config": cfg}

    def steps_for(self, nfe: int) -> int:
        if nfe < 1:
            raise ValueError(f"NFE must be >= 1, got {nfe}")
        if nfe % self.stages:
            raise ValueError(
                f"NFE {nfe} is not a multiple of {type(self.scheduler).__name__}'s {self.stages} calls per step"
            )
        return nfe // self.stages

    def _mu_kwargs(self, cond: Condition) -> dict:
        sch = self.scheduler
        if self.dynamic:
            if cond.mu is None:
                raise ValueError(f"{type(sch).__name__} uses dynamic shifting; condition {cond.name!r} has no mu")
            return {"mu": cond.mu}
        if cond.mu is not None:
            raise ValueError(f"condition {cond.name!r} has mu but {type(sch).__name__} does not use dynamic shifting")
        return {}

    @torch.no_grad()
    def run(self, grid, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Sample from noise x on ``grid`` (file units), through ``set_timesteps(timesteps= / sigmas=)``."""
        p, sch = self.problem, self.scheduler
        kw = set_timesteps_kwargs(sch, np.asarray(grid, dtype=np.float64), p.is_flow)
        sch.set_timesteps(**kw, **self._mu_kwargs(cond))
        first = float(p.model_time(grid[:1], cond)[0])
        got = float(p.noise_schedule.t_of_timestep(float(sch.timesteps[0])))
        if abs(got - first) > 1.5 / p.noise_schedule.num_train_timesteps:
            raise RuntimeError(f"{type(sch).__name__} starts at t = {got:.6f}, not at the grid's {first:.6f}")
        return self._loop(x, cond)

    @torch.no_grad()
    def run_steps(self, num_inference_steps: int, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Sample from noise x with the scheduler's own grid: ``set_timesteps(num_inference_steps)``."""
        self.scheduler.set_timesteps(num_inference_steps, **self._mu_kwargs(cond))
        return self._loop(x, cond)

    def _loop(self, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        """A pipeline's denoising loop over the scheduler's timesteps (the model sees each label's time)."""
        p, sch = self.problem, self.scheduler
        extra = cond.batch_kwargs(len(x))
        x = x * float(getattr(sch, "init_noise_sigma", 1.0))
        scale = getattr(sch, "scale_model_input", None)  # FlowMatch schedulers have none
        for label in sch.timesteps:
            t = float(p.noise_schedule.t_of_timestep(float(label)))
            out = p.model_fn(x if scale is None else scale(x, label), t, **extra)
            x = sch.step(out, label, x, return_dict=False)[0]
        return x


# --- fixed grids -------------------------------------------------------------------------------------


def fixed_grids(problem: StepProblem, n: int) -> dict:
    """The standard grids for n steps in file units: trailing (VP) / uniform (flow), Karras, log-SNR,
    quadratic, and AYS-style (Sabour et al., arXiv 2404.14507): the 10-step SD 1.5 table of diffusers'
    ``AysSchedules`` interpolated log-linearly in sigma_ve. Grids with colliding timesteps are left out."""
    from diffusers.schedulers.scheduling_utils import AysSchedules

    s = problem.noise_schedule
    t_end = s.t_min if not s.is_flow else 1.0 / s.num_train_timesteps
    t_hi = s.t_max if not s.is_flow else 1.0 - 1.0 / s.num_train_timesteps
    kw = dict(t_start=t_hi, t_end=t_end, final_zero=True)
    out = {
        ("uniform" if s.is_flow else "trailing"): (
            grids.flow_shift(s, n) if s.is_flow else grids.diffusers_spacing(s, n, "trailing")
        ),
        "karras": grids.karras(s, n, **kw) if n > 1 else np.array([s.t_max, 0.0]),
        "logSNR": grids.uniform_lambda(s, n, **kw) if n > 1 else np.array([s.t_max, 0.0]),
        "quadratic": grids.quadratic_t(s, n, **kw) if n > 1 else np.array([s.t_max, 0.0]),
    }
    table = np.asarray(AysSchedules[AYS_TABLE], dtype=np.float64)
    ve = np.log(s.sigma_ve(np.clip(s.t_of_timestep(table), None, t_hi)))
    ve_n = np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(ve)), ve))
    out["ays"] = np.concatenate([s.t_of_sigma_ve(ve_n), [0.0]])
    result = {}
    for name, g in out.items():
        g = np.asarray(g, dtype=np.float64).copy()
        g[0] = s.t_max
        g = problem.snap(g)
        if g is not None:
            result[name] = g
    return result


# --- teacher and cost ----------------------------------------------------------------------------------


def _atomic_torch_save(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _open_checkpoint(problem: StepProblem, folder) -> str:
    """The checkpoint folder for this problem; CheckpointMismatch if it holds another problem's work."""
    os.makedirs(folder, exist_ok=True)
    fp = problem.fingerprint()
    marker = os.path.join(folder, "fingerprint.json")
    if os.path.exists(marker):
        with open(marker) as f:
            other = json.load(f).get("fingerprint")
        if other != fp:
            raise CheckpointMismatch(
                f"checkpoint {folder} was made for other inputs (fingerprint {other}, these inputs {fp}); "
                "use another checkpoint folder or delete it"
            )
    else:
        atomic_write(marker, json.dumps({"fingerprint": fp}))
    return fp


@torch.no_grad()
def _teacher(problem: StepProblem, split: str, c: int, seed: int) -> dict:
    """Teacher states and model outputs at the fine points (selection) or the end state only (held-out)."""
    cond = problem.condition(split, c)
    times = problem.model_time(problem.fine_grid(), cond)
    k = problem.teacher_substeps
    dense = np.concatenate([np.linspace(a, b, k + 1)[:-1] for a, b in zip(times[:-1], times[1:])] + [times[-1:]])
    extra = cond.batch_kwargs(problem.batch_size)
    xs, outs = [], []

    def record(i, t, x, out):
        if i % k == 0:
            xs.append(x.detach().clone())
            outs.append(out.detach().clone())

    fn = problem.model_fn

    def model(x, t):
        return fn(x, t, **extra)

    x_end = run_plan(
        model,
        problem.noise(cond, seed),
        problem.noise_schedule,
        ExpMultistepSolver(3),
        dense,
        problem.prediction_type,
        callback=record if split == "selection" else None,
    )
    if split != "selection":
        return {"end": x_end}
    s = problem.noise_schedule
    x0, eps = zip(*(observe(o, x, t, s, problem.prediction_type) for o, x, t in zip(outs, xs, times[:-1])))
    return {"states": torch.stack(xs + [x_end]), "x0": torch.stack(x0), "eps": torch.stack(eps)}


def compute_teachers(
    problem: StepProblem, checkpoint=None, rank: int = 0, world: int = 1, progress: bool = False
) -> dict:
    """Teacher results for every selection and held-out unit: ``{(split, c, seed): dict}``.

    With ``world`` > 1 each process computes units ``rank, rank + world, ...`` into ``checkpoint`` (which
    is then required) and returns what it computed; call again with ``world=1`` after a barrier to load all.
    """
    if world > 1 and checkpoint is None:
        raise ValueError("several processes share their teacher trajectories through a checkpoint folder")
    if checkpoint is not None:
        _open_checkpoint(problem, checkpoint)
    todo = [(split, c, s) for split in ("selection", "heldout") for c, s in problem.units(split)]
    mine = todo[rank::world]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(mine), desc=f"teacher trajectories (rank {rank})" if world > 1 else "teacher", unit="batch"
        )
    out = {}
    for key in mine:
        path = None if checkpoint is None else os.path.join(checkpoint, "teacher_{}_{}_{}.pt".format(*key))
        if path is not None and os.path.exists(path):
            out[key] = torch.load(path, weights_only=True)
        else:
            out[key] = _teacher(problem, *key)
            if path is not None:
                _atomic_torch_save(out[key], path)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def cost_matrix(problem: StepProblem, teachers: dict, checkpoint=None) -> np.ndarray:
    """C (M + 1, M + 1) float64: C[i, j] for i < j (inf elsewhere), see the module docstring."""
    path = None if checkpoint is None else os.path.join(checkpoint, "cost.pt")
    if path is not None and os.path.exists(path):
        return torch.load(path, weights_only=True).numpy()
    fine = problem.fine_grid()
    m = len(fine) - 1
    s = problem.noise_schedule
    total = np.zeros((m + 1, m + 1))
    for c, cond in enumerate(problem.conditions):
        times = problem.model_time(fine, cond)
        a = torch.as_tensor(s.alpha(times), dtype=torch.float64)
        sg = torch.as_tensor(s.sigma(times), dtype=torch.float64)
        sse = np.zeros((m + 1, m + 1))
        count = 0
        for seed in problem.seeds:
            tr = teachers[("selection", c, seed)]
            states = tr["states"].double().flatten(1)
            x0, eps = tr["x0"].double().flatten(1), tr["eps"].double().flatten(1)
            count += states.shape[1]
            for i in range(m):
                pred = a[i + 1 :, None] * x0[i] + sg[i + 1 :, None] * eps[i]
                sse[i, i + 1 :] += ((pred - states[i + 1 :]) ** 2).sum(1).numpy()
        total += np.sqrt(sse / count)
    cost = total / len(problem.conditions)
    cost[np.tril_indices(m + 1)] = np.inf
    if path is not None:
        _atomic_torch_save(torch.from_numpy(cost), path)
    return cost


def dp_path(cost: np.ndarray, n: int) -> np.ndarray:
    """Indices 0 = i_0 < ... < i_n = M of the n-step path with the least summed cost (int64 (n + 1,))."""
    m = cost.shape[0] - 1
    if not 1 <= n <= m:
        raise ValueError(f"{n} steps do not fit on a fine grid of {m} steps; raise fine_steps")
    best = np.full((n + 1, m + 1), np.inf)
    arg = np.zeros((n + 1, m + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for k in range(1, n + 1):
        tot = best[k - 1][:, None] + cost  # (from, to)
        arg[k] = np.argmin(tot, axis=0)
        best[k] = tot[arg[k], np.arange(m + 1)]
    path = [m]
    for k in range(n, 0, -1):
        path.append(int(arg[k, path[-1]]))
    return np.asarray(path[::-1], dtype=np.int64)


# --- selection error and refinement -------------------------------------------------------------------


def unit_errors(problem: StepProblem, sample_fn: Callable, teachers: dict, split: str) -> dict:
    """{(c, seed): per-sample RMS errors (float64 (batch,))} of ``sample_fn(noise, condition)``'s end states
    against the teacher's, on the selection or held-out units. A non-finite sample scores inf."""
    out = {}
    conds = problem.conditions if split == "selection" else problem.heldout_conditions
    seeds = problem.seeds if split == "selection" else problem.heldout_seeds
    for c, cond in enumerate(conds):
        for seed in seeds:
            tr = teachers[(split, c, seed)]
            end = tr["states"][-1] if split == "selection" else tr["end"]
            x = sample_fn(problem.noise(cond, seed), cond)
            err = ((x.double() - end.double()) ** 2).flatten(1).mean(1).sqrt()
            out[(c, seed)] = torch.where(torch.isfinite(err), err, torch.inf).numpy()
    return out


def combine(units: dict) -> dict:
    """``{"mean": ..., "rms": ...}``: the mean over conditions of the mean (resp. RMS) of the per-sample
    RMS errors over that condition's seeds. ``mean`` (the per-sample RMSE) is the error the search
    minimises and reports; ``rms`` (the RMS over all samples) is dominated by the few samples whose
    trajectory changes mode, so it is reported alongside."""
    per = {}
    for (c, _), err in units.items():
        per.setdefault(c, []).append(err)
    per = [np.concatenate(v) for v in per.values()]
    return {
        "mean": float(np.mean([e.mean() for e in per])),
        "rms": float(np.mean([math.sqrt(float((e**2).mean())) for e in per])),
    }


def _error(problem: StepProblem, runner: SchedulerRunner, grid, teachers: dict, split: str) -> dict:
    return combine(unit_errors(problem, lambda x, cond: runner.run(grid, x, cond), teachers, split))


def refine(problem: StepProblem, error: Callable, grid, max_evals: int, progress=None) -> tuple[np.ndarray, float, int]:
    """Gradient-free search (Nelder-Mead) from ``grid`` on ``error(grid) -> float``: (grid, error, evaluations).

    The interior points are placed by their position q in fine-grid steps (0 = start, M = end; times
    interpolated between fine points): q = cumsum(M softmax(z))[:-1] for z in R^n, so every z is an
    ordered grid. VP grids are snapped to training timesteps (collisions score inf). The best grid
    evaluated is returned, and the start is evaluated first, so the result is never worse than it.
    """
    from scipy.optimize import minimize

    fine = problem.fine_grid()
    m = len(fine) - 1
    idx = np.arange(m + 1, dtype=np.float64)
    start = np.asarray(grid, dtype=np.float64)
    cache = {}
    state = {"best": start, "err": math.inf, "evals": 0}

    def to_grid(z):
        w = np.exp(z - z.max())
        qq = np.concatenate([[0.0], np.cumsum(w / w.sum() * m)])
        qq[-1] = m
        g = np.interp(qq, idx, fine)
        g[0], g[-1] = start[0], start[-1]
        return problem.snap(g)

    def objective(z):
        g = to_grid(z)
        if g is None:
            return math.inf
        key = tuple(g)
        if key not in cache:
            if state["evals"] >= max_evals:
                return math.inf
            cache[key] = error(g)
            state["evals"] += 1
            if cache[key] < state["err"]:
                state["best"], state["err"] = g, cache[key]
            if progress is not None:
                progress(state["evals"], state["err"])
        return cache[key]

    def z_of(g):
        q = np.interp(g[::-1], fine[::-1], idx[::-1])[::-1]
        q[0], q[-1] = 0.0, float(m)
        return np.log(np.maximum(np.diff(q), 1e-3))

    cache[tuple(start)] = state["err"] = error(start)
    state["evals"] = 1
    if len(start) > 2:
        width, stalled = 0.5, 0
        while state["evals"] < max_evals and stalled < 3:  # restarts from the best grid with a fresh simplex
            before, z0 = state["err"], z_of(state["best"])
            simplex = np.vstack([z0] + [z0 + width * np.eye(len(z0))[i] for i in range(len(z0))])
            minimize(
                objective,
                z0,
                method="Nelder-Mead",
                options={"initial_simplex": simplex, "maxfev": 4 * max_evals, "xatol": 1e-3, "fatol": 0.0},
            )
            stalled = stalled + 1 if state["err"] >= before else 0
            width = 0.5 if width < 0.1 else width / 2
    return state["best"], state["err"], state["evals"]


@dataclass
class StepResult:
    """The optimised grid (file units) and how it was found."""

    grid: np.ndarray
    nfe: int
    selection_error: float
    start: str
    start_errors: dict
    dp_grid: np.ndarray
    evaluations: int
    model_calls: int
    model_samples: int
    seconds: float


def optimize(
    problem: StepProblem,
    runner: SchedulerRunner,
    nfe: int,
    teachers: dict | None = None,
    checkpoint=None,
    max_evals: int = 60,
    progress: bool = False,
) -> StepResult:
    """Steps 1-5 of the module docstring for one NFE; ``teachers`` from :func:`compute_teachers` (or computed)."""
    t0 = time.perf_counter()
    calls0, samples0 = problem.model_fn.calls, problem.model_fn.samples
    n = runner.steps_for(nfe)
    if teachers is None:
        teachers = compute_teachers(problem, checkpoint, progress=progress)
    cost = cost_matrix(problem, teachers, checkpoint)
    fine = problem.fine_grid()
    dp = fine[dp_path(cost, n)]

    starts = {"dp": dp, **fixed_grids(problem, n)}
    start_errors = {name: _error(problem, runner, g, teachers, "selection")["mean"] for name, g in starts.items()}
    start = min(start_errors, key=start_errors.get)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_evals, desc=f"refining NFE {nfe}", unit="run")

    def tick(evals, err):
        bar.update(1)
        bar.set_postfix(selection_error=f"{err:.4g}")

    def error(g):
        return _error(problem, runner, g, teachers, "selection")["mean"]

    grid, err, evals = refine(problem, error, starts[start], max_evals, tick if bar is not None else None)
    if bar is not None:
        bar.close()
    return StepResult(
        grid,
        nfe,
        err,
        start,
        start_errors,
        dp,
        evals + len(starts),
        problem.model_fn.calls - calls0,
        problem.model_fn.samples - samples0,
        time.perf_counter() - t0,
    )


def heldout_report(problem: StepProblem, runner: SchedulerRunner, result: StepResult, teachers: dict) -> dict:
    """Held-out errors (seeds and conditions not searched) of the optimised grid and of every fixed grid:
    the per-sample RMSE (:func:`combine`'s ``mean``) and, under ``rms``, the RMS over all samples."""
    n = runner.steps_for(result.nfe)
    errs = {name: _error(problem, runner, g, teachers, "heldout") for name, g in fixed_grids(problem, n).items()}
    ours = _error(problem, runner, result.grid, teachers, "heldout")
    fixed = {name: e["mean"] for name, e in errs.items()}
    best = min(fixed, key=fixed.get)
    return {
        "selection": {"optimised": result.selection_error, "starts": result.start_errors, "start": result.start},
        "heldout": {
            "optimised": ours["mean"],
            "fixed": fixed,
            "best_fixed": best,
            "ratio_to_best_fixed": ours["mean"] / fixed[best],
            "rms": {"optimised": ours["rms"], "fixed": {name: e["rms"] for name, e in errs.items()}},
        },
    }


def optimize_steps(
    problem: StepProblem,
    scheduler,
    nfe: int,
    checkpoint=None,
    max_evals: int = 60,
    progress: bool = False,
) -> StepSchedule:
    """The whole method for one scheduler and NFE: a :class:`StepSchedule` with its held-out report."""
    runner = SchedulerRunner(scheduler, problem)
    teachers = compute_teachers(problem, checkpoint, progress=progress)
    result = optimize(problem, runner, nfe, teachers, checkpoint, max_evals, progress)
    return to_schedule(problem, runner, result, teachers)


def teacher_model_calls(problem: StepProblem, split: str = "selection") -> int:
    """Model calls (batches of ``batch_size``) of the teacher trajectories of one split."""
    return len(problem.units(split)) * (len(problem.fine_grid()) - 1) * problem.teacher_substeps


def to_schedule(
    problem: StepProblem, runner: SchedulerRunner, result: StepResult, teachers: dict, report: dict | None = None
) -> StepSchedule:
    """The :class:`StepSchedule` of a result, with its :func:`heldout_report` (computed unless given)."""
    model = {
        **problem.description,
        "noise_schedule": problem.noise_schedule.describe(),
        "prediction_type": problem.prediction_type,
    }
    if problem.is_flow:
        model.update(flow_shift=problem.flow_shift, time_shift_type=problem.time_shift_type)
    method = {
        "name": "gits-dp+coordinate-refinement",
        "paper": "arXiv 2405.11326",
        "fine_steps": problem.fine_steps,
        "teacher": {"solver": "dpmsolver++3m", "substeps": problem.teacher_substeps},
        "refine_evaluations": result.evaluations,
        "teacher_model_calls": teacher_model_calls(problem),
        "heldout_teacher_model_calls": teacher_model_calls(problem, "heldout"),
        "search_model_calls": result.model_calls,
        "batch_size": problem.batch_size,
        "search_seconds": result.seconds,
        "dp_grid": result.dp_grid.tolist(),
    }
    return StepSchedule(
        result.grid,
        problem.unit,
        result.nfe,
        runner.describe(),
        model,
        method,
        problem.settings(),
        heldout_report(problem, runner, result, teachers) if report is None else report,
    )
