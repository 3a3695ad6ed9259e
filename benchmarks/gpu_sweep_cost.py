"""Cost of one sweep cell of each recipe in eval/configs/, split into sampling, feature extraction and statistics.

Each recipe's model class is built as a tiny random pipeline at the recipe's shapes (tests/tiny_pipelines.py):
CIFAR-10 DDPM 32x32 pixels; DiT, SD 1.5 and SD3 with 32x32x4 latents decoded by an 8x VAE to 256x256 images.
It is saved with save_pretrained and loaded by the sweep's own ``build_source``, sampled with the recipe's first
scheduler at NFE 10 and its first guidance scale (DiT / SD / SD3 double the batch when guidance > 1), then
measured as the sweep measures: Inception pool3 features (``FIDInceptionV3``, random weights: same cost as the
real ones), float64 feature statistics, and the Frechet distance to a reference (a 2048 x 2048 matrix square
root). The networks are tiny, so sampling times are floors for the real models; feature and statistics times
are the real ones. Times are synchronised with the device after each phase.

Run: ``python benchmarks/gpu_sweep_cost.py`` on a GPU (1000 samples, batch 64), or
``python benchmarks/gpu_sweep_cost.py --device cpu --samples 64``; writes benchmarks/results/gpu_sweep_cost.json,
one entry per device kind (a CPU run keeps an earlier GPU entry and vice versa).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_sweep_cost.json"
NFE = 10

# recipe file -> (tiny pipeline builder, its keyword arguments, model table additions)
RECIPES = {
    "cifar10_fid50k.toml": ("ddpm_pipeline", {"sample_size": 32}, {}),
    "imagenet256_dit_fid50k.toml": ("dit_pipeline", {"sample_size": 32, "vae_blocks": 4}, {"num_classes": 1000}),
    "coco30k_sd15.toml": ("sd_pipeline", {"sample_size": 32, "vae_blocks": 4}, {}),
    "coco30k_sd3.toml": (
        "sd3_pipeline",
        {"sample_size": 32, "vae_blocks": 4},
        {"call_kwargs": {"height": 256, "width": 256, "max_sequence_length": 16}},
    ),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cell(recipe: str, samples: int, batch: int, device: torch.device, workdir: Path) -> dict:
    """One cell of ``recipe`` on its tiny pipeline; seconds per phase."""
    import tiny_pipelines

    from fastsample.fid import FeatureStatistics
    from fastsample.fid.inception import FIDInceptionV3
    from fastsample.sweep.config import SchedulerSpec, _read_raw
    from fastsample.sweep.runner import steps_for_nfe
    from fastsample.sweep.sources import build_source

    builder, kwargs, model_extra = RECIPES[recipe]
    raw = _read_raw(ROOT / "eval" / "configs" / recipe)
    dtype = raw["model"].get("torch_dtype", "float32")
    if device.type == "cpu" and dtype == "float16":
        dtype = "float32"  # float16 is refused on the CPU; the GPU run keeps the recipe's dtype
    path = workdir / builder
    getattr(tiny_pipelines, builder)(**kwargs).save_pretrained(path)
    kind = "unet" if builder == "ddpm_pipeline" else "pipeline"
    model = {"kind": kind, "path": str(path), "torch_dtype": dtype, **model_extra}
    if kind == "pipeline" and "num_classes" not in model_extra:
        model["prompts"] = ["a red bus", "two cats on a sofa", "a bowl of fruit"]
    source = build_source(model, seed=0, device=device)
    spec = raw["schedulers"][0]
    spec = SchedulerSpec(spec["name"], spec.get("label", spec["name"]), spec.get("config", {}))
    scheduler = spec.build(source.scheduler_config)
    n_steps = steps_for_nfe(scheduler, NFE)
    guidance = float(raw["sweep"].get("guidance_scales", [1.0])[0])
    net = FIDInceptionV3("random", resize=raw["metric"].get("resize", "pytorch-fid")).to(device).eval()
    t0 = time.perf_counter()  # the reference is prepared once per sweep, not per cell
    g = torch.Generator().manual_seed(0)
    a = torch.randn(net.dims, net.dims, generator=g, dtype=torch.float64) / net.dims**0.5
    reference = FeatureStatistics.from_moments(torch.zeros(net.dims), a @ a.mT).to(device).reference()
    _sync(device)
    reference_seconds = time.perf_counter() - t0
    stats = FeatureStatistics()
    seconds = {"sampling": 0.0, "features": 0.0, "statistics": 0.0}
    shape = None
    with torch.no_grad():
        for i in range(0, samples, batch):
            indices = list(range(i, min(i + batch, samples)))
            t0 = time.perf_counter()
            images = source.generate(scheduler, n_steps, indices, guidance)
            _sync(device)
            t1 = time.perf_counter()
            feats = net(images).double()
            _sync(device)
            t2 = time.perf_counter()
            stats.update(feats)
            _sync(device)
            seconds["sampling"] += t1 - t0
            seconds["features"] += t2 - t1
            seconds["statistics"] += time.perf_counter() - t2
            shape = list(images.shape[1:])
        t0 = time.perf_counter()
        float(stats.distance_to(reference))
        seconds["statistics"] += time.perf_counter() - t0
    total = sum(seconds.values())
    return {
        "recipe": recipe,
        "model_class": type(getattr(source, "pipe", None) or source.unet).__name__,
        "scheduler": spec.label,
        "nfe": NFE,
        "num_inference_steps": n_steps,
        "guidance": guidance,
        "torch_dtype": dtype,
        "image_shape": shape,
        "samples": samples,
        "batch_size": batch,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "share": {k: round(v / total, 3) for k, v in seconds.items()},
        "seconds_per_cell": round(total, 3),
        "ms_per_sample": round(1000 * total / samples, 2),
        "reference_setup_seconds_once_per_sweep": round(reference_seconds, 3),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_sweep_cost: no CUDA device; run with --device cpu --samples 64 for the CPU figures", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "tests"))
    torch.manual_seed(0)
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            cells.append(cell(recipe, args.samples, args.batch, device, Path(tmp)))
            print(json.dumps(cells[-1]), flush=True)
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results[device.type] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": "python benchmarks/gpu_sweep_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cells": cells,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
