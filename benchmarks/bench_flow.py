"""Flow solvers against Diffusers' FlowMatch schedulers, and FlowChef against a DPS-style baseline.

1. Error vs NFE (4-10) on the analytic flow model under the comparison protocol (benchmarks/README.md):
   random Gaussian mixtures (``GaussianMixture.random``; ``gmm16``: 16-D, 8 components; ``gmm8``: 8-D,
   6 components, the problem of bench_deis.py), exact velocity, x_1 ~ N(0, I) at t = 1, end at t = 0.
   Reference: the probability-flow ODE of the same noise by ``GaussianMixture.ode_solve`` (its change from
   rtol 1e-8 to 1e-12 is reported). Every scheduler runs in the Diffusers pipeline loop (the model at
   timestep / 1000) with at most NFE model calls (the largest step count that fits; Heun: 2n - 1 calls,
   RK4: 4n - 1, midpoint: 2n). Every method gets every flow grid (``protocol.flow_grids``: uniform in t,
   quadratic in t, FlowMatch's default that ends with a call at sigma 0.001) through ``sigmas`` where its
   class takes them, and its own options; configurations are chosen on the selection seeds and reported
   on the held-out seeds (per-sample RMSE, bootstrap interval).
2. FlowChef on the analytic model (inpainting and 2x super-resolution of held-out samples):
   observed-part error, steered vs unsteered, and the KS p-value of the unobserved part against
   the exact posterior (see tests/test_flowchef.py).
3. Memory and time on a tiny real network (the demo flow UNet architecture, 16x16, random weights,
   batch 64, 10 Euler steps): plain sampling, FlowChef (inpainting, K = 1) and a DPS-style
   baseline that backpropagates the same loss through the network (Chung et al., arXiv 2209.14687).
   Each variant runs in a fresh subprocess; peak memory is the rise of the process's peak resident
   set (VmHWM, reset through /proc/self/clear_refs) over its resident set before the run, after one
   warm-up call. Reported as ratios to plain sampling, with the absolute MiB.

Run: ``nice -n 10 python benchmarks/bench_flow.py`` (about 4 CPU-minutes). Writes
``benchmarks/results/flow.json`` and ``flow.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils import logging as dlogging

from fastsample import RectifiedFlowScheduler
from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import RectifiedFlow

sys.path.insert(0, str(Path(__file__).resolve().parent))  # protocol.py beside this file (tests import it by path)
import protocol as P  # noqa: E402

NFES = list(range(4, 11))
FLOW = RectifiedFlow()
OURS = ["euler", "heun", "midpoint", "rk3", "rk4", "multistep2", "multistep3"]
FLOW_CONFIG = FlowMatchEulerDiscreteScheduler().config
N_PER_SEED = 64
PROBLEMS = {
    "gmm16": dict(dim=16, components=8, seed=0),
    "gmm8": dict(dim=8, components=6, seed=0),  # the problem of bench_deis.py
}


def method_configs(nfe: int) -> dict[str, dict[str, object]]:
    """method -> {configuration label -> scheduler builder} at a budget of ``nfe`` calls."""
    out, ours_all, theirs_all = {}, {}, {}
    families = {"FlowMatchEuler": "FlowMatchEuler", "FlowMatchHeun": "FlowMatchHeun", "UniPC": "UniPC (flow)",
                "DPM-Solver++": "DPM-Solver++ multistep (flow)"}  # fmt: skip
    for b in P.flow_roster():
        family = families[b.label.split(" ")[0]]
        own = P.own_grid_options(b.cls, True)
        built = P.configurations(lambda b=b, **kw: b.make(FLOW_CONFIG, **kw), nfe, True, P.flow_grids, own)
        cfgs = {f"{b.label}, {g}": f for g, f in built.items()}
        out.setdefault(f"{family} (diffusers)", {}).update(cfgs)
        theirs_all |= cfgs
    out["all Diffusers"] = theirs_all
    for solver in OURS:
        built = P.configurations(lambda solver=solver: RectifiedFlowScheduler(solver=solver), nfe, True, P.flow_grids)
        out[f"{solver} (fastsample)"] = built
        ours_all |= {f"{solver}, {g}": f for g, f in built.items()}
    out["all fastsample"] = ours_all
    return out


def errors_for(mix):
    """evaluate(build, seeds) -> per-sample RMSE against the exact solution of the same noise."""
    model = mix.model_fn(FLOW, "flow_prediction")
    cache = {}

    def data(seed):
        if seed not in cache:
            x1 = torch.randn(N_PER_SEED, mix.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            cache[seed] = x1, torch.from_numpy(mix.ode_solve(x1.numpy(), FLOW, 1.0, 0.0))
        return cache[seed]

    def evaluate(build, seeds):
        out = []
        for seed in seeds:
            x1, ref = data(seed)
            try:
                y = P.sample(build(), lambda x, ts: model(x, ts / 1000.0), x1.clone())
            except (RuntimeError, ValueError, IndexError):  # e.g. Diffusers' UniPC: singular system without lof
                return None
            out.append(P.per_sample_rmse(y, ref))
        return np.concatenate(out)

    return evaluate


def same_grid_check(mix, n=6):
    """Max |difference| of Diffusers' FlowMatchEuler and our Euler run on the same sigmas (same noise)."""
    model = mix.model_fn(FLOW, "flow_prediction")
    x1 = torch.randn(8, mix.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = P.flow_grids(n)["uniform_t"]
    runs = []
    for s in (FlowMatchEulerDiscreteScheduler(), RectifiedFlowScheduler(solver="euler")):
        P.set_grid(s, grid, True)
        runs.append(P.sample(s, lambda x, ts: model(x, ts / 1000.0), x1.clone()))
    return float((runs[0] - runs[1]).abs().max())


def error_vs_nfe(problem: str) -> dict:
    mix = GaussianMixture.random(**PROBLEMS[problem])
    x = torch.randn(N_PER_SEED, mix.dim, generator=torch.Generator().manual_seed(P.HELDOUT_SEEDS[0]))
    ref = P.converged_reference(
        lambda k: torch.from_numpy(mix.ode_solve(x.double().numpy(), FLOW, 1.0, 0.0, rtol=10.0**-k, atol=10.0**-k)),
        (8, 12),
    )[1]
    choices = P.choose_all(
        {nfe: method_configs(nfe) for nfe in NFES}, errors_for(mix), log=lambda m, p=problem: print(p, m)
    )
    return {
        "reference": ref,
        "flowmatch_euler_vs_our_euler_same_sigmas_max_abs": same_grid_check(mix),
        "choices": [{**d, "nfe": nfe} for (m, nfe), d in choices.items()],
        "ratio_all_fastsample_over_all_diffusers": P.ratios(choices, NFES, "all fastsample", "all Diffusers"),
    }


def flowchef_analytic():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_flowchef as tf
    from scipy import stats

    from fastsample.steering.flowchef import FlowChef, Inpainting, SuperResolution

    mix = GaussianMixture.random(dim=16, components=4, seed=2, spread=1.5)
    n = tf.N
    truth = torch.from_numpy(mix.sample(n, seed=7)).reshape(n, 1, 4, 4)
    x1 = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eye = np.eye(16)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :, :2] = 1
    obs = np.flatnonzero(mask.reshape(-1).numpy())
    idx = np.arange(16).reshape(4, 4)
    blocks = [idx[i : i + 2, j : j + 2].reshape(-1) for i in (0, 2) for j in (0, 2)]
    a_sr, c_sr = np.zeros((4, 16)), np.zeros((8, 16))
    for b, cells in enumerate(blocks):
        a_sr[b, cells] = 0.25
        c_sr[2 * b, cells[:2]] = (1, -1)
        c_sr[2 * b + 1, [cells[0], cells[2]]] = (1, -1)
    tasks = {
        "inpainting (left half)": (Inpainting(truth.float(), mask), eye[obs], eye[np.setdiff1d(np.arange(16), obs)]),
        "super-resolution x2": (SuperResolution(torch.nn.functional.avg_pool2d(truth, 2).float(), 2), a_sr, c_sr),
    }
    rows = []
    tr = truth.reshape(n, -1).numpy()
    for name, (task, A, C) in tasks.items():
        y = tr @ A.T
        for solver, steps in [("euler", 20), ("multistep3", 10)]:
            base = tf._run(mix, x1, solver=solver, n=steps)
            e0 = float(np.sqrt(np.mean((base @ A.T - y) ** 2)))
            p0 = float(stats.kstest(tf._posterior_pit(mix, A, y, base, C), "uniform").pvalue)
            for lr in (0.25, 1.0):
                st = tf._run(mix, x1, FlowChef(task, lr=lr), solver=solver, n=steps)
                e1 = float(np.sqrt(np.mean((st @ A.T - y) ** 2)))
                p1 = float(stats.kstest(tf._posterior_pit(mix, A, y, st, C), "uniform").pvalue)
                rows.append(
                    {"task": name, "solver": solver, "steps": steps, "lr": lr, "observed_rms_unsteered": e0,
                     "observed_rms_steered": e1, "ratio": e0 / max(e1, 1e-300), "ks_p_steered": p1,
                     "ks_p_unsteered": p0}
                )  # fmt: skip
                print(rows[-1])
    return rows


_MEMORY_CHILD = r"""
import json, sys, time, torch
from fastsample.demo.models import make_unet
from fastsample.steering.flowchef import FlowChef, Inpainting, box_mask
from fastsample.solvers.sampling import sample
from fastsample.core.schedules import RectifiedFlow
from fastsample.solvers.flow import make_flow_solver
from fastsample.core import grids
torch.set_num_threads(1)
variant, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
net = make_unet().eval().requires_grad_(False)
S = RectifiedFlow()
def model(x, t):
    return net(x, torch.full((len(x),), 1000.0 * t)).sample
x1 = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(0))
y = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(1))
task = Inpainting(y, box_mask(x1.shape, 4, 4, 8, 8))
grid = grids.flow_shift(S, steps)
solver = make_flow_solver("euler")
def dps(x, lr=0.08):
    plan = solver.plan(S, grid)
    for k, t in enumerate(plan.eval_times):
        t = float(t)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = model(xg, t)
            x0 = xg - t * v
            g, = torch.autograd.grad(task(x0).sum(), xg)
        x0, v = x0.detach(), v.detach()
        x = (x - lr * g) + (float(plan.grid[k + 1]) - t) * v
    return x
def run():
    if variant == "plain":
        return sample(model, x1, S, solver, grid, "flow")
    if variant == "flowchef":
        return sample(model, x1, S, solver, grid, "flow", steering=FlowChef(task, lr=0.08))
    return dps(x1.clone())
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0
with torch.no_grad():
    model(x1[:1], 0.5)
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
t0 = time.perf_counter()
out = run()
dt = time.perf_counter() - t0
print(json.dumps({"variant": variant, "peak_rise_mib": status("VmHWM") - before, "seconds": dt}))
"""


def memory_comparison(batch: int = 64, steps: int = 10, repeats: int = 5):
    """A fresh subprocess per variant and repeat, the variants interleaved (plain, flowchef, dps, plain, ...):
    the smallest peak rise (noise only adds memory) and the median time, each with its min-max, over the same
    number of repeats each."""
    runs = {v: [] for v in ("plain", "flowchef", "dps")}
    for _ in range(repeats):
        for variant in runs:
            out = subprocess.run(
                [sys.executable, "-c", _MEMORY_CHILD, variant, str(batch), str(steps)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {}
    for v, rs in runs.items():
        mem, sec = np.array([r["peak_rise_mib"] for r in rs]), np.array([r["seconds"] for r in rs])
        # memory: the smallest peak (noise, e.g. allocator growth, only adds); time: the median
        results[v] = {"peak_rise_mib": float(mem.min()), "peak_rise_range": [float(mem.min()), float(mem.max())],
                      "seconds": float(np.median(sec)), "seconds_range": [float(sec.min()), float(sec.max())],
                      "repeats": len(rs)}  # fmt: skip
    plain = results["plain"]
    for r in results.values():
        r["memory_ratio_to_plain"] = r["peak_rise_mib"] / plain["peak_rise_mib"]
        r["time_ratio_to_plain"] = r["seconds"] / plain["seconds"]
    print(results)
    return {"batch": batch, "steps": steps, "results": results}


def _error_tables(problem, r) -> list[str]:
    choices = {(d["method"], d["nfe"]): d for d in r["choices"]}
    ref = r["reference"]
    return [
        f"## {problem}: per-sample RMSE vs the exact solution, at most NFE model calls (t = 1 -> 0)",
        "",
        f"Reference: `GaussianMixture.ode_solve`; rtol 1e-{ref['steps'][0]} vs 1e-{ref['steps'][1]} differ by"
        f" {ref['mean_rmse_between']:.1e} mean RMSE. Diffusers' FlowMatchEuler and our Euler on the same sigmas:"
        f" max |difference| {r['flowmatch_euler_vs_our_euler_same_sigmas_max_abs']:.1e}.",
        "",
        P.comparison_table(choices, NFES, ratio=("all fastsample", "all Diffusers")),
    ]


def _markdown(errors, chef, memory) -> str:
    lines = ["# Flow solvers and FlowChef", "", "Generated by `python benchmarks/bench_flow.py`.", ""]
    lines.append(
        f"Held-out seeds {list(P.HELDOUT_SEEDS)} (configurations chosen on seeds {list(P.SELECTION_SEEDS)}),"
        f" {N_PER_SEED} samples per seed. Cell: held-out mean [bootstrap 95% CI over samples] (chosen"
        " configuration); count: configurations the method chose from."
    )
    lines.append("")
    for problem, r in errors.items():
        lines += _error_tables(problem, r)
    lines += ["", "## FlowChef on the analytic model (256 held-out samples)", ""]
    lines.append("| task | solver | steps | lr | observed RMS unsteered | steered | ratio | KS p steered | unsteered |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in chef:
        lines.append(
            f"| {r['task']} | {r['solver']} | {r['steps']} | {r['lr']} | {r['observed_rms_unsteered']:.3g} | "
            f"{r['observed_rms_steered']:.3g} | {r['ratio']:.3g} | {r['ks_p_steered']:.3g} | "
            f"{r['ks_p_unsteered']:.3g} |"
        )
    lines += ["", f"## Memory and time (demo UNet, batch {memory['batch']}, {memory['steps']} Euler steps, CPU)", ""]
    lines.append("Peak: smallest [min-max]; time: median [min-max]; over interleaved repeats, each in a fresh process.")
    lines.append("")
    lines.append("| variant | repeats | peak RSS rise (MiB) | memory / plain | seconds | time / plain |")
    lines.append("|---|---|---|---|---|---|")
    for v, r in memory["results"].items():
        lo, hi = r["peak_rise_range"]
        slo, shi = r["seconds_range"]
        lines.append(
            f"| {v} | {r['repeats']} | {r['peak_rise_mib']:.1f} [{lo:.1f}-{hi:.1f}] |"
            f" {r['memory_ratio_to_plain']:.2f} |"
            f" {r['seconds']:.2f} [{slo:.2f}-{shi:.2f}] | {r['time_ratio_to_plain']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    torch.set_num_threads(1)
    dlogging.set_verbosity_error()
    errors = {problem: error_vs_nfe(problem) for problem in PROBLEMS}
    chef = flowchef_analytic()
    memory = memory_comparison()
    md = _markdown(errors, chef, memory)
    P.write_results("flow", {"errors": errors, "flowchef": chef, "memory": memory}, md)
    print(md)


if __name__ == "__main__":
    main()
