"""Sweep configs (TOML, or YAML with PyYAML): :func:`load_config` checks every key, type and file up front."""

from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import importlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .._io import UserError
from .metrics import MAX_SAMPLES, check_encoders, sweep_metrics

FORMAT_VERSION = 2

# every key a sweep config may hold, per table
KEYS = {
    "top level": {"sweep", "model", "metric", "schedulers"},
    "sweep": {
        "name",
        "output",
        "nfe",
        "guidance_scales",
        "num_samples",
        "batch_size",
        "seed",
        "device",
        "threads",
        "save_images",
    },
    "model": {"kind", "path", "num_classes", "torch_dtype", "prompts", "prompts_file", "prompts_column", "call_kwargs"},
    "metric": {
        "features",
        "reference",
        "weights",
        "resize",
        "metrics",
        "reference_images",
        "floor_stats",
        "dinov2",
        "clip",
        "download",
        "reference_solver",
    },
    "schedulers": {"name", "label", "config", "grid"},
}
MODEL_KINDS = ("demo-ddpm", "demo-flow", "unet", "pipeline")
FEATURES = ("demo-classifier", "inception")


class ConfigError(UserError):
    """A sweep config that cannot run as written; the message names the file and the key."""


# --- configuration -------------------------------------------------------------------------------


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _slug(label: str) -> str:
    """A label as it appears in cell file names."""
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", label).strip("_") or "_"


def _is_file_key(key: str) -> bool:
    return key.endswith(("_path", "_file"))


NFE_FIELD = "{nfe}"


def _is_template(key: str, value) -> bool:
    """A scheduler file key whose value names one file per NFE (``{nfe}`` in the path)."""
    return _is_file_key(key) and isinstance(value, str) and NFE_FIELD in value


def _scheduler_class(name: str):
    module, _, cls_name = name.rpartition(".")
    if module not in ("fastsample", "diffusers"):
        raise ValueError(f"scheduler {name!r}: name it 'fastsample.<Class>' or 'diffusers.<Class>'")
    cls = getattr(importlib.import_module(module), cls_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"scheduler {name!r}: {module} has no class {cls_name!r} with from_config")
    return cls


def grid_values(base_config, name: str, n: int):
    """The time grid ``name`` (:data:`fastsample.core.grids.GRIDS`) for ``n`` steps in step-schedule file units
    (float64 t, n + 1 points to the data end; flow: unshifted), as a fastsample scheduler builds it."""
    from ..core.schedules import is_flow_config
    from ..schedulers import S3Scheduler

    flow = {"flow_shift": 1.0, "use_dynamic_shifting": False} if is_flow_config(dict(base_config)) else {}
    s = S3Scheduler.from_config(base_config, time_grid=name, **flow)
    s.set_timesteps(n)
    return s._grid


def _with_grid(scheduler, name: str, base_config):
    """``scheduler`` whose ``set_timesteps(n)`` runs the grid ``name`` (its ``sigmas=`` / ``timesteps=`` argument)."""
    from ..core.schedules import is_flow_config
    from ..formats.step_schedule import set_timesteps_kwargs

    original, flow = scheduler.set_timesteps, is_flow_config(dict(base_config))
    unpatched = copy.copy(scheduler)  # what set_timesteps_kwargs inspects: the class's own set_timesteps

    def set_timesteps(num_inference_steps=None, device=None, **kwargs):
        if kwargs.pop("sigmas", None) is not None or kwargs.pop("timesteps", None) is not None:
            raise ValueError(f"this sweep entry runs the grid {name!r}; it takes no other sigmas / timesteps")
        values = grid_values(base_config, name, int(num_inference_steps))
        return original(device=device, **set_timesteps_kwargs(unpatched, values, flow), **kwargs)

    set_timesteps_kwargs(unpatched, grid_values(base_config, name, 2), flow)  # refuses a class without the argument
    scheduler.set_timesteps = set_timesteps
    return scheduler


@dataclass
class SchedulerSpec:
    """One scheduler column: ``name`` is 'fastsample.X' or 'diffusers.X'; ``config`` overrides keys; ``grid``
    (a Diffusers scheduler): the name of one of our time grids, passed as ``sigmas=`` (flow) or
    ``timesteps=`` (VP) to ``set_timesteps``, so it runs the grid a fastsample scheduler gets."""

    name: str
    label: str
    config: dict = field(default_factory=dict)
    grid: str | None = None

    def config_for(self, nfe: int) -> dict:
        """``config`` with ``{nfe}`` in file keys replaced by ``nfe`` (one file per NFE, e.g. step schedules)."""
        return {k: v.replace(NFE_FIELD, str(nfe)) if _is_template(k, v) else v for k, v in self.config.items()}

    def build(self, base_config, nfe: int | None = None):
        """The scheduler (for ``nfe`` when a file key holds ``{nfe}``); every key of ``config`` must be one the
        class takes (``from_config`` drops others)."""
        if nfe is None and any(_is_template(k, v) for k, v in self.config.items()):
            raise ValueError(f"scheduler '{self.label}': its config names one file per NFE; build it for an NFE")
        config = self.config if nfe is None else self.config_for(nfe)
        scheduler = _scheduler_class(self.name).from_config(base_config, **config)
        known = sorted(k for k in scheduler.config if not k.startswith("_"))
        for k in self.config:
            if k not in scheduler.config:
                raise ConfigError(f"scheduler '{self.label}': {self.name} has no config key '{k}'{_suggest(k, known)}")
        if self.grid is not None:
            try:
                scheduler = _with_grid(scheduler, self.grid, base_config)
            except ValueError as e:  # StepScheduleError / an unknown or unfit grid name
                raise ConfigError(f"scheduler '{self.label}': grid {self.grid!r}: {e}") from None
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
    threads: int | None = None  # torch intra-op threads (None: torch's default); not in a cell's key
    save_images: Path | None = None


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


def _model_conditions(model: dict, kind: str, base: Path, src) -> None:
    """Check torch_dtype and the prompts (inline or from a captions file, read here to fail early)."""
    from .data import read_prompts

    dtype = model.get("torch_dtype", "float32")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"{src}: model.torch_dtype {dtype!r}: allowed 'float32', 'float16', 'bfloat16'")
    if dtype != "float32" and kind not in ("unet", "pipeline"):
        raise ConfigError(f"{src}: model.torch_dtype applies to kind 'unet' or 'pipeline', not {kind!r}")
    for k in ("prompts", "prompts_file", "prompts_column"):
        if k in model and kind != "pipeline":
            raise ConfigError(f"{src}: model.{k} applies to kind 'pipeline', not {kind!r}")
    if "prompts" in model and "prompts_file" in model:
        raise ConfigError(f"{src}: give model.prompts or model.prompts_file, not both")
    if "prompts_column" in model and "prompts_file" not in model:
        raise ConfigError(f"{src}: model.prompts_column applies to a prompts_file")
    if "prompts_file" in model:
        model["prompts_file"] = str(_existing(model["prompts_file"], "model.prompts_file", base, src))
        try:
            read_prompts(model["prompts_file"], model.get("prompts_column"))
        except (ValueError, UnicodeDecodeError) as e:  # UserError, json's and csv's errors
            raise ConfigError(f"{src}: model.prompts_file: {e}") from None
    elif "prompts" in model:
        prompts = model["prompts"]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ConfigError(f"{src}: model.prompts must be a non-empty list of captions, got {prompts!r}")


# metric.reference as a table: a torchvision dataset class on a local copy, or a `datasets` dataset
REFERENCE_KEYS = {"torchvision": {"torchvision", "root", "split"}, "datasets": {"datasets", "split", "column"}}


def _reference(ref, base: Path, src):
    """``metric.reference``: 'demo-heldout', a path (.npz file, image folder or ``save_to_disk`` folder), or a
    table ``{torchvision = "CIFAR10", root = ..., split = "train"}`` / ``{datasets = NAME_OR_PATH, split = ...,
    column = "image"}``. Paths become absolute; a save_to_disk folder becomes a ``datasets`` table."""
    from .data import is_hf_disk_folder

    if ref == "demo-heldout":
        return ref
    if isinstance(ref, str):
        p = _existing(ref, "metric.reference", base, src)
        if p.is_dir() and is_hf_disk_folder(p):
            raise ConfigError(
                f"{src}: metric.reference {ref!r} is a `datasets` save_to_disk folder: write it as "
                f'{{ datasets = "{ref}", split = "train", column = "image" }}'
            )
        if p.is_file() and p.suffix != ".npz":
            raise ConfigError(f"{src}: metric.reference {ref!r}: expected an .npz file, an image folder or a table")
        return str(p)
    if not isinstance(ref, dict):
        raise ConfigError(f"{src}: metric.reference must be a path or a table, got {ref!r}")
    kind = [k for k in REFERENCE_KEYS if k in ref]
    if len(kind) != 1:
        raise ConfigError(f"{src}: metric.reference table needs one of 'torchvision' or 'datasets', got {ref!r}")
    known = REFERENCE_KEYS[kind[0]]
    for k in ref:
        if k not in known:
            raise ConfigError(f"{src}: unknown key '{k}' in metric.reference{_suggest(k, known)}")
    ref = dict(ref)
    for k, v in ref.items():
        if not isinstance(v, str):
            raise ConfigError(f"{src}: metric.reference {k} must be a string, got {v!r}")
    if kind[0] == "torchvision":
        import torchvision.datasets

        if not hasattr(torchvision.datasets, ref["torchvision"]):
            raise ConfigError(f"{src}: metric.reference: torchvision.datasets has no class {ref['torchvision']!r}")
        ref["root"] = str(_existing(_require(ref, "root", "metric.reference"), "metric.reference root", base, src))
    else:
        local = (base / Path(ref["datasets"]).expanduser()).resolve()
        if local.exists():
            ref["datasets"] = str(local)
    return ref


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


def _file_value(key: str, value, label: str, nfe: list[int], base: Path, src):
    """A scheduler config value: file keys resolved against the config's folder (they must exist); a
    path with ``{nfe}`` must exist for every NFE of the sweep and stays a template (absolute)."""
    if not _is_file_key(key) or value is None:
        return value
    if not _is_template(key, value):
        return str(_existing(value, f"scheduler '{label}' config {key}", base, src))
    missing = []
    for n in nfe:
        try:
            _existing(value.replace(NFE_FIELD, str(n)), "", base, src)
        except ConfigError:
            missing.append(n)
    if missing:
        raise ConfigError(
            f"{src}: scheduler '{label}' config {key} {value!r} has no file for NFE "
            f"{', '.join(map(str, missing))} of the sweep (paths are relative to the config file)"
        )
    p = Path(value).expanduser()
    return os.path.normpath(p if p.is_absolute() else base / p)


def load_config(path: str | os.PathLike, output: str | None = None) -> SweepConfig:
    """Read and validate a sweep config (everything that can be checked without the model; see the module doc).

    Relative paths (``sweep.output``, ``model.path``, ``metric.reference``, ``metric.weights`` and
    scheduler config keys ending in ``_path`` or ``_file``) are relative to the config file; files
    must exist. A scheduler file key may name one file per NFE with ``{nfe}`` in its path (e.g.
    ``step_schedule_file = "steps_nfe{nfe}.json"``): each NFE of the sweep needs its file.
    """
    from .._args import device as device_arg

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

    nfe = _require(sweep, "nfe", "sweep")
    if not isinstance(nfe, list) or not nfe or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in nfe):
        raise ConfigError(f"{src}: nfe must be a non-empty list of positive integers, got {nfe!r}")

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
        config = {k: _file_value(k, v, label, nfe, base, src) for k, v in config.items()}
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
        grid = s.get("grid")
        if grid is not None:
            from ..core.grids import GRIDS

            if not name.startswith("diffusers."):
                raise ConfigError(f"{src}: scheduler '{label}': grid is for Diffusers' classes (ours: time_grid)")
            if grid not in GRIDS:
                raise ConfigError(f"{src}: scheduler '{label}': grid {grid!r} unknown; allowed: {', '.join(GRIDS)}")
        specs.append(SchedulerSpec(name=name, label=label, config=config, grid=grid))

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
    _model_conditions(model, kind, base, src)

    features = _require(metric, "features", "metric")
    if features not in FEATURES:
        raise ConfigError(f"{src}: metric features {features!r} unknown; allowed: {', '.join(map(repr, FEATURES))}")
    metric["reference"] = _reference(_require(metric, "reference", "metric"), base, src)
    if features == "inception":
        from ..fid.inception import RESIZE_MODES, find_weights

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
        check_encoders(metric, sweep_metrics(metric), base)
    except ValueError as e:
        raise ConfigError(f"{src}: {e}") from None
    if "reference_solver" in metric:
        if "rmse" not in metric.get("metrics", []):
            raise ConfigError(f"{src}: metric.reference_solver applies to metric 'rmse', which [metric] metrics omits")
        metric["reference_solver"] = reference_spec(metric["reference_solver"], src)

    out = Path(output or sweep.get("output", f"out/{name}"))
    if not out.is_absolute() and output is None:
        out = (base / out).resolve()
    save_images = sweep.get("save_images", False)
    if not isinstance(save_images, (bool, str)) or save_images == "":
        raise ConfigError(f"{src}: save_images must be true, false or a folder, got {save_images!r}")
    if save_images is not False:
        save_images = out / "images" if save_images is True else (base / save_images).expanduser().resolve()
    num_samples = _int(sweep.get("num_samples", 1000), "num_samples", src, 2)
    if "fd_ci" in metric.get("metrics", []) and num_samples > MAX_SAMPLES:
        raise ConfigError(
            f"{src}: metric 'fd_ci' keeps every sample's features: at most {MAX_SAMPLES} samples, got {num_samples}"
        )
    cfg = SweepConfig(
        name=name,
        output=out,
        model=model,
        metric=metric,
        schedulers=specs,
        nfe=list(nfe),
        guidance_scales=[float(g) for g in guidance],
        num_samples=num_samples,
        batch_size=_int(sweep.get("batch_size", 250), "batch_size", src, 1),
        seed=_int(sweep.get("seed", 0), "seed", src, 0),
        device=str(device),
        threads=None if sweep.get("threads") is None else _int(sweep["threads"], "threads", src, 1),
        save_images=save_images or None,
    )
    return cfg


def reference_spec(raw, src) -> dict:
    """The validated ``[metric] reference_solver`` table (``None``: the default, filled in per model kind)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: metric.reference_solver must be a table {{ name, config, steps }}, got {raw!r}")
    unknown = sorted(set(raw) - {"name", "config", "steps"})
    if unknown:
        raise ConfigError(f"{src}: metric.reference_solver: unknown key(s) {unknown}; allowed: name, config, steps")
    for k in ("name", "steps"):
        if k not in raw:
            raise ConfigError(f"{src}: metric.reference_solver needs '{k}'")
    steps, config = raw["steps"], raw.get("config", {})
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"{src}: metric.reference_solver steps must be an integer >= 2, got {steps!r}")
    if not isinstance(config, dict):
        raise ConfigError(f"{src}: metric.reference_solver config must be a table, got {config!r}")
    try:
        _scheduler_class(raw["name"])
    except ValueError as e:
        raise ConfigError(f"{src}: metric.reference_solver: {e}") from None
    return {"name": raw["name"], "config": dict(config), "steps": steps}
