"""DEIS family against Diffusers' schedulers: error vs NFE on exact ODE solutions, and step() overhead.

Problems (VP, DDPM linear betas, epsilon prediction, x_T exact at timestep 999, end at sigma = 0):
- ``gmm``: a random 8-D Gaussian mixture (``GaussianMixture.random``).
- ``digits``: a Gaussian mixture over 600 of scikit-learn's 8x8 digits (64-D, in [-1, 1]),
  component variance 0.05^2: the empirical data distribution, slightly smoothed.
The model is exact (closed-form denoiser), so the only error is the solver's; the reference is
the probability-flow ODE solved to ~1e-10 (``GaussianMixture.ode_solve``). Each scheduler runs in
the same diffusers-style loop; the model is evaluated at the scheduler's exact noise level.
Every method is tried on every grid it offers, with ``lower_order_final`` on and off where it
has that option; the table reports each method's best.

Timing: ``step()`` cost for a 1x4x64x64 float32 latent, ours vs diffusers'
``DEISMultistepScheduler`` order 3, interleaved repeats in one run; reported as a ratio.

Run: ``python benchmarks/bench_deis.py`` (about 20 minutes on 2 idle cores). Writes
``benchmarks/results/deis.json`` and ``deis.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from sklearn.datasets import load_digits

from fastsample import DEISScheduler
from fastsample._io import atomic_write
from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import DiscreteVP
from fastsample.sweep.runner import steps_for_nfe

NFES = [4, 5, 6, 8, 10, 15, 20]
OUT = Path(__file__).parent / "results"
N_SAMPLES = {"gmm": 64, "digits": 32}
OURS = [("tab", o) for o in (2, 3, 4)] + [("rhoab", 3), ("logrho", 2), ("logrho", 3), ("ipndm", 3), ("ipndm", 4)]
OURS += [("rhork", o) for o in (2, 3, 4)]
LOF = ({"lower_order_final": True}, {"lower_order_final": False})
OUR_GRIDS = {"linspace": {}, "trailing": {"timestep_spacing": "trailing"}, "karras": {"time_grid": "karras"}}
OUR_GRIDS |= {"logSNR": {"time_grid": "uniform_lambda"}, "quadratic_t": {"time_grid": "quadratic_t"}}
DIFFUSERS_GRIDS = {"linspace": {}, "trailing": {"timestep_spacing": "trailing"}, "karras": {"use_karras_sigmas": True}}
DIFFUSERS_GRIDS_LAMBDA = {**DIFFUSERS_GRIDS, "logSNR": {"use_lambdas": True}}


def problems():
    digits = load_digits().data.astype(np.float64) / 8.0 - 1.0
    digits = digits[np.random.default_rng(0).permutation(len(digits))[:600]]
    return {
        "gmm": GaussianMixture.random(dim=8, components=6, seed=0),
        "digits": GaussianMixture.from_data(digits, variance=0.05**2),
    }


def diffusers_methods():
    """label -> (class, fixed kwargs, grids, option sets)."""
    lam = DIFFUSERS_GRIDS_LAMBDA
    ddim_grids = {"linspace": {}, "trailing": DIFFUSERS_GRIDS["trailing"]}
    return {
        "DDIM": (DDIMScheduler, {"set_alpha_to_one": True}, ddim_grids, ({},)),
        "DPM-Solver++ 2M": (DPMSolverMultistepScheduler, {"solver_order": 2}, lam, LOF),
        "DPM-Solver++ 3M": (DPMSolverMultistepScheduler, {"solver_order": 3}, lam, LOF),
        "UniPC bh2 (3)": (UniPCMultistepScheduler, {"solver_order": 3}, DIFFUSERS_GRIDS, LOF),
        "UniPC bh2 (2)": (UniPCMultistepScheduler, {"solver_order": 2}, DIFFUSERS_GRIDS, LOF),
        "DEISMultistep (diffusers) 2": (DEISMultistepScheduler, {"solver_order": 2}, DIFFUSERS_GRIDS, LOF),
        "DEISMultistep (diffusers) 3": (DEISMultistepScheduler, {"solver_order": 3}, DIFFUSERS_GRIDS, LOF),
    }


def run(scheduler, gm, schedule, x_t, nfe):
    """Sample with ``scheduler`` in a diffusers-style loop; None if ``nfe`` is not reachable exactly."""
    n = steps_for_nfe(scheduler, nfe)
    if n is None:
        return None
    scheduler.set_timesteps(n)
    model = gm.model_fn(schedule, "epsilon")
    x = x_t.clone()
    ours = isinstance(scheduler, DEISScheduler)
    for i, ts in enumerate(scheduler.timesteps):
        if ours:
            t = float(scheduler.plan.eval_times[i])
        elif isinstance(scheduler, DDIMScheduler):
            t = float(schedule.t_of_timestep(float(ts)))
        else:
            t = float(schedule.t_of_sigma_ve(float(scheduler.sigmas[scheduler.step_index or i])))
        x = scheduler.step(model(x, t), ts, x).prev_sample
    return x


def errors(problem_name, gm, base_config):
    schedule = DiscreteVP.from_config(base_config)
    x_t = torch.from_numpy(gm.prior_sample(N_SAMPLES[problem_name], schedule, t_start=1.0, seed=7))
    t0 = time.perf_counter()
    exact = torch.from_numpy(gm.ode_solve(x_t.numpy(), schedule, 1.0, 0.0))
    print(f"[{problem_name}] exact solution in {time.perf_counter() - t0:.1f} s", flush=True)

    def rmse(x):
        return float(((x - exact) ** 2).mean(dim=1).sqrt().mean())

    def record(label, make, grids, options):
        for gname, gkw in grids.items():
            for opt in options:
                key = gname + ("" if opt.get("lower_order_final", True) else " (no lof)")
                for nfe in NFES:
                    try:
                        x = run(make(**gkw, **opt), gm, schedule, x_t, nfe)
                    except ValueError:  # grid cannot make exactly nfe calls
                        x = None
                    except RuntimeError as e:  # diffusers' UniPC: singular system without lower_order_final
                        print(f"[{problem_name}] {label} {key} NFE {nfe} failed: {e}", flush=True)
                        x = None
                    if x is not None:
                        table.setdefault(label, {}).setdefault(nfe, {})[key] = rmse(x)
        print(f"[{problem_name}] {label} done", flush=True)

    table = {}
    for label, (cls, kw, grids, options) in diffusers_methods().items():
        record(label, lambda cls=cls, kw=kw, **o: cls.from_config(base_config, **kw, **o), grids, options)
    for variant, order in OURS:
        lof = LOF if variant != "rhork" else ({},)
        ours = {"deis_variant": variant, "solver_order": order}
        record(
            f"DEIS {variant} {order}",
            lambda ours=ours, **o: DEISScheduler.from_config(base_config, **ours, **o),
            OUR_GRIDS,
            lof,
        )
    return table


def step_overhead(repeats=15, steps=20):
    """Median time per step() for a 1x4x64x64 latent: ours (DEIS tAB 3) and diffusers' DEIS order 3."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 64, 64, generator=g)
    outs = [torch.randn(1, 4, 64, 64, generator=g) for _ in range(steps)]
    cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    contenders = {
        "fastsample DEISScheduler tab 3": DEISScheduler(**cfg, solver_order=3),
        "fastsample DEISScheduler logrho 3": DEISScheduler(**cfg, solver_order=3, deis_variant="logrho"),
        "diffusers DEISMultistepScheduler 3": DEISMultistepScheduler(**cfg, solver_order=3),
        "diffusers DPMSolverMultistepScheduler 2M": DPMSolverMultistepScheduler(**cfg, solver_order=2),
    }
    times = {k: [] for k in contenders}
    for _ in range(repeats):
        for name, s in contenders.items():
            s.set_timesteps(steps)
            y = x.clone()
            t0 = time.perf_counter()
            for i, ts in enumerate(s.timesteps):
                y = s.step(outs[i], ts, y).prev_sample
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: float(np.median(v)) for k, v in times.items()}


def best(row):
    return min(row.values()) if row else float("nan")


def main():
    torch.set_num_threads(2)
    base_config = DDIMScheduler(beta_schedule="linear").config
    results = {"nfe": NFES, "n_samples": N_SAMPLES, "problems": {}}
    results["step_time_s"] = step_overhead()
    ref = results["step_time_s"]["diffusers DEISMultistepScheduler 3"]
    results["step_time_ratio_vs_diffusers_deis3"] = {k: v / ref for k, v in results["step_time_s"].items()}
    for name, gm in problems().items():
        results["problems"][name] = errors(name, gm, base_config)
        save(results)
    print(markdown(results))


def save(results):
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT / "deis.json", json.dumps(results, indent=1))
    atomic_write(OUT / "deis.md", markdown(results))


def markdown(results):
    lines = [
        "# DEIS benchmark",
        "",
        "RMSE against the exact probability-flow ODE solution (each method on its best grid).",
        "",
    ]
    for pname, table in results["problems"].items():
        lines += [f"## {pname}", "", "| method | " + " | ".join(f"NFE {n}" for n in results["nfe"]) + " |"]
        lines += ["|---" * (len(results["nfe"]) + 1) + "|"]
        ours_best, theirs_best = {}, {}
        for label, rows in table.items():
            cells = []
            for n in results["nfe"]:
                row = rows.get(n, rows.get(str(n), {}))
                b = best(row)
                if row:
                    grid = min(row, key=row.get)
                    cells.append(f"{b:.2e} ({grid})")
                    target = ours_best if label.startswith("DEIS ") else theirs_best
                    target[n] = min(target.get(n, np.inf), b)
                else:
                    cells.append("-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += [
            "| **best of ours** | " + " | ".join(f"**{ours_best.get(n, np.nan):.2e}**" for n in results["nfe"]) + " |",
            "| **best of diffusers** | "
            + " | ".join(f"**{theirs_best.get(n, np.nan):.2e}**" for n in results["nfe"])
            + " |",
            "| ratio ours / diffusers | "
            + " | ".join(f"{ours_best.get(n, np.nan) / theirs_best.get(n, np.nan):.2f}" for n in results["nfe"])
            + " |",
            "",
        ]
    lines += ["## step() time, 1x4x64x64 float32 latent (median of interleaved repeats, this CPU)", ""]
    lines += ["| scheduler | time per step | ratio to diffusers DEIS 3 |", "|---|---|---|"]
    for k, v in results["step_time_s"].items():
        lines.append(f"| {k} | {v * 1e6:.0f} us | {results['step_time_ratio_vs_diffusers_deis3'][k]:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
