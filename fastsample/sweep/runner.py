"""Running a sweep: cached cells keyed by content hashes, resumable, multi-process; results files."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import torch

from .._io import LOCK_NAME, atomic_write, file_digest, file_lock, remove_stale_temps
from . import report as sweep_report
from .config import FORMAT_VERSION, ConfigError, SweepConfig, _hash, _is_file_key, _slug
from .images import ImageFolder
from .metrics import MAX_SAMPLES, EncoderMetrics, metrics_key, reference_features, sampled_metrics, sweep_metrics
from .report import SHEET_SAMPLES
from .sources import FeatureNet, _device, build_source, reference_statistics

# --- cells -----------------------------------------------------------------------------------------


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

    Returns (spec, {nfe: scheduler config after defaults}, {nfe: num_inference_steps or None}) per scheduler
    (the config differs between NFEs where a file key names one file per NFE).
    """
    out = []
    for spec in cfg.schedulers:
        configs, steps = {}, {}
        for nfe in cfg.nfe:
            try:
                scheduler = spec.build(base_config, nfe)
                steps[nfe] = steps_for_nfe(scheduler, nfe)
            except Exception as e:
                raise ConfigError(f"scheduler '{spec.label}' at NFE {nfe}: set_timesteps fails: {e}") from e
            configs[nfe] = dict(scheduler.config)
        if all(n is None for n in steps.values()):
            raise ConfigError(f"scheduler '{spec.label}' cannot make exactly {cfg.nfe} model calls (any of them)")
        out.append((spec, configs, steps))
    return out


def _cell_key(cfg: SweepConfig, model_digest: str, features, ref_digest: str, spec, sched_config: dict, nfe, g):
    """Everything a cell's value depends on, with files as content hashes (see the module docstring)."""
    import diffusers

    from .. import __version__

    def by_content(d: dict) -> dict:
        return {k: {"sha256": file_digest(v)} if _is_file_key(k) and isinstance(v, str) else v for k, v in d.items()}

    config = by_content(sched_config)
    if "_use_default_values" in config:  # Diffusers fills it from a set: its order changes between processes
        config["_use_default_values"] = sorted(config["_use_default_values"])
    return _plain(
        {
            "model": {
                **by_content({k: v for k, v in cfg.model.items() if k != "path"}),
                "sha256": model_digest,
            },
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


def run_sweep(cfg: SweepConfig, progress: bool = True, force: bool = False) -> list[dict]:
    """Run (or resume) the sweep; returns the list of cells. Writes results on the main process.

    Model, feature network, encoders and every scheduler x NFE are set up before the first sample; the
    main process holds ``OUTPUT/.fastsample.lock`` until the results are written. ``force``: let
    ``save_images`` write into a folder that holds other files.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from ..fid import FeatureStatistics
    from ..fid.manifold import Reservoir

    state = PartialState()
    saved = ImageFolder(cfg.save_images, force) if cfg.save_images is not None else None
    device = state.device if cfg.device == "auto" else _device(cfg.device)
    source = build_source(cfg.model, cfg.seed, device)
    prepared = _prepare(cfg, source.scheduler_config)
    features = FeatureNet(cfg.metric, device)
    cells_dir = cfg.output / "cells"
    names = sweep_metrics(cfg.metric)
    encoders = EncoderMetrics(names, cfg.metric, device, cfg.seed)
    with contextlib.ExitStack() as stack:
        if state.is_main_process:
            cells_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(cfg.output / LOCK_NAME, what=f"sweep writing to {cfg.output}"))
            remove_stale_temps(cfg.output)
            remove_stale_temps(cells_dir)
            if saved is not None:
                saved.claim()
        state.wait_for_everyone()
        reference, ref_digest = reference_statistics(cfg.metric, features, cfg.output)
        ref_features = reference_features(cfg.metric, features) if {"kid", "prdc"} & set(names) else None
        extra_key = metrics_key(names, ref_features, encoders)
        floor_info = sweep_report.floor(cfg.metric, features, reference, cfg.num_samples)
        my_indices = list(range(state.process_index, cfg.num_samples, state.num_processes))

        grid = [(p, n, g) for g in cfg.guidance_scales for n in cfg.nfe for p in prepared]
        cells = []
        bar = tqdm(grid, desc=cfg.name, disable=not (progress and state.is_main_process))
        for (spec, configs, steps), nfe, g in bar:
            key = _cell_key(cfg, source.digest, features, ref_digest, spec, configs[nfe], nfe, g)
            if extra_key is not None:
                key["metrics"] = extra_key
            path = cells_dir / f"{_slug(spec.label)}-nfe{nfe}-g{g:g}-{_hash(key)}.json"
            bar.set_postfix_str(f"{spec.label} NFE {nfe}")
            if path.is_file():
                cell, why = _check_cell(path, key, spec.label, nfe, g, cfg.num_samples)
                images_missing = saved is not None and not saved.complete(path.stem, cfg.num_samples)
                if cell is not None and cell["fd"] is not None and images_missing:
                    cell, why = None, "has no complete folder of saved images"
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
                scheduler = spec.build(source.scheduler_config, nfe)
                stats = FeatureStatistics()
                sample = Reservoir(MAX_SAMPLES, cfg.seed)
                encoded = encoders.start()
                inner = tqdm(
                    total=len(my_indices), desc=f"{spec.label} NFE {nfe}", unit="img", leave=False, disable=bar.disable
                )
                for i in range(0, len(my_indices), cfg.batch_size):
                    indices = my_indices[i : i + cfg.batch_size]
                    images = source.generate(scheduler, n_steps, indices, g)
                    feats = features(images)
                    stats.update(feats)
                    if ref_features is not None:
                        sample.add(feats)
                    encoders.add(encoded, images)
                    if saved is not None:
                        saved.write(path.stem, indices, images)
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
                    cell.update(sampled_metrics(names, sample.rows, ref_features, cfg.seed))
                cell.update(encoders.finish(encoded))
                if saved is not None and state.is_main_process:  # after the all-reduce: every image is written
                    saved.finish(path.stem, cfg.num_samples)
                if not math.isfinite(fd):
                    raise FloatingPointError(f"{spec.label} at NFE {nfe}: Frechet distance is {fd}")
            if state.is_main_process:
                atomic_write(path, json.dumps(cell, indent=1))
            cells.append(cell)
        state.wait_for_everyone()
        if state.is_main_process:
            write_results(cells, cfg, floor_info)
    return cells


EXTRA_COLUMNS = ("fd_dinov2", "cmmd", "kid", "kid_std", "precision", "recall", "density", "coverage")


def write_results(cells: list[dict], cfg: SweepConfig, floor_info: dict | None = None) -> None:
    out = cfg.output
    extra = [k for k in EXTRA_COLUMNS if any(k in c for c in cells)]
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

