"""Quality of the shipped demo models: Frechet distance in the demo classifier's feature space.

Usage: ``python benchmarks/bench_demo_models.py [--which ddpm|flow|all] [--num-samples 5000]``.

Compares ``--num-samples`` samples of each model with the 300 held-out digits (Heusel et al.,
arXiv 1706.08500, with :class:`~fastsample.demo.models.DigitsClassifier` features in place of
InceptionV3), next to the floor: the distance between the 1,497 train and the held-out images.
DDPM: ``DDIMScheduler`` (eta = 0, trailing spacing, no clipping: the probability-flow ODE,
Song et al., arXiv 2010.02502) in the real ``DDPMPipeline``; flow: ``FlowMatchEulerDiscreteScheduler``
in :class:`~fastsample.pipelines.RectifiedFlowPipeline`. Also the classifier's held-out accuracy.
Results are merged into ``benchmarks/results/demo_models.json`` and ``.md`` (one model per run is
allowed, so the two models can be sampled by two processes; rewritten after every batch, with the
sample count so far), and sample grids (first batch) go to
``docs/demo_{ddpm,flow}.png``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from fastsample.demo import digits_split, load_classifier, load_ddpm_pipeline, load_flow_pipeline
from fastsample.fid import frechet_distance

ROOT = Path(__file__).resolve().parents[1]


def stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,), covariance (F, F)) in float64 of (N, F) features."""
    f = features.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


@torch.no_grad()
def features_of(classifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """(N, F) float32 features of (N, 1, 16, 16) images in [-1, 1]."""
    return torch.cat([classifier.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def save_grid(images: torch.Tensor, path: Path, rows: int = 10, scale: int = 4) -> None:
    """A rows x rows PNG grid of (N, 1, H, W) images in [-1, 1], nearest-neighbour upscaled."""
    x = ((images[: rows * rows, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, h, w = x.shape
    grid = torch.full((rows * (h + 1) + 1, rows * (w + 1) + 1), 128, dtype=torch.uint8)
    for k in range(n):
        r, c = divmod(k, rows)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = x[k]
    img = Image.fromarray(grid.numpy(), mode="L")
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


@torch.no_grad()
def sample_batches(which: str, num_samples: int, steps: int, batch_size: int, seed: int, weights=None):
    """Yields (n, 1, 16, 16) sample batches in [-1, 1] from the ``which`` model (shipped, or under ``weights``)."""
    path = None if weights is None else Path(weights) / which
    if which == "ddpm":
        pipe = load_ddpm_pipeline(path=path)
        config = pipe.scheduler.config
        pipe.scheduler = DDIMScheduler.from_config(config, clip_sample=False, timestep_spacing="trailing")
    else:
        pipe = load_flow_pipeline(path=path)
    for b in range(math.ceil(num_samples / batch_size)):
        n = min(batch_size, num_samples - b * batch_size)
        gen = torch.Generator().manual_seed(seed + b)
        yield pipe(batch_size=n, num_inference_steps=steps, generator=gen, output_type="pt").images * 2 - 1


def write_results(update: dict, results: Path) -> dict:
    """Merge ``update`` into ``results/demo_models.json`` under a file lock; rewrite ``demo_models.md``."""
    results.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "fastsample_bench_demo_models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = results / "demo_models.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault("models", {}).update(update.pop("models", {}))
        data.update(update)
        path.write_text(json.dumps(data, indent=2) + "\n")
        (results / "demo_models.md").write_text(markdown(data))
    return data


def markdown(data: dict) -> str:
    floor = data["fd_floor_train_vs_heldout"]
    lines = [
        "# Demo models: Frechet distance in the digits-classifier feature space",
        "",
        f"Held-out images: {data['num_heldout']}; train images: {data['num_train']}; "
        f"feature dim: {data['feature_dim']}; classifier held-out accuracy: {data['classifier_heldout_accuracy']:.4f}.",
        "",
        "| model | sampler | steps | samples | FD to held-out | FD / floor | sampling time (s) |",
        "|---|---|---|---|---|---|---|",
        f"| train images (floor) | - | - | {data['num_train']} | {floor:.3f} | 1.00 | - |",
    ]
    for name, m in sorted(data.get("models", {}).items()):
        lines.append(
            f"| {name} | {m['sampler']} | {m['steps']} | {m['num_samples']} | {m['fd']:.3f} | "
            f"{m['fd'] / floor:.2f} | {m['sampling_seconds']:.0f} |"
        )
    lines += ["", f"Environment: {data['environment']}", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["ddpm", "flow", "all", "none"], default="all")
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", type=Path, default=None, help="weights root (default: the shipped ones)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train, heldout = digits_split()
    classifier = load_classifier(path=None if args.weights is None else args.weights / "classifier")
    f_train, f_held = features_of(classifier, train.images), features_of(classifier, heldout.images)
    mu_h, cov_h = stats(f_held)
    with torch.no_grad():
        acc = (classifier(heldout.images).argmax(1) == heldout.labels).double().mean().item()
    update = {
        "num_train": len(train.images),
        "num_heldout": len(heldout.images),
        "feature_dim": f_held.shape[1],
        "classifier_heldout_accuracy": acc,
        "fd_floor_train_vs_heldout": frechet_distance(*stats(f_train), mu_h, cov_h),
        "environment": f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} CPU thread(s), float32",
        "models": {},
    }
    samplers = {"ddpm": "DDIM (eta=0, trailing)", "flow": "FlowMatchEuler (shift=1)"}
    for which in ("ddpm", "flow"):
        if args.which not in (which, "all"):
            continue
        start, samples = time.time(), []
        for batch in sample_batches(which, args.num_samples, args.steps, args.batch_size, args.seed, args.weights):
            samples.append(batch)
            x = torch.cat(samples)
            if len(samples) == 1:
                args.docs.mkdir(parents=True, exist_ok=True)
                save_grid(x, args.docs / f"demo_{which}.png")
            with torch.no_grad():
                labels = classifier(x).argmax(1)
            result = {
                "sampler": samplers[which],
                "steps": args.steps,
                "num_samples": len(x),
                "fd": frechet_distance(*stats(features_of(classifier, x)), mu_h, cov_h),
                "class_histogram": torch.bincount(labels, minlength=10).tolist(),
                "sampling_seconds": time.time() - start,
            }
            write_results({**update, "models": {which: result}}, args.results)
            print(f"{which}: {len(x)} samples, FD {result['fd']:.4f} ({result['sampling_seconds']:.0f}s)", flush=True)
    data = write_results(update, args.results)
    print(markdown(data))


if __name__ == "__main__":
    main()
