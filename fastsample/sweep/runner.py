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
from .reference import ReferenceSolution
from .report import SHEET_SAMPLES
from .sources import FeatureNet, _device, build_source, reference_statistics

# --- cells -----------------------------------------------------------------------------------------


def _plain(obj):
    """``obj`` as it reads back from JSON (so stored and expected keys compare equal)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _check_cell(path: Path, key: dict, label: str, nfe: int, guidance: float, num_samples: int, fields=()):
    """(cell, None) if ``path`` holds a valid result for ``key`` with every one of ``fields``, else (None, why not)."""
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
    missing = [f for f in fields if fd is not None and f not in cell]
    if missing:
        return None, f"lacks {', '.join(missing)}, which the config's metrics ask for"
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


def _cell_text(c: dict | None, value: str, ci: str) -> str:
    """A cell's value (3 decimals, 4 for errors) and its 95% interval where it has one; "-" where none."""
    if c is None or c.get(value) is None:
        return "-"
    digits = 4 if value == "rmse" else 3
    text = f"{c[value]:.{digits}f}"
    if c.get(ci) is not None:
        text += f" [{c[ci][0]:.{digits}f}, {c[ci][1]:.{digits}f}]"
    return text


TABLES = {
    "fd": ("Frechet distance", "fd_ci95"),
    "rmse": ("Per-sample RMSE against the reference solution (images in [0, 1])", "rmse_ci95"),
}


def _table(cells: list[dict], cfg: SweepConfig, reference_info: dict | None = None) -> str:
    """Markdown: per guidance scale, the FD table and (with "rmse") the error table, 95% intervals in brackets."""
    lines = []
    for g in cfg.guidance_scales:
        for value, (what, ci) in TABLES.items():
            if value != "fd" and not any(value in c for c in cells):
                continue
            title = f"{what}, {cfg.num_samples} samples" + (f", guidance {g}" if len(cfg.guidance_scales) > 1 else "")
            lines += [f"### {title}", ""]
            if value == "rmse" and reference_info is not None:
                r = reference_info
                lines += [
                    f"Reference: {r['solver']} {r['config']}, {r['steps']} steps; it moves {r['converged']:.4f} "
                    f"(mean per-sample RMSE) from {r['steps'] // 2} steps.",
                    "",
                ]
            lines += ["| scheduler | " + " | ".join(f"NFE {n}" for n in cfg.nfe) + " |"]
            lines.append("|---" * (len(cfg.nfe) + 1) + "|")
            for spec in cfg.schedulers:
                row = []
                for n in cfg.nfe:
                    c = next(
                        (c for c in cells if c["scheduler"] == spec.label and c["nfe"] == n and c["guidance"] == g),
                        None,
                    )
                    row.append(_cell_text(c, value, ci))
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


def _versions() -> dict:
    import diffusers

    from .. import __version__

    return {"fastsample": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}


def _cell_key(cfg: SweepConfig, model_digest: str, features, ref_digest: str, spec, sched_config: dict, nfe, g):
    """Everything a cell's value depends on, with files as content hashes (see the module docstring)."""

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
            "scheduler": {"class": spec.name, "config": config, **({"grid": spec.grid} if spec.grid else {})},
            "nfe": nfe,
            "guidance": g,
            "num_samples": cfg.num_samples,
            "seed": cfg.seed,
            "versions": {**_versions(), "format": FORMAT_VERSION},
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
    from ..fid.bootstrap import per_sample_rmse
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
        if cfg.threads is not None:  # for this sweep only; restored after it
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(cfg.threads)
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
        fields = [f for m in names for f in CELL_FIELDS.get(m, ())]
        solutions = {}
        if "rmse" in names:
            base = {"model": source.digest, "seed": cfg.seed, "num_samples": cfg.num_samples, "versions": _versions()}
            for g in cfg.guidance_scales:
                solutions[g] = ReferenceSolution(
                    cfg.metric.get("reference_solver"), source, base, my_indices, g, cfg.batch_size, cfg.output
                )

        grid = [(p, n, g) for g in cfg.guidance_scales for n in cfg.nfe for p in prepared]
        cells = []
        bar = tqdm(grid, desc=cfg.name, disable=not (progress and state.is_main_process))
        for (spec, configs, steps), nfe, g in bar:
            key = _cell_key(cfg, source.digest, features, ref_digest, spec, configs[nfe], nfe, g)
            if extra_key is not None:
                key["metrics"] = extra_key
            if g in solutions:
                key["reference_solution"] = _hash(solutions[g].key)
            path = cells_dir / f"{_slug(spec.label)}-nfe{nfe}-g{g:g}-{_hash(key)}.json"
            bar.set_postfix_str(f"{spec.label} NFE {nfe}")
            if path.is_file():
                cell, why = _check_cell(path, key, spec.label, nfe, g, cfg.num_samples, fields)
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
                rows, errors = [], []
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
                    if "fd_ci" in names:
                        rows.append(feats.cpu())
                    if g in solutions:
                        errors.append(per_sample_rmse(images.cpu(), solutions[g].images[i : i + len(indices)]))
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
                cell.update(fd=fd, num_inference_steps=n_steps, seconds=time.perf_counter() - t0,
                            threads=torch.get_num_threads(), count=int(stats.count))  # fmt: skip
                if ref_features is not None:
                    cell.update(sampled_metrics(names, sample.rows, ref_features, cfg.seed))
                cell.update(encoders.finish(encoded))
                cell.update(_interval_metrics(names, rows, errors, reference, solutions.get(g), cfg.seed))
                if saved is not None and state.is_main_process:  # after the all-reduce: every image is written
                    saved.finish(path.stem, cfg.num_samples)
                if not math.isfinite(fd):
                    raise FloatingPointError(f"{spec.label} at NFE {nfe}: Frechet distance is {fd}")
            if state.is_main_process:
                atomic_write(path, json.dumps(cell, indent=1))
            cells.append(cell)
        state.wait_for_everyone()
        if state.is_main_process:
            info = next(iter(solutions.values())).info if solutions else None
            write_results(cells, cfg, floor_info, info)
    return cells


CELL_FIELDS = {"rmse": ("rmse", "rmse_ci95"), "fd_ci": ("fd_ci95",)}  # what each metric adds to a computed cell


def _interval_metrics(names, rows, errors, reference, solution, seed: int) -> dict:
    """``fd_ci95`` (bootstrap over the cell's gathered features) and ``rmse`` / ``rmse_ci95`` (against the
    reference solution), as the metrics ask."""
    import numpy as np

    from ..fid.bootstrap import bootstrap_ci, fd_bootstrap
    from .metrics import SETTINGS, gather

    boot, out = SETTINGS["bootstrap"], {}
    if "fd_ci" in names:
        r = fd_bootstrap(gather(torch.cat(rows)), reference, boot["n_boot_fd"], boot["level"], seed)
        out["fd_ci95"] = r["ci95"]
    if solution is not None:
        e = gather(torch.from_numpy(np.concatenate(errors))).numpy()
        out["rmse"] = float(e.mean())
        out["rmse_ci95"] = list(bootstrap_ci(e, n_boot=boot["n_boot_rmse"], level=boot["level"], seed=seed))
        out["reference_converged"] = solution.info["converged"]
    return out


EXTRA_COLUMNS = (
    "fd_ci95",
    "rmse",
    "rmse_ci95",
    "fd_dinov2",
    "cmmd",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "density",
    "coverage",
)


def write_results(
    cells: list[dict], cfg: SweepConfig, floor_info: dict | None = None, reference_info: dict | None = None
) -> None:
    out = cfg.output
    extra = [k for k in EXTRA_COLUMNS if any(k in c for c in cells)]
    columns = ("scheduler", "nfe", "guidance", "fd", *extra, "num_inference_steps", "seconds", "threads")
    rows = [{k: c.get(k) for k in columns} for c in cells]
    summary = {"name": cfg.name, "num_samples": cfg.num_samples, "floor": floor_info, "cells": rows}
    if reference_info is not None:
        summary["reference_solution"] = reference_info
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
    atomic_write(out / "results.md", f"# {cfg.name}\n\n" + floor_line + _table(cells, cfg, reference_info))
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
