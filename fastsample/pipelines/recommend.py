"""``recommend(pipeline_or_scheduler_config, nfe)``: the scheduler the held-out benchmarks support.

The choices are read at call time from ``recommendations/recommendations.json`` (package data written
by ``benchmarks/bench_recommend.py``, never typed): per benchmarked NFE (4, 5, 6, 8, 10), the best of
our schedulers on the shipped demo models (chosen on selection seeds; error = per-sample RMSE against a
reference solution of the same noise; the file holds each choice's held-out error and Diffusers' best
for comparison, and benchmarks/results/recommend.md the table), with their model-specific files
(optimised step schedules, DPM-Solver-v3 statistics, searched S^3 schedules), and per model kind (VP or
flow) the best choice without a model-specific file, the general default for any other model (a choice
made on a fixed grid carries it as a step schedule file holding only that grid).

A demo model is recognised by its network's weights (the config digest, then
:func:`~fastsample.formats.ems_file.model_fingerprint`), never by a name or path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

__all__ = ["recommend", "network_config_digest", "DATA_DIR", "FORMAT", "VERSION"]

DATA_DIR = Path(__file__).resolve().parent / "recommendations"
FORMAT = "fastsample.recommendations"
VERSION = 1
_PACKAGE = Path(__file__).resolve().parents[1]


def network_config_digest(network) -> str:
    """Short SHA-256 of a network's class name and config (a cheap check before the weight fingerprint)."""
    cfg = {k: v for k, v in dict(network.config).items() if not k.startswith("_")}
    text = json.dumps([type(network).__name__, cfg], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _data() -> dict:
    path = DATA_DIR / "recommendations.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"fastsample's recommendations file {path} is missing or unreadable ({e})") from None
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise RuntimeError(f"{path} is not a {FORMAT} file of version {VERSION}")
    return data


def _parts(obj):
    """(scheduler config dict, network or None) of a pipeline, a scheduler or a scheduler config."""
    if hasattr(obj, "scheduler") and hasattr(obj.scheduler, "config"):
        return dict(obj.scheduler.config), getattr(obj, "unet", None) or getattr(obj, "transformer", None)
    if hasattr(obj, "config") and hasattr(obj, "set_timesteps"):
        return dict(obj.config), None
    if isinstance(obj, Mapping):
        return dict(obj), None
    raise TypeError(
        f"recommend() takes a Diffusers pipeline, a scheduler or a scheduler config, got {type(obj).__name__}"
    )


def _choice(data: dict, kind: str, network, nfe: int) -> dict:
    if network is not None:
        from ..formats.ems_file import model_fingerprint

        digest = network_config_digest(network)
        for model in data["models"].values():
            if model["kind"] == kind and model["network_config_digest"] == digest:
                if model["fingerprint"] == model_fingerprint(network) and str(nfe) in model["nfe"]:
                    return model["nfe"][str(nfe)]
    table = data["general"][kind]
    # outside the benchmarked NFEs: the nearest one's choice (the larger of two equally near)
    return table[min(table, key=lambda k: (abs(int(k) - nfe), -int(k)))]


def recommend(pipeline_or_scheduler_config, nfe: int):
    """A configured fastsample scheduler for ``nfe`` model calls, chosen by the held-out benchmarks.

    Args:
        pipeline_or_scheduler_config: a Diffusers pipeline (its network identifies the shipped demo
            models), a scheduler, or a scheduler config (then only the general default applies).
        nfe: model calls per sample (int >= 1). Every recommended scheduler makes one call per step:
            call the pipeline with ``num_inference_steps=nfe``.

    Returns:
        A fastsample scheduler built ``from_config`` of the model's scheduler config. For the demo DDPM
        and flow model at a benchmarked NFE, the held-out winner of ``benchmarks/bench_recommend.py`` (with its
        step schedule file or statistics); otherwise the best choice without a model-specific file for
        the model's kind (VP or flow), at the nearest benchmarked NFE. ``benchmarks/results/recommend.md``
        gives the evidence: each choice's held-out error against Diffusers' best.
    """
    from .. import schedulers
    from ..core.schedules import schedule_for_config

    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer (model calls per sample), got {nfe!r}")
    config, network = _parts(pipeline_or_scheduler_config)
    kind = "flow" if schedule_for_config(config)[0].is_flow else "vp"
    choice = _choice(_data(), kind, network, nfe)
    overrides = {}
    for k, v in choice["config"].items():
        if isinstance(v, dict) and "package_file" in v:
            path = _PACKAGE / v["package_file"]
            if not path.is_file():
                raise RuntimeError(f"recommend: the file {path} that the recommendations name is missing")
            v = str(path)
        overrides[k] = v
    if "flow_shift" in overrides:  # the model's own shift, not the benchmarked model's
        overrides["flow_shift"] = float(config.get("flow_shift", config.get("shift", 1.0)))
    return getattr(schedulers, choice["class"]).from_config(config, **overrides)
