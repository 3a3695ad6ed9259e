"""Sweeps of schedulers x NFE x guidance with a Frechet-distance metric: ``fastsample sweep CONFIG``.

A sweep config (TOML, or YAML when PyYAML is installed) names a model, a feature network with its
reference statistics, a list of schedulers (ours and Diffusers' by name, with config overrides),
NFE values, guidance scales and the sample count. Generated batches stream straight into float64
feature sums (``fastsample.fid.FeatureStatistics``); nothing but the sums is kept.

Guarantees:
- Per-sample seeds: sample i's starting noise comes from its own generator, so an image does not
  depend on batch size or process count, and every cell sees the same noises (common random
  numbers make scheduler comparisons less noisy).
- Each finished cell is written atomically (temporary file + rename) under ``OUTPUT/cells/`` and
  skipped on rerun; a cell's file name carries a hash of everything that determines its value, so
  a changed config never reuses a stale cell. An interrupted sweep resumes where it stopped.
- Multi-process through ``accelerate launch``: ranks take disjoint sample indices and the sums
  are all-reduced, giving the statistics of a single process to float64 round-off.
- Results: ``results.json``, ``results.csv``, ``results.md``, one ``<metric>_vs_nfe.png`` per metric
  (the train/held-out floor drawn on the FD plot) and per NFE a sample sheet ``samples_nfe<N>.png``
  (same seeds across schedulers), each written atomically; a progress bar runs inside each cell.
  ``[metric] metrics = ["fd", "kid", "prdc"]`` adds metrics (see :mod:`fastsample.sweep_report`).

This module is evaluation code: it imports the library, and the library never imports it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import sweep_report
from .sweep_report import SHEET_SAMPLES, sweep_metrics

__all__ = ["SweepConfig", "load_config", "run_sweep", "main", "atomic_write"]

FORMAT_VERSION = 1


# --- configuration -------------------------------------------------------------------------------


@dataclass
class SchedulerSpec:
    """One scheduler column: ``name`` is 'fastsample.X' or 'diffusers.X'; ``config`` overrides keys."""

    name: str
    label: str
    config: dict = field(default_factory=dict)

    def build(self, base_config):
        module, _, cls_name = self.name.rpartition(".")
        if module not in ("fastsample", "diffusers"):
            raise ValueError(f"scheduler {self.name!r}: name it 'fastsample.<Class>' or 'diffusers.<Class>'")
        cls = getattr(importlib.import_module(module), cls_name, None)
        if cls is None:
            raise ValueError(f"scheduler {self.name!r}: {module} has no class {cls_name!r}")
        return cls.from_config(base_config, **self.config)


@dataclass
class SweepConfig:
    name: str
    output: Path
    model: dict
    metric: dict
    schedulers: list[SchedulerSpec]
    nfe: list[int]
    guidance_scales: list[float] = field(default_factory=lambda: [1.0])
    num_samples: int = 1000
    batch_size: int = 250
    seed: int = 0
    device: str = "auto"


def _require(d: dict, key: str, where: str):
    if key not in d:
        raise ValueError(f"sweep config: missing key '{key}' in [{where}]")
    return d[key]


def load_config(path: str | os.PathLike, output: str | None = None) -> SweepConfig:
    """Read and validate a sweep config.

    Relative paths (``output``, scheduler config keys ending in ``_path`` or ``_file``) are relative
    to the config file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep config {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ImportError("YAML sweep configs need PyYAML (`pip install pyyaml`); or use TOML") from e
        raw = yaml.safe_load(text)
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        raw = tomllib.loads(text)
    sweep = _require(raw, "sweep", "top level")
    scheds = _require(raw, "schedulers", "top level")
    if not scheds:
        raise ValueError("sweep config: [[schedulers]] is empty")
    specs = []
    for i, s in enumerate(scheds):
        name = _require(s, "name", f"schedulers #{i}")
        config = {
            k: str((path.parent / v).resolve()) if k.endswith(("_path", "_file")) and isinstance(v, str) else v
            for k, v in s.get("config", {}).items()
        }
        specs.append(SchedulerSpec(name=name, label=s.get("label", name.rpartition(".")[2]), config=config))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"sweep config: scheduler labels must be unique, got {labels}")
    nfe = [int(n) for n in _require(sweep, "nfe", "sweep")]
    if not nfe or min(nfe) < 1:
        raise ValueError(f"sweep config: nfe must be a non-empty list of positive integers, got {nfe}")
    out = Path(output or sweep.get("output", f"out/{sweep.get('name', path.stem)}"))
    if not out.is_absolute() and output is None:
        out = (path.parent / out).resolve()
    cfg = SweepConfig(
        name=sweep.get("name", path.stem),
        output=out,
        model=_require(raw, "model", "top level"),
        metric=_require(raw, "metric", "top level"),
        schedulers=specs,
        nfe=nfe,
        guidance_scales=[float(g) for g in sweep.get("guidance_scales", [1.0])],
        num_samples=int(sweep.get("num_samples", 1000)),
        batch_size=int(sweep.get("batch_size", 250)),
        seed=int(sweep.get("seed", 0)),
        device=str(sweep.get("device", "auto")),
    )
    if cfg.num_samples < 2 or cfg.batch_size < 1:
        raise ValueError("sweep config: need num_samples >= 2 and batch_size >= 1")
    sweep_metrics(cfg.metric)
    return cfg


# --- files -----------------------------------------------------------------------------------------


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cell(path: Path) -> dict:
    try:
        cell = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"results file {path} is corrupt ({e}); delete it to recompute that cell") from e
    if not isinstance(cell, dict) or cell.get("format_version") != FORMAT_VERSION or "fd" not in cell:
        raise ValueError(f"results file {path} is not a sweep cell of format {FORMAT_VERSION}; delete it to recompute")
    return cell


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- models and features ------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class UNetSource:
    """Unconditional (or class-conditional) UNet2DModel with its training scheduler config.

    ``generate(scheduler, n_steps, indices, guidance)`` returns images in [0, 1], float32,
    (B, C, H, W), each from noise seeded by its sample index.
    """

    def __init__(self, unet, scheduler_config, seed: int, device, num_classes: int | None = None):
        self.unet = unet.to(device).eval()
        self.scheduler_config = scheduler_config
        self.seed, self.device, self.num_classes = seed, device, num_classes
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.shape = (unet.config.in_channels, *size)
        self.identity = {"unet": unet.config.get("_name_or_path", "") or _hash(dict(unet.config)), "shape": self.shape}

    def noise(self, indices) -> torch.Tensor:
        out = []
        for i in indices:
            g = torch.Generator().manual_seed((self.seed << 32) + int(i))
            out.append(torch.randn(self.shape, generator=g))
        return torch.stack(out).to(self.device)

    @torch.no_grad()
    def generate(self, scheduler, n_steps: int, indices, guidance: float) -> torch.Tensor:
        if guidance != 1.0:
            raise ValueError("guidance scales other than 1 need a conditional pipeline model (kind = 'pipeline')")
        scheduler.set_timesteps(n_steps, device=self.device)
        x = self.noise(indices) * scheduler.init_noise_sigma
        labels = None
        if self.num_classes:
            labels = torch.as_tensor([int(i) % self.num_classes for i in indices], device=self.device)
        for t in scheduler.timesteps:
            out = self.unet(scheduler.scale_model_input(x, t), t, class_labels=labels).sample
            x = scheduler.step(out, t, x).prev_sample
        return (x.float().clamp(-1, 1) + 1) / 2


class PipelineSource:
    """Any Diffusers pipeline that takes ``latents``; prompts or class labels cycle over sample indices."""

    def __init__(self, pipe, spec: dict, seed: int, device):
        self.pipe = pipe.to(device)
        self.scheduler_config = pipe.scheduler.config
        self.spec, self.seed, self.device = spec, seed, device
        self.prompts = spec.get("prompts")
        self.class_labels = spec.get("num_classes")
        self.call_kwargs = dict(spec.get("call_kwargs", {}))
        self.identity = {"pipeline": spec.get("path"), "kwargs": self.call_kwargs}

    @torch.no_grad()
    def generate(self, scheduler, n_steps: int, indices, guidance: float) -> torch.Tensor:
        self.pipe.scheduler = scheduler
        kwargs = dict(self.call_kwargs)
        gens = [torch.Generator().manual_seed((self.seed << 32) + int(i)) for i in indices]
        if self.prompts:
            kwargs["prompt"] = [self.prompts[int(i) % len(self.prompts)] for i in indices]
        if self.class_labels:
            kwargs["class_labels"] = [int(i) % int(self.class_labels) for i in indices]
        out = self.pipe(
            num_inference_steps=n_steps, guidance_scale=guidance, generator=gens, output_type="pt", **kwargs
        )
        images = out.images if hasattr(out, "images") else out[0]
        return images.float().clamp(0, 1)


def build_source(model: dict, seed: int, device):
    kind = _require(model, "kind", "model")
    if kind in ("demo-ddpm", "demo-flow"):
        from . import demo

        pipe = demo.load_ddpm_pipeline() if kind == "demo-ddpm" else demo.load_flow_pipeline()
        return UNetSource(pipe.unet, pipe.scheduler.config, seed, device)
    if kind == "unet":
        from diffusers import DiffusionPipeline

        path = _require(model, "path", "model")
        pipe = DiffusionPipeline.from_pretrained(path)
        return UNetSource(pipe.unet, pipe.scheduler.config, seed, device, model.get("num_classes"))
    if kind == "pipeline":
        from diffusers import DiffusionPipeline

        dtype = getattr(torch, model.get("torch_dtype", "float32"))
        pipe = DiffusionPipeline.from_pretrained(_require(model, "path", "model"), torch_dtype=dtype)
        return PipelineSource(pipe, model, seed, device)
    raise ValueError(f"model kind {kind!r} unknown; allowed: 'demo-ddpm', 'demo-flow', 'unet', 'pipeline'")


class FeatureNet:
    """Images in [0, 1] (B, C, H, W) float -> (B, F) float64 features, plus an identity for the stats."""

    def __init__(self, metric: dict, device):
        kind = _require(metric, "features", "metric")
        self.device = device
        if kind == "demo-classifier":
            from . import demo

            net = demo.load_classifier().to(device).eval()
            self.fn = lambda x: net.features(x * 2 - 1)
            self.identity = {"features": "demo-classifier"}
        elif kind == "inception":
            from .fid.inception import FIDInceptionV3

            mode = metric.get("resize", "pytorch-fid")
            net = FIDInceptionV3.from_weights(metric.get("weights"), resize=mode).to(device).eval()
            self.fn = net
            self.identity = {"features": "inception-pool3", "resize": mode}
        else:
            raise ValueError(f"metric features {kind!r} unknown; allowed: 'demo-classifier', 'inception'")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images.to(self.device)).double()


def reference_statistics(metric: dict, features: FeatureNet, cache: Path):
    """The reference set's statistics: a .npz file, or the demo's held-out digits (cached)."""
    from .fid import FeatureStatistics, ReferenceStatistics

    ref = _require(metric, "reference", "metric")
    if ref == "demo-heldout":
        if cache.is_file():
            stats = FeatureStatistics.load(cache)
        else:
            from . import demo

            _, held = demo.digits_split()
            stats = FeatureStatistics()
            for b in torch.split(held.images, 256):
                stats.update(features((b + 1) / 2))
            stats.save(cache, metadata=features.identity)
    else:
        stats = FeatureStatistics.load(Path(ref))
    stats.check_compatible(features.identity)
    return ReferenceStatistics(stats.mean, stats.cov, device=features.device)


# --- the sweep -------------------------------------------------------------------------------------------


def steps_for_nfe(scheduler, nfe: int) -> int | None:
    """The largest num_inference_steps whose run makes exactly ``nfe`` model calls, or None."""
    for n in range(nfe, 0, -1):
        try:
            scheduler.set_timesteps(n)
        except ValueError:
            continue
        got = len(scheduler.timesteps)
        if got == nfe:
            return n
        if got < nfe:
            return None
    return None


def _table(cells: list[dict], cfg: SweepConfig) -> str:
    lines = []
    for g in cfg.guidance_scales:
        title = f"Frechet distance, {cfg.num_samples} samples" + (
            f", guidance {g}" if len(cfg.guidance_scales) > 1 else ""
        )
        lines += [f"### {title}", "", "| scheduler | " + " | ".join(f"NFE {n}" for n in cfg.nfe) + " |"]
        lines.append("|---" * (len(cfg.nfe) + 1) + "|")
        for spec in cfg.schedulers:
            row = []
            for n in cfg.nfe:
                c = next(
                    (c for c in cells if c["scheduler"] == spec.label and c["nfe"] == n and c["guidance"] == g), None
                )
                row.append("-" if c is None or c["fd"] is None else f"{c['fd']:.3f}")
            lines.append(f"| {spec.label} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def run_sweep(cfg: SweepConfig, progress: bool = True) -> list[dict]:
    """Run (or resume) the sweep; returns the list of cells. Writes results on the main process."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .fid import FeatureStatistics
    from .fid.manifold import Reservoir

    state = PartialState()
    device = state.device if cfg.device == "auto" else _device(cfg.device)
    source = build_source(cfg.model, cfg.seed, device)
    features = FeatureNet(cfg.metric, device)
    cells_dir = cfg.output / "cells"
    if state.is_main_process:
        cells_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    reference = reference_statistics(cfg.metric, features, cfg.output / "reference_stats.npz")
    names = sweep_metrics(cfg.metric)
    ref_features = sweep_report.reference_features(cfg.metric, features) if names != ["fd"] else None
    floor_info = sweep_report.floor(cfg.metric, features, reference, cfg.num_samples)
    my_indices = list(range(state.process_index, cfg.num_samples, state.num_processes))

    grid = [(spec, n, g) for g in cfg.guidance_scales for n in cfg.nfe for spec in cfg.schedulers]
    cells = []
    bar = tqdm(grid, desc=cfg.name, disable=not (progress and state.is_main_process))
    for spec, nfe, g in bar:
        key = {
            "model": source.identity,
            "metric": features.identity,
            "reference": str(cfg.metric.get("reference")),
            "scheduler": spec.name,
            "config": spec.config,
            "nfe": nfe,
            "guidance": g,
            "num_samples": cfg.num_samples,
            "seed": cfg.seed,
        }
        if names != ["fd"]:
            key["metrics"] = names
        path = cells_dir / f"{spec.label.replace('/', '_').replace(' ', '_')}-nfe{nfe}-g{g:g}-{_hash(key)}.json"
        bar.set_postfix_str(f"{spec.label} NFE {nfe}")
        if path.is_file():
            cells.append(_read_cell(path))
            continue
        scheduler = spec.build(source.scheduler_config)
        n_steps = steps_for_nfe(scheduler, nfe)
        cell = {"format_version": FORMAT_VERSION, "scheduler": spec.label, "nfe": nfe, "guidance": g, "key": key}
        if n_steps is None:
            cell.update(fd=None, skipped=f"{spec.label} cannot make exactly {nfe} model calls")
        else:
            t0 = time.perf_counter()
            stats = FeatureStatistics()
            sample = Reservoir(sweep_report.MAX_SAMPLES, cfg.seed)
            inner = tqdm(
                total=len(my_indices), desc=f"{spec.label} NFE {nfe}", unit="img", leave=False, disable=bar.disable
            )
            for i in range(0, len(my_indices), cfg.batch_size):
                images = source.generate(scheduler, n_steps, my_indices[i : i + cfg.batch_size], g)
                feats = features(images)
                stats.update(feats)
                if ref_features is not None:
                    sample.add(feats)
                if i == 0 and state.is_main_process:
                    atomic_write(path.with_suffix(".png"), sweep_report.strip_png(images))
                    cell["sheet"] = path.with_suffix(".png").name
                inner.update(images.shape[0])
            inner.close()
            stats.all_reduce()
            fd = float(stats.distance_to(reference))
            cell.update(fd=fd, num_inference_steps=n_steps, seconds=time.perf_counter() - t0, count=int(stats.count))
            if ref_features is not None:
                cell.update(sweep_report.sampled_metrics(names, sample.rows, ref_features, cfg.seed))
            if not math.isfinite(fd):
                raise FloatingPointError(f"{spec.label} at NFE {nfe}: Frechet distance is {fd}")
        if state.is_main_process:
            atomic_write(path, json.dumps(cell, indent=1))
        cells.append(cell)
    state.wait_for_everyone()
    if state.is_main_process:
        write_results(cells, cfg, floor_info)
    return cells


def write_results(cells: list[dict], cfg: SweepConfig, floor_info: dict | None = None) -> None:
    out = cfg.output
    extra = [k for k in ("kid", "kid_std", "precision", "recall", "density", "coverage") if any(k in c for c in cells)]
    columns = ("scheduler", "nfe", "guidance", "fd", *extra, "num_inference_steps", "seconds")
    rows = [{k: c.get(k) for k in columns} for c in cells]
    summary = {"name": cfg.name, "num_samples": cfg.num_samples, "floor": floor_info, "cells": rows}
    atomic_write(out / "results.json", json.dumps(summary, indent=1))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "results.csv", buf.getvalue())
    floor_line = ""
    if floor_info is not None:
        floor_line = (
            f"Floor (real images outside the reference, {floor_info['count']} of them, {floor_info['source']}): "
            f"{floor_info['fd']:.3f}\n\n"
        )
    atomic_write(out / "results.md", f"# {cfg.name}\n\n" + floor_line + _table(cells, cfg))
    for name, png in sweep_report.metric_plots(cells, cfg, floor_info).items():
        atomic_write(out / name, png)
    cells_dir = out / "cells"
    for g in cfg.guidance_scales:
        for n in cfg.nfe:
            strips = [
                (c["scheduler"], cells_dir / c["sheet"])
                for c in cells
                if c["nfe"] == n and c["guidance"] == g and (cells_dir / c.get("sheet", "-")).is_file()
            ]
            if strips:
                suffix = f"_g{g:g}" if len(cfg.guidance_scales) > 1 else ""
                title = f"{cfg.name}: NFE {n}, samples 0-{SHEET_SAMPLES - 1} (same seeds in every row)"
                atomic_write(out / f"samples_nfe{n}{suffix}.png", sweep_report.sample_sheet(strips, title))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fastsample sweep", description="Run or resume a schedulers x NFE sweep.")
    p.add_argument("config", help="sweep config (.toml, or .yaml with PyYAML)")
    p.add_argument("--output", help="results folder (default: the config's sweep.output)")
    p.add_argument("--num-samples", type=int, help="override sweep.num_samples")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.output)
    if args.num_samples:
        cfg.num_samples = args.num_samples
    cells = run_sweep(cfg, progress=not args.no_progress)
    print(_table(cells, cfg))
    print(f"results and plot in {cfg.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
