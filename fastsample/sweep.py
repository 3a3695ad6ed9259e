"""Sweeps of schedulers x NFE x guidance with a Frechet-distance metric: ``fastsample sweep CONFIG``.

A sweep config (TOML, or YAML when PyYAML is installed) names a model, a feature network with its
reference statistics, a list of schedulers (ours and Diffusers' by name, with config overrides),
NFE values, guidance scales and the sample count. Generated batches stream straight into float64
feature sums (``fastsample.fid.FeatureStatistics``); nothing but the sums is kept.

Guarantees:
- Per-sample seeds: sample i's starting noise comes from its own generator, so an image does not
  depend on batch size or process count, and every cell sees the same noises (common random
  numbers make scheduler comparisons less noisy).
- The whole config is checked before any sample is drawn: unknown keys at every level and in each
  scheduler's ``config`` (with the nearest known key), value types, classes, files, and every
  scheduler x NFE's ``set_timesteps``. Paths are relative to the config file.
- Each finished cell is written atomically under ``OUTPUT/cells/`` and reused on rerun. A cell's
  key holds content hashes (SHA-256) of everything its value depends on: model weights and config,
  schedule and statistics files, reference statistics, feature-network weights, the scheduler
  config after defaults, the library versions. A cell whose stored key differs from the expected
  one (edited inputs, a copied or foreign file) or that is malformed is recomputed, with a message.
  An interrupted sweep resumes where it stopped; a lock makes a second sweep into the same folder
  wait, then reuse the first one's cells.
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
import contextlib
import csv
import difflib
import hashlib
import importlib
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import sweep_report
from ._io import LOCK_NAME, UserError, atomic_write, file_digest, file_lock, remove_stale_temps, tree_digest
from .sweep_report import SHEET_SAMPLES, sweep_metrics

__all__ = ["ConfigError", "SweepConfig", "load_config", "run_sweep", "main", "atomic_write"]

FORMAT_VERSION = 2

# every key a sweep config may hold, per table
KEYS = {
    "top level": {"sweep", "model", "metric", "schedulers"},
    "sweep": {"name", "output", "nfe", "guidance_scales", "num_samples", "batch_size", "seed", "device"},
    "model": {"kind", "path", "num_classes", "torch_dtype", "prompts", "call_kwargs"},
    "metric": {"features", "reference", "weights", "resize", "metrics", "reference_images", "floor_stats"},
    "schedulers": {"name", "label", "config"},
}
MODEL_KINDS = ("demo-ddpm", "demo-flow", "unet", "pipeline")
FEATURES = ("demo-classifier", "inception")


class ConfigError(UserError):
    """A sweep config that cannot run as written; the message names the file and the key."""


# --- configuration -------------------------------------------------------------------------------


def _slug(label: str) -> str:
    """A label as it appears in cell file names."""
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", label).strip("_") or "_"


def _is_file_key(key: str) -> bool:
    return key.endswith(("_path", "_file"))


def _scheduler_class(name: str):
    module, _, cls_name = name.rpartition(".")
    if module not in ("fastsample", "diffusers"):
        raise ValueError(f"scheduler {name!r}: name it 'fastsample.<Class>' or 'diffusers.<Class>'")
    cls = getattr(importlib.import_module(module), cls_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"scheduler {name!r}: {module} has no class {cls_name!r} with from_config")
    return cls


@dataclass
class SchedulerSpec:
    """One scheduler column: ``name`` is 'fastsample.X' or 'diffusers.X'; ``config`` overrides keys."""

    name: str
    label: str
    config: dict = field(default_factory=dict)

    def build(self, base_config):
        """The scheduler; every key of ``config`` must be one the class takes (``from_config`` drops others)."""
        scheduler = _scheduler_class(self.name).from_config(base_config, **self.config)
        known = sorted(k for k in scheduler.config if not k.startswith("_"))
        for k in self.config:
            if k not in scheduler.config:
                raise ConfigError(f"scheduler '{self.label}': {self.name} has no config key '{k}'{_suggest(k, known)}")
        return scheduler


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


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"


def _table_of(raw, where: str, src) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: [{where}] must be a table, got {raw!r}")
    for k in raw:
        if k not in KEYS[where]:
            raise ConfigError(f"{src}: unknown key '{k}' in [{where}]{_suggest(k, KEYS[where])}")
    return raw


def _require(d: dict, key: str, where: str):
    if key not in d:
        raise ConfigError(f"sweep config: missing key '{key}' in [{where}]")
    return d[key]


def _int(value, what: str, src, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{src}: {what} must be an integer >= {minimum}, got {value!r}")
    return value


def _existing(value, what: str, base: Path, src) -> Path:
    """A path from the config, relative to the config's folder; it must exist."""
    if not isinstance(value, str):
        raise ConfigError(f"{src}: {what} must be a path, got {value!r}")
    p = Path(value).expanduser()
    p = (p if p.is_absolute() else base / p).resolve()
    if not p.exists():
        raise ConfigError(f"{src}: {what} {value!r} is missing: no file at {p} (paths are relative to the config file)")
    return p


def _model_dir(value, base: Path, src) -> Path:
    """model.path: a local folder (relative to the config file) or a Hub id already in the local cache."""
    if isinstance(value, str):
        local = (base / Path(value).expanduser()).resolve()
        if local.is_dir():
            return local
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(value, local_files_only=True))
        except Exception:
            pass
    raise ConfigError(
        f"{src}: model.path {value!r} is missing: not a folder at {(base / str(value)).resolve()} "
        "(paths are relative to the config file) nor a Hub model in the local cache"
    )


def _read_raw(path: Path) -> dict:
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as e:
                raise ImportError("YAML sweep configs need PyYAML (`pip install pyyaml`); or use TOML") from e
            return yaml.safe_load(text)
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        return tomllib.loads(text)
    except ImportError:
        raise
    except Exception as e:  # the parsers' own error types
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {e}") from None


def load_config(path: str | os.PathLike, output: str | None = None) -> SweepConfig:
    """Read and validate a sweep config (everything that can be checked without the model; see the module doc).

    Relative paths (``sweep.output``, ``model.path``, ``metric.reference``, ``metric.weights`` and
    scheduler config keys ending in ``_path`` or ``_file``) are relative to the config file; files
    must exist.
    """
    from .cli import device as device_arg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep config {path} does not exist")
    src, base = path, path.resolve().parent
    raw = _table_of(_read_raw(path), "top level", src)
    sweep = _table_of(_require(raw, "sweep", "top level"), "sweep", src)
    model = dict(_table_of(_require(raw, "model", "top level"), "model", src))
    metric = dict(_table_of(_require(raw, "metric", "top level"), "metric", src))
    scheds = _require(raw, "schedulers", "top level")
    if not isinstance(scheds, list) or not scheds:
        raise ConfigError(f"{src}: [[schedulers]] is empty or not a list of tables")

    specs, slugs = [], {}
    for i, s in enumerate(scheds):
        s = _table_of(s, "schedulers", src)
        name = _require(s, "name", f"schedulers #{i}")
        if not isinstance(name, str):
            raise ConfigError(f"{src}: schedulers #{i}: name must be a string, got {name!r}")
        _scheduler_class(name)
        label = s.get("label", name.rpartition(".")[2])
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{src}: schedulers #{i}: label must be a non-empty string, got {label!r}")
        config = s.get("config", {})
        if not isinstance(config, dict):
            raise ConfigError(f"{src}: scheduler '{label}': config must be a table, got {config!r}")
        config = {
            k: str(_existing(v, f"scheduler '{label}' config {k}", base, src))
            if _is_file_key(k) and v is not None
            else v
            for k, v in config.items()
        }
        key = _slug(label).lower()
        if key in slugs:
            same = slugs[key] == label
            raise ConfigError(
                f"{src}: scheduler labels must be unique, got {label!r} twice"
                if same
                else f"{src}: scheduler labels must be unique: {slugs[key]!r} and {label!r} give the same "
                f"cell file name {_slug(label)!r}"
            )
        slugs[key] = label
        specs.append(SchedulerSpec(name=name, label=label, config=config))

    nfe = _require(sweep, "nfe", "sweep")
    if not isinstance(nfe, list) or not nfe or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in nfe):
        raise ConfigError(f"{src}: nfe must be a non-empty list of positive integers, got {nfe!r}")
    guidance = sweep.get("guidance_scales", [1.0])
    if (
        not isinstance(guidance, list)
        or not guidance
        or any(isinstance(g, bool) or not isinstance(g, (int, float)) for g in guidance)
    ):
        raise ConfigError(f"{src}: guidance_scales must be a non-empty list of numbers, got {guidance!r}")
    name = sweep.get("name", path.stem)
    if not isinstance(name, str):
        raise ConfigError(f"{src}: sweep name must be a string, got {name!r}")
    device = sweep.get("device", "auto")
    if device != "auto":
        try:
            device_arg(str(device))
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"{src}: sweep device: {e}") from None

    kind = _require(model, "kind", "model")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"{src}: model kind {kind!r} unknown; allowed: {', '.join(map(repr, MODEL_KINDS))}")
    if kind in ("unet", "pipeline"):
        model["path"] = str(_model_dir(_require(model, "path", "model"), base, src))
    elif "path" in model:
        raise ConfigError(f"{src}: model.path applies to kind 'unet' or 'pipeline', not {kind!r}")
    if "num_classes" in model:
        _int(model["num_classes"], "model.num_classes", src, 1)
    if not isinstance(getattr(torch, str(model.get("torch_dtype", "float32")), None), torch.dtype):
        raise ConfigError(f"{src}: model.torch_dtype {model['torch_dtype']!r} is not a torch dtype")

    features = _require(metric, "features", "metric")
    if features not in FEATURES:
        raise ConfigError(f"{src}: metric features {features!r} unknown; allowed: {', '.join(map(repr, FEATURES))}")
    ref = _require(metric, "reference", "metric")
    if ref != "demo-heldout":
        metric["reference"] = str(_existing(ref, "metric.reference", base, src))
    if features == "inception":
        from .fid.inception import RESIZE_MODES, find_weights

        if metric.get("resize", "pytorch-fid") not in RESIZE_MODES:
            raise ConfigError(f"{src}: metric.resize {metric['resize']!r} unknown; allowed: {', '.join(RESIZE_MODES)}")
        if metric.get("weights") is not None:
            metric["weights"] = str(_existing(metric["weights"], "metric.weights", base, src))
        try:
            metric["weights"] = str(find_weights(metric.get("weights")))
        except FileNotFoundError as e:
            raise ConfigError(f"{src}: {e}") from None
    else:
        for k in ("weights", "resize"):
            if k in metric:
                raise ConfigError(f"{src}: metric.{k} applies to features = 'inception', not {features!r}")

    for k in ("reference_images", "floor_stats"):
        if k in metric:
            metric[k] = str(_existing(metric[k], f"metric.{k}", base, src))
    try:
        sweep_metrics(metric)
    except ValueError as e:
        raise ConfigError(f"{src}: {e}") from None

    out = Path(output or sweep.get("output", f"out/{name}"))
    if not out.is_absolute() and output is None:
        out = (base / out).resolve()
    cfg = SweepConfig(
        name=name,
        output=out,
        model=model,
        metric=metric,
        schedulers=specs,
        nfe=list(nfe),
        guidance_scales=[float(g) for g in guidance],
        num_samples=_int(sweep.get("num_samples", 1000), "num_samples", src, 2),
        batch_size=_int(sweep.get("batch_size", 250), "batch_size", src, 1),
        seed=_int(sweep.get("seed", 0), "seed", src, 0),
        device=str(device),
    )
    return cfg


# --- cells -----------------------------------------------------------------------------------------


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(obj):
    """``obj`` as it reads back from JSON (so stored and expected keys compare equal)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _check_cell(path: Path, key: dict, label: str, nfe: int, guidance: float, num_samples: int):
    """(cell, None) if ``path`` holds a valid result for ``key``, else (None, why not)."""
    try:
        cell = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"is unreadable, truncated or corrupt ({e})"
    if not isinstance(cell, dict) or cell.get("format_version") != FORMAT_VERSION:
        return None, f"is not a sweep cell of format {FORMAT_VERSION}"
    stored = cell.get("key")
    if stored != key:
        changed = sorted(k for k in key if not isinstance(stored, dict) or stored.get(k) != key[k])
        return (
            None,
            f"was computed from other inputs (a stale, copied or foreign file; differs in {', '.join(changed)})",
        )
    if (cell.get("scheduler"), cell.get("nfe"), cell.get("guidance")) != (label, nfe, guidance):
        return None, "names another scheduler, NFE or guidance scale than its key"
    fd = cell.get("fd")
    if fd is None:
        ok = isinstance(cell.get("skipped"), str)
    else:
        ok = (
            isinstance(fd, (int, float))
            and not isinstance(fd, bool)
            and math.isfinite(fd)
            and isinstance(cell.get("num_inference_steps"), int)
            and cell.get("count") == num_samples
        )
    if not ok:
        return None, f"has malformed values (fd {fd!r}, num_inference_steps {cell.get('num_inference_steps')!r})"
    return cell, None


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
    """The model of a validated config's ``model`` table; ``.digest``: SHA-256 of its folder's files."""
    kind = _require(model, "kind", "model")
    if kind in ("demo-ddpm", "demo-flow"):
        from . import demo

        pipe = demo.load_ddpm_pipeline() if kind == "demo-ddpm" else demo.load_flow_pipeline()
        source = UNetSource(pipe.unet, pipe.scheduler.config, seed, device)
        source.digest = tree_digest(demo.WEIGHTS_DIR / kind.removeprefix("demo-"))
        return source
    if kind not in ("unet", "pipeline"):
        raise ValueError(f"model kind {kind!r} unknown; allowed: {', '.join(map(repr, MODEL_KINDS))}")
    from diffusers import DiffusionPipeline

    path = _require(model, "path", "model")
    if kind == "unet":
        pipe = DiffusionPipeline.from_pretrained(path)
        source = UNetSource(pipe.unet, pipe.scheduler.config, seed, device, model.get("num_classes"))
    else:
        dtype = getattr(torch, model.get("torch_dtype", "float32"))
        source = PipelineSource(DiffusionPipeline.from_pretrained(path, torch_dtype=dtype), model, seed, device)
    source.digest = tree_digest(path)
    return source


def _luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma as PIL's "L" (ITU-R 601-2: gray stays gray); other inputs as they are."""
    if images.shape[1] != 3:
        return images
    w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * w.view(1, 3, 1, 1)).sum(1, keepdim=True)


class FeatureNet:
    """Images in [0, 1] (B, C, H, W) float -> (B, F) float64 features, plus an identity for the stats.

    ``digest``: SHA-256 of the network's weight files.
    """

    def __init__(self, metric: dict, device):
        kind = _require(metric, "features", "metric")
        self.device = device
        if kind == "demo-classifier":
            from . import demo

            net = demo.load_classifier().to(device).eval()
            self.fn = lambda x: net.features(_luma(x) * 2 - 1)
            self.identity = {"features": "demo-classifier"}
            self.digest = tree_digest(demo.WEIGHTS_DIR / "classifier")
        elif kind == "inception":
            from .fid.inception import FIDInceptionV3, find_weights

            mode = metric.get("resize", "pytorch-fid")
            weights = find_weights(metric.get("weights"))
            net = FIDInceptionV3.from_weights(weights, resize=mode).to(device).eval()
            self.digest = file_digest(weights)
            self.fn = net
            self.identity = {"features": "inception-pool3", "resize": mode}
        else:
            raise ValueError(f"metric features {kind!r} unknown; allowed: 'demo-classifier', 'inception'")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images.to(self.device)).double()


def reference_statistics(metric: dict, features: FeatureNet, folder: Path):
    """(ReferenceStatistics, SHA-256 of its float64 mean and covariance): a .npz file, or the demo's
    held-out digits, cached in ``folder`` under a name that carries the feature network's digest."""
    from .fid import FeatureStatistics, ReferenceStatistics

    ref = _require(metric, "reference", "metric")
    if ref == "demo-heldout":
        cache = folder / f"reference_stats-{_hash([features.identity, features.digest])}.npz"
        stats = None
        if cache.is_file():
            try:
                stats = FeatureStatistics.load(cache)
            except ValueError as e:
                print(f"sweep: {e}; recomputing the reference statistics", file=sys.stderr)
        if stats is None:
            from . import demo

            _, held = demo.digits_split()
            stats = FeatureStatistics()
            for b in torch.split(held.images, 256):
                stats.update(features((b + 1) / 2))
            stats.save(cache, metadata=features.identity)
    else:
        stats = FeatureStatistics.load(Path(ref))
    stats.check_compatible(features.identity)
    h = hashlib.sha256()
    for t in (stats.mean, stats.cov):
        h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return ReferenceStatistics(stats.mean, stats.cov, device=features.device), h.hexdigest()


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


def _prepare(cfg: SweepConfig, base_config) -> list[tuple]:
    """Build every scheduler and find its steps for every NFE, before any sample is drawn.

    Returns (spec, scheduler config after defaults, {nfe: num_inference_steps or None}) per scheduler.
    """
    out = []
    for spec in cfg.schedulers:
        scheduler = spec.build(base_config)
        steps = {}
        for nfe in cfg.nfe:
            try:
                steps[nfe] = steps_for_nfe(scheduler, nfe)
            except Exception as e:
                raise ConfigError(f"scheduler '{spec.label}' at NFE {nfe}: set_timesteps fails: {e}") from e
        if all(n is None for n in steps.values()):
            raise ConfigError(f"scheduler '{spec.label}' cannot make exactly {cfg.nfe} model calls (any of them)")
        out.append((spec, dict(scheduler.config), steps))
    return out


def _cell_key(cfg: SweepConfig, model_digest: str, features, ref_digest: str, spec, sched_config: dict, nfe, g):
    """Everything a cell's value depends on, with files as content hashes (see the module docstring)."""
    import diffusers

    from . import __version__

    config = {
        k: {"sha256": file_digest(v)} if _is_file_key(k) and isinstance(v, str) else v for k, v in sched_config.items()
    }
    return _plain(
        {
            "model": {**{k: v for k, v in cfg.model.items() if k != "path"}, "sha256": model_digest},
            "features": {**features.identity, "sha256": features.digest},
            "reference": ref_digest,
            "scheduler": {"class": spec.name, "config": config},
            "nfe": nfe,
            "guidance": g,
            "num_samples": cfg.num_samples,
            "seed": cfg.seed,
            "versions": {
                "fastsample": __version__,
                "diffusers": diffusers.__version__,
                "torch": torch.__version__,
                "format": FORMAT_VERSION,
            },
        }
    )


def run_sweep(cfg: SweepConfig, progress: bool = True) -> list[dict]:
    """Run (or resume) the sweep; returns the list of cells. Writes results on the main process.

    Model, feature network and every scheduler x NFE are set up before the first sample; the main
    process holds ``OUTPUT/.fastsample.lock`` until the results are written.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .fid import FeatureStatistics
    from .fid.manifold import Reservoir

    state = PartialState()
    device = state.device if cfg.device == "auto" else _device(cfg.device)
    source = build_source(cfg.model, cfg.seed, device)
    prepared = _prepare(cfg, source.scheduler_config)
    features = FeatureNet(cfg.metric, device)
    cells_dir = cfg.output / "cells"
    names = sweep_metrics(cfg.metric)
    with contextlib.ExitStack() as stack:
        if state.is_main_process:
            cells_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(cfg.output / LOCK_NAME, what=f"sweep writing to {cfg.output}"))
            remove_stale_temps(cfg.output)
            remove_stale_temps(cells_dir)
        state.wait_for_everyone()
        reference, ref_digest = reference_statistics(cfg.metric, features, cfg.output)
        ref_features = sweep_report.reference_features(cfg.metric, features) if names != ["fd"] else None
        metrics_key = None
        if ref_features is not None:  # keyed by the reference features themselves (images x feature network)
            digest = hashlib.sha256(ref_features.detach().to("cpu", torch.float64).numpy().tobytes()).hexdigest()
            metrics_key = {"names": names, "reference_features": digest}
        floor_info = sweep_report.floor(cfg.metric, features, reference, cfg.num_samples)
        my_indices = list(range(state.process_index, cfg.num_samples, state.num_processes))

        grid = [(p, n, g) for g in cfg.guidance_scales for n in cfg.nfe for p in prepared]
        cells = []
        bar = tqdm(grid, desc=cfg.name, disable=not (progress and state.is_main_process))
        for (spec, sched_config, steps), nfe, g in bar:
            key = _cell_key(cfg, source.digest, features, ref_digest, spec, sched_config, nfe, g)
            if metrics_key is not None:
                key["metrics"] = metrics_key
            path = cells_dir / f"{_slug(spec.label)}-nfe{nfe}-g{g:g}-{_hash(key)}.json"
            bar.set_postfix_str(f"{spec.label} NFE {nfe}")
            if path.is_file():
                cell, why = _check_cell(path, key, spec.label, nfe, g, cfg.num_samples)
                if cell is not None:
                    cells.append(cell)
                    continue
                if state.is_main_process:
                    print(f"sweep: cell file {path.name} {why}; recomputing it", file=sys.stderr)
            n_steps = steps[nfe]
            cell = {"format_version": FORMAT_VERSION, "scheduler": spec.label, "nfe": nfe, "guidance": g, "key": key}
            if n_steps is None:
                cell.update(fd=None, skipped=f"{spec.label} cannot make exactly {nfe} model calls")
            else:
                t0 = time.perf_counter()
                scheduler = spec.build(source.scheduler_config)
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
                cell.update(
                    fd=fd, num_inference_steps=n_steps, seconds=time.perf_counter() - t0, count=int(stats.count)
                )
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
    from .cli import ArgumentParser, positive_int

    p = ArgumentParser(prog="fastsample sweep", description="Run or resume a schedulers x NFE sweep.")
    p.add_argument("config", help="sweep config (.toml, or .yaml with PyYAML)")
    p.add_argument("--output", help="results folder (default: the config's sweep.output)")
    p.add_argument("--num-samples", type=positive_int, help="override sweep.num_samples (at least 2)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.output)
    if args.num_samples:
        cfg.num_samples = _int(args.num_samples, "--num-samples", "command line", 2)
    cells = run_sweep(cfg, progress=not args.no_progress)
    print(_table(cells, cfg))
    print(f"results and plot in {cfg.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
