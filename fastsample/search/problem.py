"""The S^3 search problem: model, noises, reference solution and fitness (Liu et al., arXiv 2312.07243)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core import grids
from ..formats.solver_schedule import SolverSchedule
from ..solvers.usf.builtins import builtin, first_point_usable
from ..solvers.usf.executor import run_schedule

# --- the problem: model, noise, reference -----------------------------------------------------------


@dataclass
class SearchProblem:
    """What the search optimises on.

    Args:
        model_fn: ``f(x, t) -> output`` of ``prediction_type`` (as for :func:`fastsample.solvers.sampling.sample`).
        noise_schedule: a :class:`~fastsample.core.schedules.NoiseSchedule`.
        noise: ``noise(n, seed) -> x_T`` tensor of n starting points (deterministic in seed).
        reference: ``reference(x_T) -> x_end`` tensor, the target final samples from the same noise.
        features: optional ``features(x) -> (n, d)`` tensor for the Frechet-distance fitness.
        target_features: optional (m, d) features of data: the ``fid`` fitness then compares with them
            instead of the reference samples (as FID-driven searches do); ``reference`` may then be None.
        t_start, t_end: the integration interval (t_end = 0: exact data).
        description: model identity for the provenance (JSON-serialisable).
        dtype: sampling dtype (float64 for analytic models).
    """

    model_fn: Callable
    noise_schedule: object
    noise: Callable
    reference: Callable
    prediction_type: str = "epsilon"
    features: Callable | None = None
    t_start: float = 1.0
    t_end: float = 0.0
    description: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.float64
    target_features: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def analytic(cls, mixture, noise_schedule, t_start: float = 1.0, t_end: float = 0.0, name: str = "analytic-gmm"):
        """A Gaussian-mixture model with its exact denoiser and exact ODE solution as the reference."""

        def noise(n, seed):
            return torch.from_numpy(mixture.prior_sample(n, noise_schedule, t_start=t_start, seed=seed))

        def reference(x):
            return torch.from_numpy(mixture.ode_solve(x.double().numpy(), noise_schedule, t_start, t_end))

        h = hashlib.sha256()
        for a in (mixture.means, mixture.variances, mixture.weights):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        desc = {
            "name": name,
            "dim": mixture.dim,
            "components": len(mixture.weights),
            "noise_schedule": noise_schedule.describe(),
            "sha256": h.hexdigest(),
        }
        return cls(
            mixture.model_fn(noise_schedule), noise_schedule, noise, reference, "epsilon", None, t_start, t_end, desc
        )

    @classmethod
    def from_model(
        cls,
        model_fn,
        noise_schedule,
        shape,
        prediction_type: str = "epsilon",
        reference_steps: int | None = 200,
        features=None,
        t_start: float | None = None,
        t_end: float = 0.0,
        description: dict | None = None,
        dtype=torch.float32,
    ):
        """Any denoiser, started from unit Gaussian noise at ``t_start``; reference: UniPC-3 with
        ``reference_steps`` steps (None: none) on a grid uniform in lambda (VP) or in t (flow: lambda is
        -inf at t = 1, which the first step then does not differentiate)."""
        t0 = noise_schedule.t_max if t_start is None else t_start

        def noise(n, seed):
            g = torch.Generator().manual_seed(int(seed))
            return torch.randn((n, *shape), generator=g, dtype=dtype)  # unit noise at t_start, as a pipeline draws it

        reference = None
        if reference_steps is not None:
            if noise_schedule.is_flow:
                ref_grid = grids.uniform_t(noise_schedule, reference_steps, t_start=t0, t_end=t_end)
            else:
                ref_grid = grids.uniform_lambda(noise_schedule, reference_steps, t_start=t0, final_zero=t_end == 0)
            first_usable = first_point_usable(noise_schedule, ref_grid[0])
            ref_sched = builtin("unipc3-bh2", reference_steps, first_usable=first_usable).with_grid(ref_grid)

            def reference(x):
                return run_schedule(model_fn, x, noise_schedule, ref_sched, prediction_type=prediction_type)

        return cls(
            model_fn,
            noise_schedule,
            noise,
            reference,
            prediction_type,
            features,
            t0,
            t_end,
            dict(description or {}),
            dtype,
        )

    # cached batches: (x_T, reference) per (seed, n)
    def batch(self, seed: int, n: int):
        key = (int(seed), int(n))
        if key not in self._cache:
            x = self.noise(n, seed).to(self.dtype)
            self._cache[key] = (x, None if self.reference is None else self.reference(x).to(torch.float64))
        return self._cache[key]

    def run(self, schedule: SolverSchedule, x: torch.Tensor, grid=None) -> torch.Tensor:
        return run_schedule(self.model_fn, x, self.noise_schedule, schedule, grid, self.prediction_type)


def _sample_rmse(a, b) -> torch.Tensor:
    """Per-sample RMSE (float64 (n,)) of a against b, both (n, ...)."""
    return torch.sqrt(torch.mean((a.double().reshape(len(a), -1) - b.double().reshape(len(b), -1)) ** 2, dim=1))


def _rmse(a, b) -> float:
    return float(torch.sqrt(torch.mean(_sample_rmse(a, b) ** 2)))


def _fid(problem, a, b) -> float:
    from ..fid import frechet_distance

    fa = problem.features(a).double() if problem.features is not None else a.double().reshape(len(a), -1)
    if problem.target_features is not None:
        fb = problem.target_features.double()
    else:
        fb = problem.features(b).double() if problem.features is not None else b.double().reshape(len(b), -1)
    return frechet_distance(fa.mean(0), torch.cov(fa.T), fb.mean(0), torch.cov(fb.T))


def fitness_of(problem: SearchProblem, out: torch.Tensor, ref: torch.Tensor, metric: str) -> float:
    """Against the reference from the same noise: ``rmse`` (over all samples) or ``sample_rmse`` (the mean of the
    per-sample RMSEs: the error the benchmarks report, less dominated by the few samples whose trajectory
    changes mode); or ``fid`` (Frechet distance of features)."""
    if not torch.isfinite(out).all():
        return math.inf
    if metric in ("rmse", "sample_rmse"):
        if ref is None:
            raise ValueError(f"the {metric} fitness needs a reference solution")
        return _rmse(out, ref) if metric == "rmse" else float(_sample_rmse(out, ref).mean())
    if metric != "fid":
        raise ValueError(f"unknown fitness metric {metric!r}; allowed: rmse, sample_rmse, fid")
    return _fid(problem, out, ref)
