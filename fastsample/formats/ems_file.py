"""The EMS statistics file (DPM-Solver-v3, Zheng et al., arXiv 2310.13268): format, identities, checks.

:class:`EMS` holds l, s, b on a lambda grid with their standard errors and the metadata that makes them one
matched set (model, latent shape, prediction type, noise schedule, t range, grid, guidance scale); it saves and
loads a safetensors file and :meth:`EMS.check` refuses a mismatch. Computing them: :mod:`fastsample.ems`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path
from ..core.parameterization import check_prediction_type
from ..core.schedules import DiscreteVP, RectifiedFlow

FORMAT_VERSION = 2  # 2: standard errors and f, f' scales beside l, s, b; version 1 files still load
_META_KEY = "fastsample_ems"
_STATS = ("lambdas", "l", "s", "b")
_ERRORS = ("se_l", "se_s", "se_b", "f_rms", "fp_rms", "x0_var")


class EMSFileError(ValueError):
    """A statistics file that cannot be read: truncated, corrupt or of another format."""


class EMSMismatchError(ValueError):
    """Statistics used with a model, shape, schedule, prediction type or guidance scale they were not computed for."""


# --- identities -------------------------------------------------------------------------------------


def schedule_for_config(config) -> tuple:
    """(schedule, canonical prediction_type) for a diffusers scheduler config (dict or FrozenDict)."""
    cfg = dict(config)
    flow = bool(cfg.get("use_flow_sigmas")) or (
        "use_flow_sigmas" not in cfg
        and (
            str(cfg.get("_class_name", "")).startswith("FlowMatch")
            or ("shift" in cfg and "beta_schedule" not in cfg and "trained_betas" not in cfg)
        )
    )
    if flow:
        schedule = RectifiedFlow(cfg.get("num_train_timesteps", 1000))
        ptype = "flow_prediction"
    else:
        schedule = DiscreteVP.from_config(cfg)
        ptype = cfg.get("prediction_type", "epsilon")
    return schedule, check_prediction_type(ptype, schedule.is_flow)


def schedule_fingerprint(schedule, t_start: float, t_end: float) -> str:
    """Short hash of lambda(t) on [t_end, t_start] (rounded to 1e-8): equal schedules, equal fingerprints."""
    t = np.linspace(t_end, t_start, 257)
    with np.errstate(divide="ignore"):
        lam = np.round(np.asarray(schedule.lambda_(t), dtype=np.float64), 8)
    return schedule.describe()["family"] + ":" + hashlib.sha256(lam.tobytes()).hexdigest()[:16]


def _tensor_digest(t: torch.Tensor) -> str:
    """Short SHA-256 of a tensor's dtype, shape and bytes (the data a checkpoint was made from)."""
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    """Short hash of a module's parameter names, shapes and values (float64 sums and the first values)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            if p.is_floating_point() and p.numel():
                q = p.detach().reshape(-1).to(torch.float64)
                vals = torch.stack([q.sum(), (q * q).sum(), q[:: max(1, q.numel() // 64)][:64].sum()])
                h.update(np.round(vals.cpu().numpy(), 6).tobytes())
    return h.hexdigest()[:16]


# --- the statistics container ---------------------------------------------------------------------


class EMS:
    """Empirical model statistics on a lambda grid, with the metadata that makes them a matched set.

    Attributes:
        lambdas: float64 (K,), increasing (noise end first).
        l, s, b: float32 (K, *shape), loaded lazily from the file when opened with :meth:`load`.
        se_l, se_s, se_b: float32 (K, *shape) standard errors of l, s, b (None in version-1 files).
        f_rms, fp_rms: float32 (K, *shape) root mean squares of f and f' over the samples (None in version 1).
        x0_var: float32 (1, *shape) upper estimate of the data's per-element variance (None in version 1).
        metadata: dict with ``format_version``, ``model_id``, ``model_hash``, ``shape``, ``prediction_type``,
            ``schedule`` (fingerprint), ``t_start``, ``t_end``, ``grid_size`` (K), ``guidance_scale``,
            ``num_samples``, ``probe``, ``seed``, and ``validation`` once :func:`validate_ems` has run.
    """

    def __init__(self, lambdas=None, l=None, s=None, b=None, metadata: dict | None = None, path=None, errors=None):
        self.metadata = dict(metadata or {})
        self.path = None if path is None else Path(path)
        self._arrays = None
        if lambdas is not None:
            arrays = {"lambdas": np.asarray(lambdas, dtype=np.float64)}
            for name, v in (("l", l), ("s", s), ("b", b), *(errors or {}).items()):
                arrays[name] = np.asarray(v, dtype=np.float32)
            self._set_arrays(arrays)

    def _set_arrays(self, arrays: dict):
        lam = arrays["lambdas"]
        k = len(lam)
        errors = [n for n in _ERRORS if n in arrays]
        if set(arrays) - set(_STATS) - set(_ERRORS) or errors not in ([], list(_ERRORS)):
            raise EMSFileError(
                f"statistics arrays {sorted(arrays)}: expected {list(_STATS)}, optionally {list(_ERRORS)}"
            )
        for name in ("l", "s", "b", *errors):
            want = (1, *arrays["l"].shape[1:]) if name == "x0_var" else arrays["l"].shape
            if arrays[name].shape != want or arrays["l"].shape[0] != k:
                raise EMSFileError(
                    f"statistics {name!r} have shape {arrays[name].shape}, l {arrays['l'].shape}, {k} lambdas"
                )
            if not np.all(np.isfinite(arrays[name])):
                raise EMSFileError(f"statistics {name!r} contain NaN or Inf")
        if any(np.any(arrays[n] < 0) for n in errors):
            raise EMSFileError("standard errors and scales of the statistics must be non-negative")
        if np.any(np.diff(lam) <= 0):
            raise EMSFileError("statistics lambdas must be strictly increasing")
        self._arrays = arrays

    def _get(self, name):
        if self._arrays is None:
            self._read_arrays()
        return self._arrays[name]

    lambdas = property(lambda self: self._get("lambdas"))
    l = property(lambda self: self._get("l"))  # noqa: E741
    s = property(lambda self: self._get("s"))
    b = property(lambda self: self._get("b"))

    def _optional(self, name):
        if self._arrays is None:
            self._read_arrays()
        return self._arrays.get(name)

    se_l = property(lambda self: self._optional("se_l"))
    se_s = property(lambda self: self._optional("se_s"))
    se_b = property(lambda self: self._optional("se_b"))
    f_rms = property(lambda self: self._optional("f_rms"))
    fp_rms = property(lambda self: self._optional("fp_rms"))
    x0_var = property(lambda self: self._optional("x0_var"))

    @property
    def shape(self) -> tuple:
        return tuple(self.metadata["shape"])

    @property
    def guidance_scale(self) -> float:
        return float(self.metadata.get("guidance_scale", 1.0))

    def _checksum(self, arrays) -> str:
        h = hashlib.sha256()
        for name in (*_STATS, *_ERRORS):
            if name in arrays:
                h.update(np.ascontiguousarray(arrays[name]).tobytes())
        return h.hexdigest()

    # --- files ---

    def save(self, path) -> Path:
        """Write a safetensors file (arrays plus JSON metadata, with a checksum of the arrays)."""
        from safetensors.numpy import save_file

        path = Path(path)
        if self._arrays is None:
            self._read_arrays()
        arrays = {k: np.ascontiguousarray(v) for k, v in self._arrays.items()}
        meta = dict(self.metadata, format_version=FORMAT_VERSION, sha256=self._checksum(arrays))
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp), metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
        self.metadata, self.path = meta, path
        return path

    @classmethod
    def load(cls, path) -> EMS:
        """Open a statistics file: reads and validates the header now, the arrays on first use."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise EMSFileError(f"statistics file {str(path)!r} does not exist; compute it with `fastsample ems`")
        try:
            with safe_open(str(path), framework="np") as f:
                raw = (f.metadata() or {}).get(_META_KEY)
                keys = set(f.keys())
        except Exception as e:  # safetensors raises its own error type for truncated or corrupt files
            raise EMSFileError(f"statistics file {str(path)!r} is truncated or corrupt ({e})") from e
        if raw is None or not set(_STATS) <= keys:
            raise EMSFileError(f"{str(path)!r} is not a fastsample statistics file (no {_META_KEY!r} metadata)")
        meta = json.loads(raw)
        if meta.get("format_version") not in (1, FORMAT_VERSION):
            raise EMSFileError(
                f"statistics file {str(path)!r} has format version {meta.get('format_version')}, "
                f"this fastsample reads versions 1 to {FORMAT_VERSION}; recompute it"
            )
        return cls(metadata=meta, path=path)

    def _read_arrays(self):
        from safetensors.numpy import load_file

        if self.path is None:
            raise EMSFileError("statistics have no arrays and no file")
        try:
            arrays = load_file(str(self.path))
        except Exception as e:
            raise EMSFileError(f"statistics file {str(self.path)!r} is truncated or corrupt ({e})") from e
        if self._checksum(arrays) != self.metadata.get("sha256"):
            raise EMSFileError(f"statistics file {str(self.path)!r} is corrupt (checksum mismatch)")
        if tuple(arrays["l"].shape[1:]) != self.shape or len(arrays["lambdas"]) != self.metadata["grid_size"]:
            raise EMSFileError(f"statistics file {str(self.path)!r}: arrays do not match their metadata")
        self._set_arrays(arrays)

    # --- matching ---

    def check(
        self,
        *,
        prediction_type: str | None = None,
        schedule=None,
        shape=None,
        guidance_scale: float | None = None,
        model: torch.nn.Module | None = None,
        model_hash: str | None = None,
    ) -> None:
        """Raise :class:`EMSMismatchError` naming every given property that differs from the statistics'."""
        m = self.metadata
        bad = []
        if prediction_type is not None:
            p = check_prediction_type(prediction_type)
            if p != m["prediction_type"]:
                bad.append(f"prediction type {p!r} (statistics: {m['prediction_type']!r})")
        if schedule is not None:
            fp = schedule_fingerprint(schedule, m["t_start"], m["t_end"])
            if fp != m["schedule"]:
                bad.append(f"noise schedule {fp} (statistics: {m['schedule']})")
        if shape is not None and tuple(shape) != self.shape:
            bad.append(f"sample shape {tuple(shape)} (statistics: {self.shape})")
        if guidance_scale is not None and not math.isclose(float(guidance_scale), self.guidance_scale, rel_tol=1e-6):
            bad.append(f"guidance scale {float(guidance_scale)} (statistics: {self.guidance_scale})")
        if model is not None:
            model_hash = model_fingerprint(model)
        if model_hash is not None and model_hash != m.get("model_hash"):
            bad.append(f"model {model_hash} (statistics: {m.get('model_id')!r}, {m.get('model_hash')})")
        if bad:
            where = f" in {str(self.path)!r}" if self.path else ""
            raise EMSMismatchError(
                f"statistics{where} do not match: " + "; ".join(bad) + ". Statistics are valid only for the model, "
                "sample shape, schedule, prediction type and guidance scale they were computed with; "
                "recompute them with `fastsample ems`."
            )

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"EMS(model={m.get('model_id')!r}, shape={m.get('shape')}, grid_size={m.get('grid_size')}, "
            f"guidance_scale={m.get('guidance_scale')}, num_samples={m.get('num_samples')})"
        )

