"""Cost of each metric of ``fastsample fid --metrics`` on the CPU, per 1000 images.

- ``encoders``: seconds per 1000 images through each encoder, preprocessing (resize, normalisation) included,
  from uint8 64 x 64 images, best of ``--repeat`` timed batches of ``--batch`` images (extrapolated to 1000).
  The networks have the full published architectures with random weights, built from their configs and
  loaded with ``from_pretrained`` like the real ones (speed does not depend on the weight values):
  the FID InceptionV3 (pool3, 299 x 299), DINOv2 ViT-L/14 as ``facebook/dinov2-large`` (224 x 224, dgm-eval's
  FD-DINOv2 encoder) and CLIP ViT-L/14@336 as ``openai/clip-vit-large-patch14-336`` (CMMD's encoder).
- ``metrics``: seconds for each metric from 1000 real and 1000 generated features of its encoder's
  dimension (random features; the Frechet distances take the low-rank path there, as n < D).

Usage: ``python benchmarks/bench_metric_cost.py [--threads 2] [--batch 4] [--repeat 2]``.
Writes ``benchmarks/results/metric_cost.json`` and ``metric_cost.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from fastsample.fid import FIDInceptionV3, frechet_distance_features, kernel_inception_distance, rbf_mmd2
from fastsample.fid.encoders import CLIPEncoder, DINOv2Encoder
from fastsample.fid.manifold import precision_recall_density_coverage

RESULTS = Path(__file__).resolve().parent / "results"
N = 1000


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _encoders(tmp: Path):
    """(name, builder) of each encoder at its published size; builders save a random network and load it."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    def dinov2():
        cfg = Dinov2Config(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=518
        )
        Dinov2Model(cfg).save_pretrained(tmp / "dinov2")
        return DINOv2Encoder(tmp / "dinov2")

    def clip():
        cfg = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        )
        CLIPVisionModelWithProjection(cfg).save_pretrained(tmp / "clip")
        return CLIPEncoder(tmp / "clip")

    return {
        "inception (FID InceptionV3, pool3)": lambda: FIDInceptionV3("random"),
        "dinov2 (ViT-L/14, 224)": dinov2,
        "clip (ViT-L/14@336)": clip,
    }


def bench_encoders(batch: int, repeat: int) -> dict:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8, generator=g)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in _encoders(Path(tmp)).items():
            net = build()
            params = sum(p.numel() for p in net.parameters())
            with torch.no_grad():
                net(images[:1])  # warm-up
                t = _best(functools.partial(net, images), repeat)
            out[name] = {
                "parameters_millions": params / 1e6,
                "feature_dim": net.num_features,
                "seconds_per_batch": t,
                "seconds_per_1k_images": t * N / batch,
            }
            print(name, out[name], flush=True)
    return {"batch": batch, "repeat": repeat, "image_size": 64, "encoders": out}


def bench_metrics(repeat: int) -> dict:
    g = torch.Generator().manual_seed(0)

    def pair(d):
        return torch.randn(N, d, generator=g, dtype=torch.float64), torch.randn(N, d, generator=g) + 0.1

    incep, dino, clip = pair(2048), pair(1024), pair(768)
    clip = tuple(x / x.norm(dim=1, keepdim=True) for x in clip)
    runs = {
        "fid (2048-d)": lambda: frechet_distance_features(*incep),
        "kid (2048-d, 100 subsets of 1000)": lambda: kernel_inception_distance(
            incep[0].float(), incep[1], 100, N, generator=torch.Generator().manual_seed(0)
        ),
        "prdc (2048-d, k=5)": lambda: precision_recall_density_coverage(incep[0].float(), incep[1], 5),
        "fd_dinov2 (1024-d)": lambda: frechet_distance_features(*dino),
        "cmmd (768-d)": lambda: rbf_mmd2(clip[0].float(), clip[1]),
    }
    return {name: {"seconds_per_1k_pairs": _best(fn, repeat)} for name, fn in runs.items()}


def _md(r: dict) -> str:
    e = r["encoders"]
    lines = [
        "# Metric cost on the CPU, per 1000 images",
        "",
        f"Machine: {r['machine']}; torch threads: {r['threads']}; torch {r['torch']}; run {r['run_at']}. "
        "CPU shared with other jobs, so absolute times are noisy.",
        "",
        f"## Encoders (random weights, published sizes; batches of {e['batch']} images of {e['image_size']} x "
        f"{e['image_size']}, best of {e['repeat']}, extrapolated to 1000)",
        "",
        "| encoder | parameters (M) | feature dim | seconds per 1000 images |",
        "|---|---|---|---|",
    ]
    for name, v in e["encoders"].items():
        lines.append(
            f"| {name} | {v['parameters_millions']:.1f} | {v['feature_dim']} | {v['seconds_per_1k_images']:.3g} |"
        )
    lines += [
        "",
        "## Metrics from features, 1000 real and 1000 generated",
        "",
        "| metric | seconds |",
        "|---|---|",
    ]
    for name, v in r["metrics"].items():
        lines.append(f"| {name} | {v['seconds_per_1k_pairs']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "threads": args.threads,
        "torch": torch.__version__,
        "run_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "encoders": bench_encoders(args.batch, args.repeat),
        "metrics": bench_metrics(args.repeat),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metric_cost.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "metric_cost.md").write_text(_md(results))
    print(_md(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
