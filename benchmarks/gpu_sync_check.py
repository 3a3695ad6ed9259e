"""GPU check: a scheduler step makes no host-device synchronisation (needs a CUDA device).

For each scheduler (DPM-Solver-v3 with the demo DDPM's statistics, DPM-Solver-v3 without statistics, DEIS)
the demo DDPM UNet is sampled on the GPU with ``torch.cuda.set_sync_debug_mode("error")`` around every
``step`` but the first (which locates the run's start index from the timestep) and the last (which, by
design, reads the deferred NaN flag once per run). Any synchronising CUDA call inside a checked step raises.
A second run feeds a NaN model output at step 2 and must raise ``NonFiniteModelOutput`` at the last step.

Run: ``python benchmarks/gpu_sync_check.py [--cpu]``; writes benchmarks/results/gpu_sync.json; exit status 1 on a
failed check, 2 without a CUDA device.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def schedulers(cfg):
    from fastsample import DEISScheduler, DPMSolverV3Scheduler

    ems = Path(__file__).resolve().parents[1] / "fastsample/demo/weights/ddpm/ems.safetensors"
    return {
        "DPMSolverV3Scheduler (demo EMS, corrector)": DPMSolverV3Scheduler.from_config(
            cfg, ems_path=str(ems), use_corrector=True
        ),
        "DPMSolverV3Scheduler (no EMS)": DPMSolverV3Scheduler.from_config(cfg),
        "DEISScheduler": DEISScheduler.from_config(cfg),
    }


def run(sched, unet, n: int, dev: torch.device, nan_at: int | None = None) -> dict:
    from fastsample.solvers.sampling import NonFiniteModelOutput

    sched.set_timesteps(n, device=dev)
    x = torch.randn((8, 1, 16, 16), device=dev, generator=torch.Generator(dev).manual_seed(0))
    checked, raised = 0, None
    try:
        with torch.no_grad():
            for k, t in enumerate(sched.timesteps):
                out = unet(x, t).sample
                if k == nan_at:
                    out = out * float("nan")
                guard = 0 < k < len(sched.timesteps) - 1 and dev.type == "cuda"
                if guard:
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    x = sched.step(out, t, x).prev_sample
                finally:
                    if guard:
                        torch.cuda.set_sync_debug_mode("default")
                checked += guard
    except NonFiniteModelOutput as e:
        raised = str(e)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"checked_steps": checked, "finite": bool(torch.isfinite(x).all()), "nan_error": raised}


def main(argv=None) -> int:
    cpu = "--cpu" in (sys.argv[1:] if argv is None else argv)  # a dry run of the flow, without the sync guard
    if not cpu and not torch.cuda.is_available():
        print("gpu_sync_check needs a CUDA device (--cpu: dry run of the same flow on the CPU)")
        return 2
    from fastsample.demo import load_ddpm_pipeline

    dev = torch.device("cpu" if cpu else "cuda")
    pipe = load_ddpm_pipeline()
    unet = pipe.unet.to(dev).eval()
    name = "cpu (dry run)" if cpu else torch.cuda.get_device_name()
    res, ok = {"device": name, "torch": torch.__version__, "checks": {}}, True
    for name, sched in schedulers(pipe.scheduler.config).items():
        r = {}
        try:
            r["clean"] = run(sched, unet, 10, dev=dev)
            r["nan_at_2"] = run(sched, unet, 10, nan_at=2, dev=dev)
            clean_ok = r["clean"]["finite"] and r["clean"]["nan_error"] is None
            r["pass"] = clean_ok and "step 2" in (r["nan_at_2"]["nan_error"] or "")
        except RuntimeError as e:  # the sync debug mode raises RuntimeError on a synchronising call
            r = {"pass": False, "error": str(e)}
        ok &= r["pass"]
        res["checks"][name] = r
        print(name, r, flush=True)
    if not cpu:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "gpu_sync.json").write_text(json.dumps(res, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
