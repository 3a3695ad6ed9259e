"""What to use at each NFE on the shipped demo models: ours against Diffusers' best, held out (issue 14, point 5).

For each demo model (DDPM, flow) and NFE 4, 5, 6, 8, 10, every contestant runs through its real ``set_timesteps`` and
``step`` loop from the same noises; error = per-sample RMSE of the final samples against a high-accuracy
reference solution of the same noise (DPM-Solver++(3M), 80 steps; :func:`fastsample.steps.optimize.unit_errors`).
Each family's configuration is chosen on the selection seeds and reported on disjoint held-out seeds.

Contestants (every grid is given to every scheduler that takes it, ours and Diffusers' alike):

- Diffusers (VP): DDIM, DPM-Solver++ 2M and 3M, UniPC bh1 and bh2, DEIS; (flow): FlowMatch Euler and Heun,
  flow UniPC bh2. Each at its pipeline default (``set_timesteps(n)``), with each of its own grid options
  (timestep spacing, Karras / lambda / exponential / beta sigmas, where the class has them), and on every
  fixed grid (trailing or uniform, Karras, log-SNR, quadratic, AYS-style) through ``timesteps=`` /
  ``sigmas=`` where its ``set_timesteps`` takes them (in this Diffusers only DPM-Solver++ for VP models).
- Ours, general (no model-specific file): UniPC-bh2 and DPM-Solver++2M (``S3Scheduler``), DEIS tAB3, iPNDM3
  and iPNDM4, each at its default grid and the config grids (trailing, Karras, log-SNR, quadratic); flow:
  our Euler, multistep2, multistep3, UniPC-bh2 and DEIS tAB3 at the default (shifted uniform) grid and on
  every fixed grid the Diffusers flow schedulers get (through ``sigmas=``; a choice on a fixed grid is
  shipped as a step schedule file holding that grid).
- Ours, model-specific: UniPC-bh2 / flow multistep2 with the shipped optimised step schedule
  (eval/schedules/steps_demo_*), DPM-Solver-v3 with the shipped statistics, and the S^3 schedule searched
  for each NFE (eval/schedules/demo_{ddpm,flow}_s3_nfe{n}.json: ``fastsample search --metric sample_rmse``
  on its own seeds, disjoint from the selection and held-out seeds here; the cost is in each file).

Writes benchmarks/results/recommend.{json,md} and the package data that ``fastsample.recommend`` reads
(fastsample/pipelines/recommendations/: recommendations.json and the step schedule files it names).

    nice -n 10 python benchmarks/bench_recommend.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
from protocol import replace_readme_block

import fastsample
from fastsample import DEISScheduler, DPMSolverV3Scheduler, RectifiedFlowScheduler, S3Scheduler
from fastsample._io import atomic_write, file_digest
from fastsample.formats.ems_file import model_fingerprint
from fastsample.formats.step_schedule import StepSchedule
from fastsample.pipelines.recommend import DATA_DIR, FORMAT, VERSION, network_config_digest
from fastsample.steps import Condition, SchedulerRunner, StepProblem, StepScheduleError, compute_teachers, fixed_grids
from fastsample.steps.models import demo
from fastsample.steps.optimize import combine, unit_errors
from fastsample.sweep.runner import steps_for_nfe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCHEDULES = ROOT / "eval" / "schedules"
PACKAGE = Path(fastsample.__file__).resolve().parent
SOURCE = "benchmarks/bench_recommend.py"
NFES = (4, 5, 6, 8, 10)
TARGET = {4: 0.7, 5: 0.7, 6: 0.7, 8: 0.85, 10: 0.85}  # ours / Diffusers' best (issue 14)
PROBLEM = dict(seeds=range(2), heldout_seeds=range(100, 104), batch_size=64, fine_steps=40, teacher_substeps=2)
# our config grids (fixed_grids names -> config keys): what a configured scheduler can carry
CONFIG_GRIDS = {
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"time_grid": "karras"},
    "logSNR": {"time_grid": "logSNR"},
    "quadratic": {"time_grid": "quadratic_t"},
}


# Diffusers' own grid options (where a class has the key): the grids it can run without ``timesteps=``
DIFFUSERS_CONFIG_GRIDS = {
    "trailing": {"timestep_spacing": "trailing"},
    "linspace": {"timestep_spacing": "linspace"},
    "karras": {"use_karras_sigmas": True},
    "lambdas": {"use_lambdas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
}


def with_config_grids(con: dict, cfg: dict) -> list[dict]:
    """A Diffusers contestant and its variants over the grid options its class has (not already set)."""
    keys = set(con["cls"].from_config(cfg, **con["config"]).config)
    out = [con]
    for g, extra in DIFFUSERS_CONFIG_GRIDS.items():
        if set(extra) <= keys and not set(extra) & set(con["config"]):
            out.append({**con, "label": f"{con['label']} {g}", "config": {**con["config"], **extra}, "grids": False})
    return out


def snapshot(name: str) -> str:
    """A copy of a shipped schedule file inside the package data, made before it is evaluated: what is
    evaluated is what recommend() returns, even if eval/schedules changes meanwhile."""
    dest = DATA_DIR / name
    if not dest.exists() or file_digest(dest) != file_digest(SCHEDULES / name):
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCHEDULES / name, dest)
    return str(dest)


def contestants(which: str, cfg: dict) -> list[dict]:
    """[{family, label, cls, config, grids: bool (also run on every fixed grid), nfes: None or a set}]."""

    def c(family, label, cls, nfes=None, grids=False, **config):
        return {"family": family, "label": label, "cls": cls, "config": config, "grids": grids, "nfes": nfes}

    def optimised_steps(name, cls, stem, **config):
        """One contestant per NFE on its shipped step schedule (eval/schedules/steps_demo_{stem}_nfe{n}.json)."""
        return [
            c("ours-model", f"{name} + optimised steps (ours)", cls, nfes={n}, **config,
              step_schedule_file=snapshot(f"steps_demo_{stem}_nfe{n}.json"))
            for n in NFES
        ]  # fmt: skip

    d = diffusers
    if which == "ddpm":
        ems = PACKAGE / "demo" / "weights" / "ddpm" / "ems.safetensors"
        out = [
            c("diffusers", "DDIM (diffusers)", d.DDIMScheduler, grids=True),
            c("diffusers", "DPM-Solver++ 2M (diffusers)", d.DPMSolverMultistepScheduler, grids=True, solver_order=2),
            c("diffusers", "DPM-Solver++ 3M (diffusers)", d.DPMSolverMultistepScheduler, grids=True, solver_order=3),
            c("diffusers", "UniPC bh2 (diffusers)", d.UniPCMultistepScheduler, grids=True, solver_type="bh2"),
            c("diffusers", "UniPC bh1 (diffusers)", d.UniPCMultistepScheduler, grids=True, solver_type="bh1"),
            c("diffusers", "DEIS (diffusers)", d.DEISMultistepScheduler, grids=True),
        ]
        for label, cls, kw in [
            ("UniPC-bh2 (ours)", S3Scheduler, {"builtin_schedule": "unipc-bh2"}),
            ("DPM-Solver++2M (ours)", S3Scheduler, {"builtin_schedule": "dpmsolver++2m"}),
            ("DEIS tAB3 (ours)", DEISScheduler, {"solver_order": 3, "deis_variant": "tab"}),
            ("DEIS iPNDM3 (ours)", DEISScheduler, {"solver_order": 3, "deis_variant": "ipndm"}),
            ("DEIS iPNDM4 (ours)", DEISScheduler, {"solver_order": 4, "deis_variant": "ipndm"}),
        ]:
            out.append(c("ours-general", label, cls, **kw))
            out += [c("ours-general", f"{label} {g}", cls, **kw, **extra) for g, extra in CONFIG_GRIDS.items()]
        out.append(c("ours-model", "DPM-Solver-v3 + statistics (ours)", DPMSolverV3Scheduler, ems_path=str(ems)))
        return out + optimised_steps("UniPC-bh2", S3Scheduler, "ddpm_unipc-bh2", builtin_schedule="unipc-bh2")
    ems = PACKAGE / "demo" / "weights" / "flow" / "ems.safetensors"
    uni = flow_config(cfg)
    out = [
        c("diffusers", "FlowMatch Euler (diffusers)", d.FlowMatchEulerDiscreteScheduler, grids=True),
        c("diffusers", "FlowMatch Heun (diffusers)", d.FlowMatchHeunDiscreteScheduler, grids=True),
        c("diffusers", "UniPC bh2 flow (diffusers)", d.UniPCMultistepScheduler, grids=True, **uni),
    ]
    out += [
        c("ours-general", f"{s} (ours)", RectifiedFlowScheduler, grids=True, solver=s)
        for s in ("euler", "multistep2", "multistep3")
    ]
    out += [
        c("ours-general", "UniPC-bh2 flow (ours)", S3Scheduler, grids=True, builtin_schedule="unipc-bh2", **uni),
        c(
            "ours-general",
            "DEIS tAB3 flow (ours)",
            DEISScheduler,
            grids=True,
            solver_order=3,
            deis_variant="tab",
            **uni,
        ),
    ]
    out.append(c("ours-model", "DPM-Solver-v3 + statistics (ours)", DPMSolverV3Scheduler, ems_path=str(ems)))
    return out + optimised_steps("multistep2", RectifiedFlowScheduler, "flow_multistep2", solver="multistep2")


def flow_config(cfg: dict) -> dict:
    """The config keys that run our (and Diffusers' UniPC) VP-form schedulers on the flow model's sigmas."""
    return dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=cfg.get("shift", 1.0))


def s3_searched(which: str, cfg: dict):
    """The S^3 schedules searched for the demo model at each NFE (eval/schedules/demo_{which}_s3_nfe{n}.json;
    searched on their own seeds, none of the selection or held-out seeds here). A generator: each file is
    copied into the package data when its contestant is evaluated (after the others)."""
    for n in NFES:
        config = {} if which == "ddpm" else flow_config(cfg)
        yield {
            "family": "ours-model",
            "label": "S3 searched (ours)",
            "cls": S3Scheduler,
            "config": {**config, "schedule_file": snapshot(f"demo_{which}_s3_nfe{n}.json")},
            "grids": False,
            "nfes": {n},
        }


def evaluate(which: str) -> dict:
    """Selection errors of every contestant x mode x NFE; held-out errors of every family's and label's best."""
    from fastsample import demo as shipped

    spec, shape = demo(which)
    pipe = shipped.load_ddpm_pipeline() if which == "ddpm" else shipped.load_flow_pipeline()
    cfg = dict(pipe.scheduler.config)
    problem = StepProblem(conditions=[Condition(shape)], **PROBLEM, **spec)
    t0 = time.process_time()
    teachers = compute_teachers(problem)
    teacher_cpu = time.process_time() - t0
    cond = problem.conditions[0]
    rows = []
    # Diffusers' own grid options as config variants; ours take every fixed grid through sigmas= / timesteps=
    # (our flow schedulers have the same config keys but do not honour all of them in flow mode)
    everyone = [
        v
        for con in contestants(which, cfg)
        for v in (with_config_grids(con, cfg) if con["grids"] and con["family"] == "diffusers" else [con])
    ]
    for con in itertools.chain(everyone, s3_searched(which, cfg)):
        sched = con["scheduler"] = con["cls"].from_config(cfg, **con["config"])
        con["digests"] = {k: file_digest(v) for k, v in con["config"].items() if k.endswith(("_file", "_path"))}
        runner = SchedulerRunner(sched, problem)
        for nfe in NFES:
            if con["nfes"] is not None and nfe not in con["nfes"]:
                continue
            modes, grid_of = {}, {}
            steps = steps_for_nfe(sched, nfe)
            if con["family"] != "diffusers" and steps != nfe:  # recommend() promises num_inference_steps = nfe
                continue
            if steps is not None:
                modes["default"] = lambda x, k, s=steps, r=runner: r.run_steps(s, x, k)
            if con["grids"] and nfe % runner.stages == 0:
                for g, grid in fixed_grids(problem, runner.steps_for(nfe)).items():
                    modes[g] = lambda x, k, grid=grid, r=runner: r.run(grid, x, k)
                    grid_of[g] = grid
            for mode, fn in modes.items():
                calls = problem.model_fn.calls
                try:
                    fn(problem.noise(cond, 0)[:1], cond)
                except StepScheduleError:  # DDIM takes no custom timesteps: its default grid only
                    continue
                if problem.model_fn.calls - calls != nfe:  # e.g. Heun's last Euler step on a given grid
                    continue
                err = combine(unit_errors(problem, fn, teachers, "selection"))["mean"]
                rows.append(
                    {
                        **{k: con[k] for k in ("family", "label")},
                        "nfe": nfe,
                        "mode": mode,
                        "selection": err,
                        "_fn": fn,
                        "_con": con,
                        "num_inference_steps": steps if mode == "default" else runner.steps_for(nfe),
                        "grid": grid_of[mode].tolist() if mode in grid_of else None,
                    }
                )
        print(which, con["label"], "done", flush=True)
    out = {
        "rows": [],
        "teacher_cpu_seconds": teacher_cpu,
        "fingerprint": model_fingerprint(pipe.unet),
        "network_config_digest": network_config_digest(pipe.unet),
        "scheduler_config": cfg,
    }
    for nfe in NFES:
        here = [r for r in rows if r["nfe"] == nfe]
        chosen = {}
        for key in ("diffusers", "ours-general", "ours"):
            cand = [r for r in here if r["family"] == key or (key == "ours" and r["family"].startswith("ours"))]
            chosen[key] = min(cand, key=lambda r: r["selection"])
        held, timesteps = {}, {}
        for r in chosen.values():
            ident = (r["label"], r["mode"])
            if ident not in held:
                held[ident] = combine(unit_errors(problem, r["_fn"], teachers, "heldout"))
                # what the scheduler ran (recommend()'s scheduler must run the same; tests/test_recommend.py)
                timesteps[ident] = [float(v) for v in r["_con"]["scheduler"].timesteps]
        entry = {"nfe": nfe, "selection": [{k: r[k] for k in ("family", "label", "mode", "selection")} for r in here]}
        for key, r in chosen.items():
            h = held[(r["label"], r["mode"])]
            entry[key] = {
                "label": r["label"],
                "mode": r["mode"],
                "selection": r["selection"],
                "heldout": h["mean"],
                "heldout_rms": h["rms"],
                "class": r["_con"]["cls"].__name__,
                "module": r["_con"]["cls"].__module__.split(".")[0],
                "config": r["_con"]["config"],
                "digests": r["_con"]["digests"],
                "num_inference_steps": r["num_inference_steps"],
                "grid": r["grid"],
                "timesteps": timesteps[(r["label"], r["mode"])],
            }
        entry["ratio"] = entry["ours"]["heldout"] / entry["diffusers"]["heldout"]
        entry["general_ratio"] = entry["ours-general"]["heldout"] / entry["diffusers"]["heldout"]
        target = TARGET.get(nfe)
        entry["target"] = target
        entry["missed_by"] = None if target is None or entry["ratio"] <= target else entry["ratio"] - target
        out["rows"].append(entry)
        print(which, nfe, entry["ours"]["label"], entry["ours"]["mode"], f"{entry['ratio']:.3f}", flush=True)
    return out


def package_choice(choice: dict, which: str, nfe: int) -> dict:
    """A choice as recommend() builds it; file keys relative to the fastsample package (schedule files
    outside the package are copied next to the data). A choice made on a fixed grid (not its scheduler's
    default) carries that grid as a step schedule file, written next to the data."""
    config = {}
    if choice["grid"] is not None:
        flow = which == "flow"
        slug = re.sub(r"[^a-z0-9]+", "-", choice["label"].lower()).strip("-")
        dest = DATA_DIR / f"grid_demo_{which}_{slug}_{choice['mode']}_nfe{nfe}.json"
        StepSchedule(
            np.asarray(choice["grid"]),
            "flow_sigma" if flow else "t",
            nfe,
            solver={"class": choice["class"], "config": choice["config"]},
            method={"name": f"fixed grid {choice['mode']!r} (fastsample.steps.fixed_grids)", "source": SOURCE},
            report={"heldout_error": choice["heldout"], "selection_error": choice["selection"]},
        ).save(dest)
        config["step_schedule_file"] = {
            "package_file": dest.relative_to(PACKAGE).as_posix(),
            "sha256": file_digest(dest),
        }
    for k, v in choice["config"].items():
        if k.endswith(("_file", "_path")):
            p = Path(v)
            if p.is_relative_to(PACKAGE):
                config[k] = {"package_file": p.relative_to(PACKAGE).as_posix()}
            else:
                dest = DATA_DIR / p.name
                shutil.copyfile(p, dest)
                if file_digest(dest) != choice["digests"][k]:
                    raise SystemExit(f"{p} changed while this benchmark ran; rerun it")
                config[k] = {"package_file": dest.relative_to(PACKAGE).as_posix(), "sha256": file_digest(dest)}
        else:
            config[k] = v
    return {
        "label": choice["label"],
        "class": choice["class"],
        "config": config,
        "num_inference_steps": choice["num_inference_steps"],
        "mode": choice["mode"],
        "heldout_error": choice["heldout"],
    }


def markdown(res: dict) -> str:
    lines = [
        "# Which scheduler for which NFE: the demo models, held out",
        "",
        "Generated by `benchmarks/bench_recommend.py`. Error: per-sample RMSE against a reference solution of the",
        f"same noise (DPM-Solver++(3M), 80 steps), held-out seeds {list(PROBLEM['heldout_seeds'])} x "
        f"{PROBLEM['batch_size']} samples; every configuration chosen on selection seeds {list(PROBLEM['seeds'])}.",
        "Diffusers' best: the best of its schedulers at their pipeline defaults, with their grid options and on",
        "every fixed grid. ratio = ours (best of all ours, chosen on selection) / Diffusers' best. Target: <= 0.7 at",
        "NFE 4-6, <= 0.85 at NFE 8 and 10. general: our best without a model-specific file (what",
        "`fastsample.recommend` gives an unknown model).",
        "",
    ]
    for which, r in res["models"].items():
        lines += [
            f"## demo {which}",
            "",
            "| NFE | ours (held-out) | Diffusers' best (held-out) | ratio | target | general (ours) | general ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in r["rows"]:
            o, d, g = e["ours"], e["diffusers"], e["ours-general"]
            t = "-" if e["target"] is None else ("met" if e["missed_by"] is None else f"missed by {e['missed_by']:.2f}")
            lines.append(
                f"| {e['nfe']} | {o['label']}, {o['mode']}: {o['heldout']:.4f} | {d['label']}, {d['mode']}: "
                f"{d['heldout']:.4f} | {e['ratio']:.3f} | {t} | {g['label']}: {g['heldout']:.4f} | "
                f"{e['general_ratio']:.3f} |"
            )
        counts = {}
        for e in r["rows"]:
            for s in e["selection"]:
                counts.setdefault(s["family"], set()).add((s["label"], s["mode"]))
        lines += [
            "",
            "Configurations chosen from: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(counts.items())),
            f"; reference CPU {r['teacher_cpu_seconds']:.0f} s.",
            "",
        ]
    return "\n".join(lines) + "\n"


README_BEGIN, README_END = (
    "<!-- recommend table: begin (benchmarks/bench_recommend.py) -->",
    "<!-- recommend table: end -->",
)


def readme_table(res: dict, data: dict) -> str:
    """The README's "which scheduler for which NFE" table: recommend()'s choice per model and NFE, its held-out
    error against Diffusers' best (ratio), and the general default for other models."""
    lines = [
        "| NFE | demo DDPM: `recommend` (ratio to Diffusers' best) | demo flow: `recommend` (ratio) | "
        "other VP models | other flow models |",
        "|---|---|---|---|---|",
    ]
    rows = {w: {e["nfe"]: e for e in r["rows"]} for w, r in res["models"].items()}
    for nfe in NFES:
        cells = [f"{rows[w][nfe]['ours']['label']} ({rows[w][nfe]['ratio']:.2f}x)" for w in ("ddpm", "flow")]
        cells += [data["general"][k][str(nfe)]["label"] for k in ("vp", "flow")]
        lines.append(f"| {nfe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.parse_args(argv)
    torch.set_num_threads(1)  # two OpenMP threads on a shared 2-core machine run ~100x slower (spin waits)
    res = {
        "models": {w: evaluate(w) for w in ("ddpm", "flow")},
        "load_average": list(os.getloadavg()),
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
    }
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    data = {
        "format": FORMAT,
        "version": VERSION,
        "source": SOURCE,
        "models": {},
        "general": {},
    }
    for which, r in res["models"].items():
        kind = "vp" if which == "ddpm" else "flow"
        model, general = {}, {}
        for e in r["rows"]:  # a configured scheduler carries each "ours" choice (a fixed grid: as a step file)
            for src, dst in ((e["ours"], model), (e["ours-general"], general)):
                dst[str(e["nfe"])] = {
                    **package_choice(src, which, e["nfe"]),
                    "diffusers_best": f"{e['diffusers']['label']}, {e['diffusers']['mode']}",
                    "diffusers_best_heldout_error": e["diffusers"]["heldout"],
                }
        data["models"][f"demo-{which}"] = {
            "kind": kind,
            "fingerprint": r["fingerprint"],
            "network_config_digest": r["network_config_digest"],
            "nfe": model,
        }
        data["general"][kind] = general
    atomic_write(DATA_DIR / "recommendations.json", json.dumps(data, indent=1) + "\n")
    named = {Path(v).name for v in re.findall(r'"package_file": "([^"]+)"', json.dumps(data))}
    for f in DATA_DIR.glob("*.json"):  # copies of files no choice names any more (package data of this script)
        if f.name != "recommendations.json" and f.name not in named:
            f.unlink()
    for r in res["models"].values():
        for e in r["rows"]:
            for v in e.values():
                if isinstance(v, dict):
                    v["config"] = {
                        k: (str(Path(x).relative_to(ROOT)) if isinstance(x, str) and x.startswith(str(ROOT)) else x)
                        for k, x in v.get("config", {}).items()
                    }
    atomic_write(RESULTS / "recommend.json", json.dumps(res, indent=1, default=str) + "\n")
    atomic_write(RESULTS / "recommend.md", markdown(res))
    replace_readme_block(README_BEGIN, README_END, readme_table(res, data))
    print((RESULTS / "recommend.md").read_text())


if __name__ == "__main__":
    main()
