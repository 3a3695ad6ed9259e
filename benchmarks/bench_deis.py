"""DEIS family against Diffusers' schedulers under the comparison protocol (benchmarks/README.md), and step() cost.

Problems (VP, DDPM linear betas, epsilon prediction, x_T exact at timestep 999):
- ``gmm``: a random 8-D Gaussian mixture (``GaussianMixture.random``).
- ``digits``: a Gaussian mixture over 600 of scikit-learn's 8x8 digits (64-D, in [-1, 1]), component
  variance 0.05^2: the empirical data distribution, slightly smoothed.
The model is exact (closed-form denoiser), so the only error is the solver's; the reference is the
probability-flow ODE of the same noise solved by ``GaussianMixture.ode_solve`` (DOP853, rtol = atol = 1e-12;
its change from rtol 1e-8 is reported). Every scheduler runs in the Diffusers pipeline loop, the model
evaluated at each timestep label. Each method (a family: every variant, ``lower_order_final`` on and off)
is given every grid any fastsample scheduler gets (protocol.vp_grids) and its own grid options, chooses on
the selection seeds, and is reported on the held-out seeds; "all ..." rows choose across a whole side.

Timing: ``step()`` per call on a 1x4x64x64 float32 latent, 20 steps, interleaved repeats (protocol).

Run: ``nice -n 10 python benchmarks/bench_deis.py [--quick]`` (full: NFE 4-20; quick: NFE 4, 6, 10).
Writes ``benchmarks/results/deis.json`` and ``deis.md``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import protocol as P
import torch
from diffusers import DDIMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from diffusers.utils import logging as dlogging
from sklearn.datasets import load_digits

from fastsample import DEISScheduler
from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import DiscreteVP

NFES = (4, 5, 6, 8, 10, 15, 20)
QUICK_NFES = (4, 6, 10)
N_PER_SEED = {"gmm": 32, "digits": 16}
BASE_CONFIG = DDIMScheduler(beta_schedule="linear").config


def problems():
    digits = load_digits().data.astype(np.float64) / 8.0 - 1.0
    digits = digits[np.random.default_rng(0).permutation(len(digits))[:600]]
    return {
        "gmm": GaussianMixture.random(dim=8, components=6, seed=0),
        "digits": GaussianMixture.from_data(digits, variance=0.05**2),
    }


def errors_for(gm, schedule, n_per_seed):
    """evaluate(build, seeds) -> per-sample RMSE against the exact solution of the same noise (None: failed)."""
    noise, exact = {}, {}
    model = gm.model_fn(schedule, "epsilon")

    def data(seed):
        if seed not in noise:
            x = gm.prior_sample(n_per_seed, schedule, t_start=1.0, seed=seed)
            noise[seed] = torch.from_numpy(x)
            exact[seed] = torch.from_numpy(gm.ode_solve(x, schedule, 1.0, 0.0))
        return noise[seed], exact[seed]

    def evaluate(build, seeds):
        out = []
        for seed in seeds:
            x, ref = data(seed)
            try:
                y = P.sample(build(), lambda x, ts: model(x, float(schedule.t_of_timestep(ts))), x.clone())
            except (RuntimeError, ValueError, IndexError):  # e.g. Diffusers' UniPC: singular system without lof
                return None
            out.append(P.per_sample_rmse(y, ref))
        return np.concatenate(out)

    return evaluate


def reference_check(gm, schedule, n):
    x = gm.prior_sample(n, schedule, t_start=1.0, seed=P.HELDOUT_SEEDS[0])
    return P.converged_reference(
        lambda k: torch.from_numpy(gm.ode_solve(x, schedule, 1.0, 0.0, rtol=10.0**-k, atol=10.0**-k)), (8, 12)
    )[1]


def step_overhead(repeats=15, steps=20):
    """Seconds per step() for a 1x4x64x64 latent, interleaved repeats of a 20-step run per contestant."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 64, 64, generator=g)
    outs = [torch.randn(1, 4, 64, 64, generator=g) for _ in range(steps)]
    cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    contenders = {
        "fastsample DEISScheduler tab 3": DEISScheduler(**cfg, solver_order=3),
        "fastsample DEISScheduler logrho 3": DEISScheduler(**cfg, solver_order=3, deis_variant="logrho"),
        "diffusers DEISMultistepScheduler 3": DEISMultistepScheduler(**cfg, solver_order=3),
        "diffusers DPMSolverMultistepScheduler 2M": DPMSolverMultistepScheduler(**cfg, solver_order=2),
        "diffusers UniPCMultistepScheduler 2": UniPCMultistepScheduler(**cfg),
    }

    def run(s):
        s.set_timesteps(steps)
        y = x
        for i, ts in enumerate(s.timesteps):
            y = s.step(outs[i], ts, y).prev_sample

    t = P.interleaved_timing({k: (lambda s=s: run(s)) for k, s in contenders.items()}, repeats)
    return {
        k: {kk: (vv / steps if kk != "repeats" else vv) for kk, vv in v.items() if kk != "seconds"}
        for k, v in t.items()
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"NFE {QUICK_NFES} only")
    args = ap.parse_args(argv)
    dlogging.set_verbosity_error()
    torch.set_num_threads(1)
    nfes = QUICK_NFES if args.quick else NFES
    schedule = DiscreteVP.from_config(BASE_CONFIG)
    t0 = time.perf_counter()
    res = {"run": "quick" if args.quick else "full", "nfe": list(nfes), "samples_per_seed": N_PER_SEED}
    res |= {"selection_seeds": list(P.SELECTION_SEEDS), "heldout_seeds": list(P.HELDOUT_SEEDS), "problems": {}}
    res["step_time"] = step_overhead()
    configs = {nfe: P.vp_methods(BASE_CONFIG, nfe) for nfe in nfes}
    for name, gm in problems().items():
        choices = P.choose_all(
            configs, errors_for(gm, schedule, N_PER_SEED[name]), log=lambda m, name=name: print(name, m)
        )
        res["problems"][name] = {
            "reference": reference_check(gm, schedule, N_PER_SEED[name]),
            "choices": [{**d, "nfe": nfe} for (m, nfe), d in choices.items()],
            "ratio_all_fastsample_over_all_diffusers": P.ratios(choices, nfes, "all fastsample DEIS", "all Diffusers"),
        }
    res["seconds"] = time.perf_counter() - t0
    P.write_results("deis", res, markdown(res))
    print(markdown(res))


def markdown(res) -> str:
    lines = [
        "# DEIS benchmark (`benchmarks/bench_deis.py`" + (" --quick)" if res["run"] == "quick" else ")"),
        "",
        f"Per-sample RMSE against the exact ODE solution of the same noise; held-out seeds {res['heldout_seeds']}"
        f" (configurations chosen on seeds {res['selection_seeds']}); samples per seed {res['samples_per_seed']}."
        " Cell: held-out mean [bootstrap 95% CI over samples] (chosen configuration); count: configurations the"
        f" method chose from. Run time {res['seconds']:.0f} s.",
        "",
    ]
    for pname, p in res["problems"].items():
        choices = {(d["method"], d["nfe"]): d for d in p["choices"]}
        ref = p["reference"]
        lines += [f"## {pname}", "",
                  f"Reference: `GaussianMixture.ode_solve` (DOP853); rtol 1e-{ref['steps'][0]} vs 1e-{ref['steps'][1]}"
                  f" differ by {ref['mean_rmse_between']:.1e} mean RMSE.", ""]  # fmt: skip
        lines.append(P.comparison_table(choices, res["nfe"], ratio=("all fastsample DEIS", "all Diffusers")))
    lines += ["## step() time, 1x4x64x64 float32 latent, 20 steps (interleaved repeats, this CPU)", ""]
    lines += ["| scheduler | median per step | min-max | repeats |", "|---|---|---|---|"]
    for k, v in res["step_time"].items():
        lines.append(
            f"| {k} | {v['median'] * 1e6:.0f} us | {v['min'] * 1e6:.0f}-{v['max'] * 1e6:.0f} us | {v['repeats']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
