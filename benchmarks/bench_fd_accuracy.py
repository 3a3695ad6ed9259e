"""Frechet distance against accuracy on the demo models: does a lower FD mean a more accurate sampler?

For each demo model (DDPM, flow) a converged solution of the probability-flow ODE (the sweep's reference solver,
:data:`fastsample.sweep.reference.DEFAULT`, at two step counts; ``protocol.converged_reference`` reports how far it
moved between them) and a handful of few-step configurations at NFE 5, 8, 10 (rows of the main demo,
eval/configs/demo.toml and demo_flow.toml, picked by label: Diffusers' UniPC / DPM-Solver++ at their defaults and
trailing, FlowMatch Euler, ours with the shipped optimised steps and S^3 schedules) run from the same noises as
the demo sweep (its seed and sample count). Each gets

- the Frechet distance to the held-out digits in the demo classifier's feature space (Heusel et al., arXiv
  1706.08500), with a bootstrap 95% interval over the generated samples (``fastsample.fid.bootstrap.fd_bootstrap``);
- its FD minus the converged solution's, with a paired bootstrap interval (``fastsample.fid.bootstrap.fd_difference``);
- the per-sample RMSE of its images (in [0, 1]) against the converged solution of the same noise, mean and
  bootstrap 95% interval.

The results state, computed from these numbers, how many few-step cells have a lower FD than the converged ODE
solution and the Spearman rank correlation between FD and RMSE. No configuration is chosen here, so there is no
selection / held-out split. One CPU thread (about 5 CPU-minutes for both models).

    nice -n 10 python benchmarks/bench_fd_accuracy.py

Writes benchmarks/results/fd_accuracy.{json,md}.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import diffusers
import numpy as np
import scipy.stats
import torch
from protocol import converged_reference, write_results

from fastsample.core.schedules import is_flow_config
from fastsample.fid.bootstrap import bootstrap_ci, fd_bootstrap, fd_difference, per_sample_rmse
from fastsample.sweep import report as sweep_report
from fastsample.sweep.config import SchedulerSpec, load_config
from fastsample.sweep.metrics import SETTINGS
from fastsample.sweep.reference import DEFAULT, VP_GRID
from fastsample.sweep.runner import steps_for_nfe
from fastsample.sweep.sources import FeatureNet, build_source, reference_statistics

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"ddpm": ROOT / "eval" / "configs" / "demo.toml", "flow": ROOT / "eval" / "configs" / "demo_flow.toml"}
LABELS = {  # rows of the demo configs
    "ddpm": [
        "DDIM (diffusers, trailing)",
        "DPM-Solver++ 2M (diffusers, default)",
        "DPM-Solver++ 2M (diffusers, trailing)",
        "UniPC (diffusers, default)",
        "UniPC (diffusers, trailing)",
        "DEIS (diffusers, default)",
        "UniPC-bh2 + optimised steps (ours)",
        "S3 searched (ours)",
    ],
    "flow": [
        "FlowMatch Euler (diffusers)",
        "FlowMatch Euler (diffusers), our uniform-t grid",
        "UniPC flow (diffusers)",
        "multistep3 (ours)",
        "multistep2 + optimised steps (ours)",
        "S3 searched (ours)",
    ],
}
NFES = (5, 8, 10)
REFERENCE_STEPS = (100, 200)  # the converged solution: the second; the first says how far it still moves
BOOT = SETTINGS["bootstrap"]  # the sweep's bootstrap sizes and level


def _interval(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "ci95": list(bootstrap_ci(v, n_boot=BOOT["n_boot_rmse"], level=BOOT["level"]))}


def evaluate(which: str) -> dict:
    """The converged solution and every few-step cell of one demo model (module docstring)."""
    cfg = load_config(CONFIGS[which])
    specs = {s.label: s for s in cfg.schedulers}
    missing = [label for label in LABELS[which] if label not in specs]
    if missing:
        raise SystemExit(f"{CONFIGS[which].name} has no scheduler labelled {missing}; update LABELS")
    device = torch.device("cpu")
    source = build_source(cfg.model, cfg.seed, device)
    base = source.scheduler_config
    features = FeatureNet(cfg.metric, device)
    with tempfile.TemporaryDirectory() as tmp:
        reference, _ = reference_statistics(cfg.metric, features, Path(tmp))
    floor = sweep_report.floor(cfg.metric, features, reference, cfg.num_samples)
    indices = list(range(cfg.num_samples))

    def run(scheduler, steps: int) -> torch.Tensor:
        return torch.cat([source.generate(scheduler, steps, indices[i : i + cfg.batch_size], 1.0)
                          for i in range(0, len(indices), cfg.batch_size)])  # fmt: skip

    ref_config = DEFAULT["config"] if is_flow_config(dict(base)) else {**DEFAULT["config"], **VP_GRID}
    ref_spec = SchedulerSpec(DEFAULT["name"], "converged solution", ref_config)
    exact = {}

    def solve(steps: int) -> torch.Tensor:
        exact[steps] = run(ref_spec.build(base), steps)
        return exact[steps]

    t0 = time.process_time()
    ref_images, moved = converged_reference(solve, REFERENCE_STEPS)
    exact_feats = features(ref_images)
    out = {
        "config": str(CONFIGS[which].relative_to(ROOT)),
        "seed": cfg.seed,
        "num_samples": cfg.num_samples,
        "floor": floor,
        "reference": {
            "solver": DEFAULT["name"],
            "config": ref_config,
            **moved,
            "fd": {
                str(s): fd_bootstrap(features(x), reference, BOOT["n_boot_fd"], BOOT["level"]) for s, x in exact.items()
            },
            "cpu_seconds": time.process_time() - t0,
        },
        "rows": [],
    }
    for label in LABELS[which]:
        for nfe in NFES:
            t0 = time.process_time()
            scheduler = specs[label].build(base, nfe)
            steps = steps_for_nfe(scheduler, nfe)
            if steps is None:
                out["rows"].append({"label": label, "nfe": nfe, "skipped": f"cannot make exactly {nfe} model calls"})
                continue
            images = run(scheduler, steps)
            f = features(images)
            fd = fd_bootstrap(f, reference, BOOT["n_boot_fd"], BOOT["level"])
            row = {
                "label": label,
                "nfe": nfe,
                "num_inference_steps": steps,
                "fd": fd["fd"],
                "fd_ci95": fd["ci95"],
                "fd_minus_exact": fd_difference(f, exact_feats, reference, BOOT["n_boot_fd"], BOOT["level"]),
                "rmse": _interval(per_sample_rmse(images, ref_images)),
                "cpu_seconds": time.process_time() - t0,
            }
            out["rows"].append(row)
            print(f"{which} {label} NFE {nfe}: FD {row['fd']:.2f} RMSE {row['rmse']['mean']:.4f}", flush=True)
    out["conclusions"] = conclusions(out)
    return out


def _rank(values, i: int) -> int:
    """1-based rank of values[i] among ``values`` (smallest first)."""
    return int(np.sum(np.asarray(values) < values[i])) + 1


def conclusions(model: dict) -> dict:
    """What the cells say about FD as a measure of accuracy: counts, rank correlations, best-by-each per NFE."""
    rows = [r for r in model["rows"] if "fd" in r]
    exact_fd = model["reference"]["fd"][str(REFERENCE_STEPS[1])]["fd"]
    moved = model["reference"]["mean_rmse_between"]

    def spearman(rs):
        if len(rs) < 3:
            return None
        res = scipy.stats.spearmanr([r["fd"] for r in rs], [r["rmse"]["mean"] for r in rs])
        return {"rho": float(res.statistic), "p": float(res.pvalue), "n": len(rs)}

    per_nfe = {}
    for nfe in NFES:
        rs = [r for r in rows if r["nfe"] == nfe]
        fds, errs = [r["fd"] for r in rs], [r["rmse"]["mean"] for r in rs]
        acc, low = int(np.argmin(errs)), int(np.argmin(fds))
        per_nfe[str(nfe)] = {
            "count": len(rs),
            "spearman": spearman(rs),
            "lowest_rmse": {"label": rs[acc]["label"], "rmse": errs[acc], "fd": fds[acc], "fd_rank": _rank(fds, acc)},
            "lowest_fd": {"label": rs[low]["label"], "fd": fds[low], "rmse": errs[low], "rmse_rank": _rank(errs, low)},
        }
    return {
        "count": len(rows),
        "exact_fd": exact_fd,
        "fd_below_exact": sum(r["fd"] < exact_fd for r in rows),
        "fd_below_exact_beyond_ci": sum(r["fd_minus_exact"]["ci95"][1] < 0 for r in rows),
        "fd_above_exact_beyond_ci": sum(r["fd_minus_exact"]["ci95"][0] > 0 for r in rows),
        "rmse_within_reference_movement": sum(r["rmse"]["mean"] <= moved for r in rows),
        "spearman": spearman(rows),
        "per_nfe": per_nfe,
    }


def _ci(lo_hi, fmt) -> str:
    return f"[{lo_hi[0]:{fmt}}, {lo_hi[1]:{fmt}}]"


def _rho(s) -> str:
    return "-" if s is None else f"{s['rho']:.2f} (p = {s['p']:.2g}, {s['n']} cells)"


def markdown(data: dict) -> str:
    lines = [
        "# Frechet distance against accuracy: the demo models",
        "",
        "Generated by `benchmarks/bench_fd_accuracy.py`. FD: Frechet distance of the samples to the held-out digits in"
        " the demo classifier's feature space, bootstrap 95% interval over the samples; FD - exact: the difference to"
        " the converged ODE solution's FD, paired bootstrap interval (the same noises resampled on both sides);"
        " RMSE: per-sample RMSE of the images in [0, 1] against the converged solution of the same noise, mean and"
        " bootstrap 95% interval. Samples: the demo sweep's noises (its seed and sample count).",
        "",
    ]
    for which, m in data["models"].items():
        ref, c = m["reference"], m["conclusions"]
        fds = ", ".join(f"{v['fd']:.2f} {_ci(v['ci95'], '.2f')} at {s} steps" for s, v in ref["fd"].items())
        lines += [
            f"## demo {which} ({m['num_samples']} samples, seed {m['seed']}, rows of `{m['config']}`)",
            "",
            f"Converged solution: {ref['solver']} {ref['config']} at {ref['steps'][0]} and {ref['steps'][1]} steps,"
            f" mean per-sample RMSE between them {ref['mean_rmse_between']:.4f}; FD {fds}."
            + (
                f" Floor: {m['floor']['count']} {m['floor']['source']} against the held-out digits, FD"
                f" {m['floor']['fd']:.2f}."
                if m["floor"]
                else ""
            ),
            "",
            f"- {c['fd_below_exact']} of {c['count']} few-step cells (configuration x NFE) have an FD below the"
            f" converged solution's ({c['exact_fd']:.2f}); {c['fd_below_exact_beyond_ci']} of them beyond the paired"
            f" 95% interval; {c['fd_above_exact_beyond_ci']} are above it beyond the interval."
            f" {c['rmse_within_reference_movement']} cells have an RMSE not above the converged solution's own"
            " movement (errors not resolved).",
            f"- Spearman rank correlation between FD and RMSE over all cells: {_rho(c['spearman'])}; within each NFE: "
            + "; ".join(f"NFE {n}: {_rho(p['spearman'])}" for n, p in c["per_nfe"].items())
            + ".",
        ]
        for n, p in c["per_nfe"].items():
            a, b = p["lowest_rmse"], p["lowest_fd"]
            lines.append(
                f"- NFE {n}: lowest RMSE {a['label']} ({a['rmse']:.4f}; its FD {a['fd']:.2f} ranks {a['fd_rank']} of"
                f" {p['count']}); lowest FD {b['label']} ({b['fd']:.2f}; its RMSE {b['rmse']:.4f} ranks"
                f" {b['rmse_rank']} of {p['count']})."
            )
        lines += [
            "",
            "| configuration | NFE | steps | FD [95%] | FD - exact [95%] | RMSE [95%] |",
            "|---|---|---|---|---|---|",
        ]
        for r in m["rows"]:
            if "fd" not in r:
                lines.append(f"| {r['label']} | {r['nfe']} | - | {r['skipped']} | | |")
                continue
            d, e = r["fd_minus_exact"], r["rmse"]
            lines.append(
                f"| {r['label']} | {r['nfe']} | {r['num_inference_steps']} | {r['fd']:.2f} {_ci(r['fd_ci95'], '.2f')}"
                f" | {d['value']:+.2f} {_ci(d['ci95'], '+.2f')} | {e['mean']:.4f} {_ci(e['ci95'], '.4f')} |"
            )
        lines.append("")
    env = data["environment"]
    lines.append(
        f"Environment: torch {env['torch']}, diffusers {env['diffusers']}, {env['machine']}, {env['threads']} CPU"
        f" thread(s); {env['cpu_seconds']:.0f} CPU s; load average {env['load_average']}."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)  # a loaded machine: spinning OpenMP threads would run many times slower
    t0 = time.process_time()
    models = {which: evaluate(which) for which in CONFIGS}
    data = {
        "models": models,
        "environment": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "cpu_seconds": time.process_time() - t0,
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }
    write_results("fd_accuracy", data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
