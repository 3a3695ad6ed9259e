"""Empirical model statistics (EMS) for DPM-Solver-v3 (Zheng et al., arXiv 2310.13268, sec. 3 and App. C).

On a grid uniform in lambda = log(alpha / sigma), for x_t = alpha x0 + sigma eps with x0 from the data:

- l = E[diag(sigma d eps_theta / dx)], by forward-mode JVPs (``torch.func.jvp``) with one random
  Rademacher (or Gaussian) probe v per sample: diag(J) = E_v[v * J v];
- with f = (sigma eps_theta - l x) / alpha and f' = df/dlambda along the probability-flow ODE
  dx/dlambda = (dlog alpha / dlambda) x - sigma eps_theta (one JVP along (dx/dlambda, dt/dlambda); dl/dlambda
  by central differences on the grid), s and b are the per-element least-squares fit f' ~ s f + b:
  s = Cov(f, f') / Var(f), b = E[f'] - s E[f] (with a ridge of 1e-6 times the mean E[f^2] at each point).

Each statistic comes with its standard error from the same samples (format version 2): l's from the sample
variance of v * J v, s's and b's from the least-squares residuals plus l's error propagated by the delta method.
:func:`summary` says where the statistics cannot be told from DPM-Solver++'s (l = 1, s = b = 0) and how many
samples would change that; the solver shrinks each statistic toward those values by its error
(:func:`fastsample.solvers.dpmsolver_v3.shrink`). :func:`validate_ems` checks on held-out noise that they help.

Statistics, model, latent shape, prediction type, noise schedule, t range, grid and guidance scale form
one matched set: :class:`EMS` stores them together in a safetensors file and :meth:`EMS.check` refuses a
mismatch. Memory: one batch of JVPs at a time, float64 per-element sums (O(grid x elements)).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ._io import UserError, atomic_path, refuse_existing
from .parameterization import check_prediction_type, to_x0_eps
from .schedules import DiscreteVP, RectifiedFlow

__all__ = [
    "EMS",
    "EMSFileError",
    "EMSMismatchError",
    "FORMAT_VERSION",
    "compute_ems",
    "summary",
    "validate_ems",
    "validation_text",
    "schedule_for_config",
    "schedule_fingerprint",
    "model_fingerprint",
    "analytic_model_fn",
    "unet_model_fn",
    "vae_latents",
    "add_subparser",
    "main",
]

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


# --- computing ------------------------------------------------------------------------------------------


def _point_scalars(schedule, lam: float, ptype: str, delta: float = 1e-5) -> dict:
    """Scalars at one lambda: alpha, sigma, timestep label and their lambda-derivatives, eps = cx x + cm m."""

    def at(lv):
        t = float(schedule.t_of_lambda(lv))
        a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
        one = torch.ones((), dtype=torch.float64)
        _, cx = to_x0_eps(torch.zeros((), dtype=torch.float64), one, a, s, ptype)
        _, cm = to_x0_eps(one, torch.zeros((), dtype=torch.float64), a, s, ptype)
        return t, a, s, float(schedule.timestep(t)), float(cx), float(cm)

    t, a, s, ts, cx, cm = at(lam)
    hi, lo = at(lam + delta), at(lam - delta)

    def d(i):
        return (hi[i] - lo[i]) / (2 * delta)

    return {
        "t": t,
        "alpha": a,
        "sigma": s,
        "timestep": ts,
        "dtimestep": d(3),
        "dlog_alpha": (math.log(hi[1]) - math.log(lo[1])) / (2 * delta),
        "cx": cx,
        "cm": cm,
        "d_sigma_cx": (hi[2] * hi[4] - lo[2] * lo[4]) / (2 * delta),
        "d_sigma_cm": (hi[2] * hi[5] - lo[2] * lo[5]) / (2 * delta),
    }


def _jvp(model_fn, x, ts, vx, vts):
    return torch.func.jvp(model_fn, (x, ts), (vx, vts))


def _check_time_derivative(model_fn, x0, points, device, dtype, step: float = 0.1, rtol: float = 0.2) -> None:
    """Refuse a ``model_fn`` whose forward-mode derivative in the timestep is missing or wrong.

    s and b need d model / d timestep along the ODE (sec. 3.2 of arXiv 2310.13268); a wrapper that calls
    ``float(t)`` or indexes a table with ``int(t)`` silently gives a zero derivative there. At each probe point
    (x0: (B, *shape) float64 data; points: dicts of :func:`_point_scalars`) the JVP in the timestep must match
    the central difference over +-``step`` labels within ``rtol`` of its norm, and that difference must not be 0.
    """
    g = torch.Generator().manual_seed(12345)
    for pt in points:
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x = (pt["alpha"] * x0 + pt["sigma"] * noise).to(device, dtype)
        ts = torch.full((len(x),), pt["timestep"], device=device, dtype=dtype)
        _, d = _jvp(model_fn, x, ts, torch.zeros_like(x), torch.ones_like(ts))
        fd = (model_fn(x, ts + step).to(torch.float64) - model_fn(x, ts - step).to(torch.float64)) / (2 * step)
        ref, err = float(fd.norm()), float((d.to(torch.float64) - fd).norm())
        if not ref > 0 or not err <= rtol * ref:
            what = "is zero" if float(d.norm()) == 0 else "disagrees with finite differences"
            raise ValueError(
                f"model_fn is not differentiable in the timestep: at timestep {pt['timestep']:.2f} its derivative "
                f"{what} (norm of the difference {err:.3g}, of the finite difference {ref:.3g}). DPM-Solver-v3 "
                "statistics need d model / d timestep; "
                "pass the timestep tensor to the network unchanged (no float(t), int(t) or table lookups on it)."
            )


def _math_attention():
    """The fused attention kernels have no forward-mode derivative: the math kernel for JVPs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def compute_ems(
    model_fn: Callable,
    scheduler_config,
    x0,
    *,
    grid_size: int = 250,
    num_samples: int = 1024,
    batch_size: int = 16,
    t_start: float | None = None,
    t_end: float | None = None,
    guidance_scale: float = 1.0,
    model_id: str = "",
    model_hash: str = "",
    probe: str = "rademacher",
    seed: int = 0,
    shared_noise: bool = False,
    l=None,
    checkpoint=None,
    progress: bool = True,
    accelerator=None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> EMS:
    """Compute l, s, b on ``grid_size`` points uniform in lambda (arXiv 2310.13268, sec. 3).

    Args:
        model_fn: ``model_fn(x, timestep) -> output`` with x (B, *shape) and timestep a float tensor (B,)
            of diffusers' labels; output as the config's ``prediction_type`` says. Must be differentiable
            by ``torch.func.jvp`` in both inputs (guidance, if any, inside it): a ``ValueError`` names a
            timestep derivative that is zero or disagrees with finite differences on three probe points.
        scheduler_config: the model's diffusers scheduler config (schedule and prediction type).
        x0: data, a tensor (N, *shape) (cycled), or a callable ``x0(indices) -> tensor``.
        grid_size: number of lambda points K (the statistics' resolution).
        num_samples: samples per lambda point.
        shared_noise: common random numbers: sample j keeps its data point, noise and probe at every
            lambda, so the estimation error varies smoothly with lambda. Default False (fresh draws per
            point): the solver integrates l, s, b over each step, where independent errors average out
            and smooth ones do not; on the 6-D benchmark mixture (16,384 samples) the best solver error
            at NFE 8 / 10 was 0.92 / 0.79x the best baseline's with fresh draws, 0.99 / 0.91x shared.
        batch_size: samples per JVP; memory holds one batch of JVPs at a time.
        t_start, t_end: time range (default: the schedule's [t_max, t_min]).
        l: optional precomputed l (K, *shape): skips the first pass.
        checkpoint: a file for partial sums; an interrupted run restarts from it with the same settings.
        accelerator: an ``accelerate.Accelerator``; each process takes its share of the samples and the
            sums are all-reduced. Default: the running ``accelerate`` state if it has several processes.
        dtype: dtype of the model inputs (sums are always float64).
    Returns:
        an :class:`EMS` (not yet saved).
    """
    schedule, ptype = schedule_for_config(scheduler_config)
    t0 = schedule.t_max if t_start is None else float(t_start)
    t1 = schedule.t_min if t_end is None else float(t_end)
    if not t0 > t1 > 0:
        raise ValueError(f"need t_start > t_end > 0, got {t0}, {t1}")
    if grid_size < 2 or num_samples < 2 or batch_size < 1:
        raise ValueError("need grid_size >= 2, num_samples >= 2 and batch_size >= 1")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    with np.errstate(divide="ignore"):
        lam0, lam1 = float(schedule.lambda_(t0)), float(schedule.lambda_(t1))
    if not (np.isfinite(lam0) and np.isfinite(lam1)):
        raise ValueError(
            f"the time range [{t1}, {t0}] reaches alpha = 0 or sigma = 0 (infinite lambda); pass t_start and t_end "
            "strictly inside (for flow models, t_start < 1)"
        )
    lambdas = np.linspace(lam0, lam1, grid_size)
    points = [_point_scalars(schedule, float(v), ptype) for v in lambdas]

    if accelerator is None:
        try:
            from accelerate.state import PartialState

            state = PartialState()
            if state.num_processes > 1:
                accelerator = state
        except Exception:  # accelerate not initialised: a single process
            accelerator = None
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    if device is None:
        device = accelerator.device if accelerator is not None else torch.device("cpu")
    device = torch.device(device)

    get_x0 = x0 if callable(x0) else (lambda idx, data=x0: data[idx % len(data)])
    shape = tuple(get_x0(torch.arange(1)).shape[1:])
    with torch.no_grad(), _math_attention():
        probes = [_point_scalars(schedule, lam0 + (lam1 - lam0) * k / 4, ptype) for k in (1, 2, 3)]
        _check_time_derivative(model_fn, get_x0(torch.arange(2)).to(torch.float64), probes, device, dtype)
    D = int(np.prod(shape))
    settings = {
        "schedule": schedule_fingerprint(schedule, t0, t1),
        "prediction_type": ptype,
        "grid_size": grid_size,
        "num_samples": num_samples,
        "t_start": t0,
        "t_end": t1,
        "guidance_scale": float(guidance_scale),
        "probe": probe,
        "seed": seed,
        "shared_noise": bool(shared_noise),
        "shape": list(shape),
        "model_hash": model_hash,
        "l_given": l is not None,
        "data": _tensor_digest(x0) if torch.is_tensor(x0) else None,
        "moments": 2,  # sums of squares for the standard errors (format version 2)
    }
    key = _settings_key(settings)
    state = {
        "key": key,
        "l_sum": torch.zeros(2, grid_size, D, dtype=torch.float64),
        "l_done": np.zeros(grid_size, bool),
    }
    state["sb_sum"] = torch.zeros(len(_PAIRS) + 4, grid_size, D, dtype=torch.float64)
    state["sb_done"] = np.zeros(grid_size, bool)
    if checkpoint is not None and Path(checkpoint).is_file():
        try:
            saved = torch.load(checkpoint, weights_only=False)
        except Exception as e:
            raise UserError(f"checkpoint {str(checkpoint)!r} is unreadable or truncated ({e}); delete it") from e
        if not isinstance(saved, dict) or saved.get("key") != key:
            raise ValueError(f"checkpoint {str(checkpoint)!r} was written with other settings; remove it or match them")
        state = saved
    main_process = rank == 0

    def save_state():
        if checkpoint is not None and main_process:
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)

    mine = torch.arange(rank, num_samples, world)
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    todo = (0 if l is not None else int((~state["l_done"]).sum()) * len(batches)) + int(
        (~state["sb_done"]).sum()
    ) * len(batches)
    bar = None
    if progress and main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo, desc="EMS (JVP batches)", unit="batch")

    def reduce(t):
        if accelerator is None or world == 1:
            return t
        return accelerator.reduce(t, reduction="sum") if hasattr(accelerator, "reduce") else _all_reduce(t)

    def draw(pass_id, i, idx):
        """Data, noise and probe for samples ``idx`` at point i: seeded per sample, so the result does
        not depend on the batch size or the number of processes."""
        xb = get_x0(idx).to(torch.float64)
        noise, v = torch.empty_like(xb), torch.empty(xb.shape, dtype=dtype)
        for row, j in enumerate(idx.tolist()):
            key = (seed, pass_id, j) if shared_noise else (seed, pass_id, i, j)
            g = torch.Generator().manual_seed(hash(key) & 0x7FFFFFFFFFFF)
            noise[row] = torch.randn(xb.shape[1:], generator=g, dtype=torch.float64)
            if probe == "rademacher":
                v[row] = torch.randint(0, 2, xb.shape[1:], generator=g).to(dtype) * 2 - 1
            else:
                v[row] = torch.randn(xb.shape[1:], generator=g).to(dtype)
        return xb, noise, v

    def run(x, ts, vx, vts):
        m, dm = _jvp(model_fn, x, ts, vx, vts)
        return m.to(torch.float64), dm.to(torch.float64)

    with torch.no_grad(), _math_attention():
        # pass 1: l = sigma (cx + cm E[v * dm/dx v])
        if l is None:
            for i, pt in enumerate(points):
                if state["l_done"][i]:
                    continue
                acc = torch.zeros(2, D, dtype=torch.float64, device=device)
                for idx in batches:
                    xb, noise, v = draw(1, i, idx)
                    x = (pt["alpha"] * xb + pt["sigma"] * noise).to(device, dtype)
                    ts = torch.full((len(idx),), pt["timestep"], device=device, dtype=dtype)
                    _, dm = run(x, ts, v.to(device), torch.zeros_like(ts))
                    u = (v.to(device, torch.float64) * dm).reshape(len(idx), -1)
                    acc += torch.stack([u.sum(0), (u * u).sum(0)])
                    del dm, x, u
                    if bar is not None:
                        bar.update(1)
                state["l_sum"][:, i] = reduce(acc).cpu()
                state["l_done"][i] = True
                save_state()
            eu, euu = state["l_sum"].numpy() / num_samples
            scale = np.array([[p["sigma"] * p["cm"]] for p in points])
            l_arr = np.array([[p["sigma"] * p["cx"]] for p in points]) + scale * eu
            se_l = np.abs(scale) * _standard_error(eu, euu, num_samples)
        else:
            l_arr = np.asarray(l, dtype=np.float64).reshape(grid_size, D)
            se_l = np.zeros_like(l_arr)  # given l: its error is not known here
        dl = np.gradient(l_arr, lambdas, axis=0)

        # pass 2: f = A - l y and f' = P - l' y - l Q along the ODE (y = x / alpha, A = N / alpha, Q = y'): per-element
        # sums of A, y, P, Q and their products, from which s, b and their errors follow for any l, l'
        for i, pt in enumerate(points):
            if state["sb_done"][i]:
                continue
            acc = torch.zeros(len(_PAIRS) + 4, D, dtype=torch.float64, device=device)
            a, s = pt["alpha"], pt["sigma"]
            for idx in batches:
                xb, noise, _ = draw(2, i, idx)
                x = (a * xb + s * noise).to(device, dtype)
                ts = torch.full((len(idx),), pt["timestep"], device=device, dtype=dtype)
                m = model_fn(x, ts).to(torch.float64)
                xd = x.to(torch.float64).reshape(len(idx), -1)
                N = s * (pt["cx"] * xd + pt["cm"] * m.reshape(len(idx), -1))
                dx = pt["dlog_alpha"] * xd - N
                vx = dx.reshape(x.shape).to(x.dtype)
                m, dm = run(x, ts, vx, torch.full_like(ts, pt["dtimestep"]))
                m, dm = m.reshape(len(idx), -1), dm.reshape(len(idx), -1)
                dN = pt["d_sigma_cx"] * xd + s * pt["cx"] * dx + pt["d_sigma_cm"] * m + s * pt["cm"] * dm
                y = xd / a
                v4 = (N / a, y, (dN - pt["dlog_alpha"] * N) / a, (dx - pt["dlog_alpha"] * xd) / a)  # A, y, P, Q
                acc += torch.stack([v.sum(0) for v in v4] + [(v4[p] * v4[q]).sum(0) for p, q in _PAIRS])
                del m, dm, x, xd, N, dx, y, v4
                if bar is not None:
                    bar.update(1)
            state["sb_sum"][:, i] = reduce(acc).cpu()
            state["sb_done"][i] = True
            save_state()
    if bar is not None:
        bar.close()

    moments = state["sb_sum"].numpy() / num_samples
    s_arr, b_arr, se_s, se_b, f_rms, fp_rms = _fit_sb(moments, l_arr, dl, se_l, lambdas, num_samples)
    # Var(x / alpha) = Var(x0) + rho^2 at the lowest-noise point; + 3 standard errors of a variance estimate
    var_y = np.maximum(moments[6, -1] - moments[1, -1] ** 2, 0.0) * num_samples / (num_samples - 1)
    rho2 = (points[-1]["sigma"] / points[-1]["alpha"]) ** 2
    x0_var = np.maximum(var_y - rho2, 0.0) * (1 + 3 * math.sqrt(2 / (num_samples - 1)))
    errors = {
        "se_l": se_l,
        "se_s": se_s,
        "se_b": se_b,
        "f_rms": f_rms,
        "fp_rms": fp_rms,
        "x0_var": x0_var[None],
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "model_hash": model_hash,
        "shape": list(shape),
        "prediction_type": ptype,
        "schedule": settings["schedule"],
        "t_start": t0,
        "t_end": t1,
        "grid_size": grid_size,
        "guidance_scale": float(guidance_scale),
        "num_samples": num_samples,
        "probe": probe,
        "seed": seed,
        "shared_noise": bool(shared_noise),
    }
    return EMS(
        lambdas,
        l_arr.reshape((grid_size,) + shape),
        s_arr.reshape((grid_size,) + shape),
        b_arr.reshape((grid_size,) + shape),
        meta,
        errors={k: v.reshape((len(v),) + shape) for k, v in errors.items()},
    )


def _standard_error(mean, mean_sq, n: int):
    """Standard error of a sample mean from the sample's first two moments (unbiased variance)."""
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0) * n / (n - 1) / n)


_PAIRS = ((0, 0), (0, 1), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3))  # of (A, y, P, Q)


def _f_moments(m, l, dl):
    """E f, E f', E f^2, E f f', E f'^2 for f = A - l y, f' = P - dl y - l Q from the sums of :data:`_PAIRS`."""
    eA, ey, eP, eQ, AA, Ay, yy, AP, AQ, yP, yQ, PP, PQ, QQ = m
    ef = eA - l * ey
    efp = eP - dl * ey - l * eQ
    eff = AA - 2 * l * Ay + l * l * yy
    effp = AP - dl * Ay - l * AQ - l * yP + l * dl * yy + l * l * yQ
    efpfp = PP + dl * dl * yy + l * l * QQ - 2 * dl * yP - 2 * l * PQ + 2 * l * dl * yQ
    return ef, efp, eff, effp, efpfp


def _ols(ef, efp, eff, effp, efpfp, n: int):
    """s, b of the per-element least-squares fit f' ~ s f + b and their ordinary standard errors (given l)."""
    var = np.maximum(eff - ef * ef, 0.0)
    cov = effp - ef * efp
    ridge = 1e-6 * np.maximum(eff.mean(axis=1, keepdims=True), 1e-30)
    s = cov / (var + ridge)
    r2 = np.maximum(efpfp - efp * efp - 2 * s * cov + s * s * var, 0.0) * n / max(n - 2, 1)
    return s, efp - s * ef, np.sqrt(r2 / (n * (var + ridge))), np.sqrt(r2 * np.maximum(eff, 0.0) / (n * (var + ridge)))


def _fit_sb(moments, l, dl, se_l, lambdas, n: int):
    """s, b (K, D) of the per-element least-squares fit f' ~ s f + b over n samples, their standard errors, and
    the root mean squares of f and f'.

    A ridge of 1e-6 of the mean E f^2 at each point gives s = 0 where f does not vary. Standard errors: ordinary
    least squares' (residual variance over n - 2 degrees of freedom: SE(s)^2 = r2 / (n Var f),
    SE(b)^2 = r2 E f^2 / (n Var f)), plus, by the delta method, the error of l (``se_l``) and of dl/dlambda
    (central differences of independent points) propagated through f = A - l y, f' = P - l' y - l Q.
    """
    s, b, se_s, se_b = _ols(*_f_moments(moments, l, dl), n)
    step = np.diff(lambdas)[:, None]
    se_dl = np.empty_like(se_l)
    se_dl[1:-1] = np.hypot(se_l[2:], se_l[:-2]) / (step[1:] + step[:-1])
    se_dl[0], se_dl[-1] = np.hypot(se_l[1], se_l[0]) / step[0], np.hypot(se_l[-1], se_l[-2]) / step[-1]
    var_s, var_b = se_s**2, se_b**2
    for which, se in ((0, se_l), (1, se_dl)):
        h = 1e-6 * np.maximum(np.abs(l if which == 0 else dl), 1.0)
        lp, dlp = (l + h, dl) if which == 0 else (l, dl + h)
        s2, b2, _, _ = _ols(*_f_moments(moments, lp, dlp), n)
        var_s = var_s + ((s2 - s) / h * se) ** 2
        var_b = var_b + ((b2 - b) / h * se) ** 2
    _, _, eff, _, efpfp = _f_moments(moments, l, dl)
    return s, b, np.sqrt(var_s), np.sqrt(var_b), np.sqrt(np.maximum(eff, 0.0)), np.sqrt(np.maximum(efpfp, 0.0))


# --- error bars and validation ------------------------------------------------------------------------------


def summary(ems: EMS) -> str:
    """Text summary of the statistics' errors: per statistic and third of the lambda range, the median |t| against
    DPM-Solver++'s value (l = 1, s = b = 0) and the James-Stein weight the solver gives it; ends with whether more
    samples are needed (some statistic partly noise, weight 0.2-0.8, at more than a tenth of the points)."""
    from .solvers.dpmsolver_v3 import shrink

    m = ems.metadata
    lines = [f"{m.get('grid_size')} lambda points x {m.get('num_samples')} samples, shape {m.get('shape')}"]
    if ems.se_l is None:
        return "\n".join(lines + ["no standard errors (format version 1): recompute to get them"])
    k = len(ems.lambdas)
    thirds = np.array_split(np.arange(k), 3)
    partly = {}
    for name, target in (("l", 1.0), ("s", 0.0), ("b", 0.0)):
        est = np.asarray(getattr(ems, name), dtype=np.float64).reshape(k, -1)
        se = np.asarray(getattr(ems, "se_" + name), dtype=np.float64).reshape(k, -1)
        w = np.broadcast_to(shrink(est, se, target)[1], est.shape).mean(axis=1)
        z = np.abs(est - target) / np.maximum(se, 1e-300)
        cells = [
            f"lambda {ems.lambdas[i[0]]:+.1f}..{ems.lambdas[i[-1]]:+.1f}: "
            f"|t| {np.median(z[i]):.1f}, weight {w[i].mean():.2f}"
            for i in thirds
        ]
        lines.append(f"{name}: " + "; ".join(cells))
        partly[name] = int(np.sum((w >= 0.2) & (w <= 0.8)))
    noisy = {n: c for n, c in partly.items() if c > k / 10}
    if noisy:
        what = ", ".join(f"{n} at {c} of {k} points" for n, c in noisy.items())
        lines.append(
            f"more samples needed: partly noise ({what}; the solver shrinks them toward DPM-Solver++); "
            f"4x the samples (--num-samples {4 * int(m.get('num_samples', 0))}) halves the errors"
        )
    else:
        lines.append("enough samples: each statistic is either resolved or indistinguishable from DPM-Solver++'s value")
    return "\n".join(lines)


VALIDATION_GRIDS = ("uniform_lambda", "uniform_t", "quadratic_t", "karras")


def validate_ems(
    ems: EMS,
    model_fn: Callable,
    scheduler_config,
    *,
    nfes=(5, 6, 8, 10),
    num_samples: int = 64,
    seed: int = 1_000_003,
    reference_steps: int = 200,
    batch_size: int = 64,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Check on held-out starts that DPM-Solver-v3 with these statistics beats it without them; choose from which
    lambda on the solver uses them. Stores the result in ``ems.metadata["validation"]`` and returns it.

    From ``num_samples`` standard-normal starts (seeded by ``seed``, not the statistics' seed) at the statistics'
    t_start, solve to t_end with the paper's preset options for each NFE on each grid of
    :data:`VALIDATION_GRIDS`, with and without statistics, against a reference: the statistics-free order-3
    solver with ``reference_steps`` steps on a quadratic-t grid (its distance to half as many steps is stored as
    its error). Statistics are tried from each of the lambdas in the grid's first point and its quartiles on
    (below them l = 1, s = b = 0) and not at all; the solver then uses the start with the lowest mean log error
    ratio (with / without) over grids and NFEs among those not worse anywhere by more than two standard errors
    of that ratio (over the starts); "not at all" always qualifies. ``model_fn`` as for :func:`compute_ems`.

    Result: ``rows`` {grid: {nfe: [RMS with all statistics, without, with them from the chosen lambda]}},
    ``hurt`` [[grid, nfe, with, without]] where all statistics raised the error, ``use_from_lambda``,
    ``reference``, ``num_samples``, ``seed``. The scheduler warns once when ``hurt`` is not empty.
    """
    from . import grids as grid_fns
    from .sampling import sample
    from .solvers.dpmsolver_v3 import DPMSolverV3, StatisticsResolutionError, preset

    schedule, ptype = schedule_for_config(scheduler_config)
    ems.check(prediction_type=ptype, schedule=schedule)
    t0, t1 = float(ems.metadata["t_start"]), float(ems.metadata["t_end"])
    device = torch.device("cpu" if device is None else device)

    def fn(x, t):
        return model_fn(x, torch.full((len(x),), float(schedule.timestep(t)), device=x.device, dtype=x.dtype))

    g = torch.Generator().manual_seed(seed)
    x = torch.randn((num_samples, *ems.shape), generator=g, dtype=torch.float64).to(device, dtype)

    def solve(solver, grid):
        with torch.no_grad():
            outs = [
                sample(fn, x[i : i + batch_size], schedule, solver, grid, ptype) for i in range(0, len(x), batch_size)
            ]
        return torch.cat(outs).to(torch.float64)

    def sq_err(a, b):  # per-sample mean squared error (num_samples,)
        return (a - b).pow(2).reshape(len(a), -1).mean(1).cpu().numpy()

    ref_solver = DPMSolverV3(order=3)
    ref = solve(ref_solver, grid_fns.quadratic_t(schedule, reference_steps, t_start=t0, t_end=t1))
    half = solve(ref_solver, grid_fns.quadratic_t(schedule, reference_steps // 2, t_start=t0, t_end=t1))
    lam = ems.lambdas
    starts = [float(lam[0]) + (float(lam[-1]) - float(lam[0])) * q for q in (0.0, 0.25, 0.5, 0.75)]
    starts.append(float(lam[-1]) + 1.0)  # not at all
    cells = {}  # (grid, nfe) -> [per-sample squared errors without, with from each start]
    for name in VALIDATION_GRIDS:
        for n in nfes:
            opts = preset(n)
            opts.pop("time_grid")
            grid = grid_fns.make_grid(name, schedule, n, t_start=t0, t_end=t1)
            try:
                runs = [sq_err(solve(DPMSolverV3(stats=_from_lambda(ems, a), **opts), grid), ref) for a in starts[:-1]]
            except StatisticsResolutionError:  # a step finer than the statistics' grid: not checkable
                continue
            without = sq_err(solve(DPMSolverV3(**opts), grid), ref)
            cells[(name, int(n))] = [without, *runs, without]

    def log_ratio(a, c):  # log RMS ratio and its standard error over the starts (delta method)
        r = 0.5 * math.log(a.mean() / c.mean())
        return r, 0.5 * float(np.std(a / a.mean() - c / c.mean(), ddof=1)) / math.sqrt(len(a))

    best, best_mean = len(starts) - 1, 0.0
    for j in range(len(starts) - 1):
        stats = [log_ratio(v[1 + j], v[0]) for v in cells.values()]
        if stats and all(r <= 2 * se for r, se in stats) and np.mean([r for r, _ in stats]) < best_mean:
            best, best_mean = j, float(np.mean([r for r, _ in stats]))
    rows, hurt = {}, []
    for (name, n), v in cells.items():
        a, c, chosen = (math.sqrt(float(u.mean())) for u in (v[1], v[0], v[1 + best]))
        rows.setdefault(name, {})[str(n)] = [a, c, chosen]
        if a > c:
            hurt.append([name, n, a, c])
    result = {
        "num_samples": num_samples,
        "seed": seed,
        "reference": {"solver": "no statistics, order 3, quadratic t", "steps": reference_steps, "error": 0.0},
        "rows": rows,
        "hurt": hurt,
        "use_from_lambda": starts[best] if cells else None,  # nothing checked: no decision
        "lambda_max": float(lam[-1]),
    }
    result["reference"]["error"] = float(math.sqrt(float(sq_err(half, ref).mean())))
    ems.metadata["validation"] = result
    return result


def _from_lambda(ems: EMS, start: float) -> EMS:
    """The same statistics (shared arrays) with validation metadata that makes the solver use them from ``start``."""
    out = EMS(metadata=dict(ems.metadata, validation={"use_from_lambda": start}), path=ems.path)
    if ems._arrays is None:
        ems._read_arrays()
    out._arrays = ems._arrays
    return out


def _all_reduce(t):
    import torch.distributed as dist

    dist.all_reduce(t)
    return t


# --- model wrappers -------------------------------------------------------------------------------------


def analytic_model_fn(mixture, scheduler_config) -> Callable:
    """The exact model of a :class:`~fastsample.analytic.GaussianMixture` as ``model_fn(x, timestep)``.

    Differentiable in x and in the timestep label (alpha and sigma computed in torch from the
    schedule's log-alpha, piecewise linear in t for a discrete schedule), so EMS can be computed for it.
    """
    from .parameterization import from_x0_eps

    schedule, ptype = schedule_for_config(scheduler_config)
    if isinstance(schedule, DiscreteVP):
        tn = torch.as_tensor(schedule.t_nodes)
        la = torch.as_tensor(schedule.log_alpha_nodes)

        def log_alpha(t):
            i = torch.clamp(torch.searchsorted(tn, t.detach(), right=True) - 1, 0, len(tn) - 2)
            return la[i] + (t - tn[i]) * (la[i + 1] - la[i]) / (tn[i + 1] - tn[i])

        def alpha_sigma(ts):
            lg = log_alpha((ts.to(torch.float64) + 1.0) / schedule.num_train_timesteps)
            return torch.exp(lg), torch.sqrt(-torch.expm1(2 * lg))
    else:

        def alpha_sigma(ts):
            t = ts.to(torch.float64) / schedule.num_train_timesteps
            return 1 - t, t

    m, v, lw = (torch.as_tensor(a) for a in (mixture.means, mixture.variances, mixture.log_weights))

    def model_fn(x, timestep):
        a, s = alpha_sigma(timestep)
        a, s = a[:, None], s[:, None]
        y = x.reshape(len(x), -1).to(torch.float64) / a
        rho = s / a
        s2 = v[None] + (rho * rho)[:, :, None]  # (B, K, D)
        diff = y[:, None, :] - m[None]
        logp = lw[None] - 0.5 * (torch.log(2 * math.pi * s2).sum(-1) + (diff * diff / s2).sum(-1))
        r = torch.softmax(logp, dim=1)
        x0 = torch.einsum("bk,bkd->bd", r, m[None] + v[None] / s2 * diff)
        xf = x.reshape(len(x), -1).to(torch.float64)
        eps = (xf - a * x0) / s
        if ptype == "epsilon":
            out = eps
        elif ptype == "sample":
            out = x0
        elif ptype == "v_prediction":
            out = a * eps - s * x0
        else:
            out = from_x0_eps(x0, eps, 0.0, 0.0, ptype)
        return out.reshape(x.shape).to(x.dtype)

    return model_fn


def unet_model_fn(
    unet, encoder_hidden_states=None, negative_encoder_hidden_states=None, guidance_scale: float = 1.0, **extra
):
    """``model_fn(x, timestep)`` for a diffusers UNet: ``UNet2DModel`` (no conditioning) or an SD/SDXL
    ``UNet2DConditionModel`` with classifier-free guidance eps_u + w (eps_c - eps_u) at ``guidance_scale``.

    ``encoder_hidden_states`` (P, seq, dim) are cycled over the batch; SDXL's ``added_cond_kwargs`` go in
    ``extra`` as ``added_cond_kwargs`` / ``negative_added_cond_kwargs`` dicts of (P, ...) tensors.
    """

    def rows(t, b):
        return t[torch.arange(b, device=t.device) % len(t)]

    def model_fn(x, timestep):
        if encoder_hidden_states is None:
            return unet(x, timestep).sample
        b = len(x)
        cond = rows(encoder_hidden_states, b)
        add = extra.get("added_cond_kwargs")
        add_c = None if add is None else {k: rows(v, b) for k, v in add.items()}
        if guidance_scale == 1.0:
            return unet(x, timestep, encoder_hidden_states=cond, added_cond_kwargs=add_c).sample
        unc = rows(negative_encoder_hidden_states, b)
        nadd = extra.get("negative_added_cond_kwargs")
        add_in = None
        if add_c is not None:
            add_in = {k: torch.cat([rows(nadd[k], b), add_c[k]]) for k in add_c}
        out = unet(
            torch.cat([x, x]),
            torch.cat([timestep, timestep]),
            encoder_hidden_states=torch.cat([unc, cond]),
            added_cond_kwargs=add_in,
        ).sample
        eu, ec = out.chunk(2)
        return eu + guidance_scale * (ec - eu)

    return model_fn


@torch.no_grad()
def vae_latents(vae, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Latents (mean of the posterior, times the VAE's scaling factor) of images in [-1, 1], (N, 3, H, W)."""
    dev = next(vae.parameters()).device
    dt = next(vae.parameters()).dtype
    out = []
    for i in range(0, len(images), batch_size):
        z = vae.encode(images[i : i + batch_size].to(dev, dt)).latent_dist.mean
        out.append((z * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)


# --- command line ---------------------------------------------------------------------------------------


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``fastsample ems`` on an argparse subparsers object."""
    p = subparsers.add_parser("ems", help="compute DPM-Solver-v3 empirical model statistics")
    _add_arguments(p)
    p.set_defaults(func=_run)
    return p


def _add_arguments(p):
    from .cli import device, positive_int

    p.add_argument(
        "--model", required=True, help="'demo-ddpm', 'demo-flow', or a local diffusers pipeline directory / hub id"
    )
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--data", default=None, help="images in [-1, 1] as .npy/.pt (N, C, H, W); 'self' for SD's own")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line (SD/SDXL)")
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--grid-size", type=positive_int, default=250, help="number of lambda points")
    p.add_argument("--num-samples", type=positive_int, default=1024, help="samples per lambda point")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--t-start", type=float, default=None)
    p.add_argument("--t-end", type=float, default=None)
    p.add_argument("--height", type=int, default=None, help="SD image height (latents are height / 8)")
    p.add_argument("--checkpoint", default=None, help="partial-sums file for resuming")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--validate",
        action="store_true",
        help="then compare DPM-Solver-v3 with and without the statistics at NFE 5-10 (stored in the file)",
    )
    p.add_argument("--validate-samples", type=int, default=64, help="held-out starts for --validate")


def _load_images(path):
    if path.endswith(".npy"):
        return torch.from_numpy(np.load(path)).float()
    return torch.load(path).float()


def _run(args) -> Path:
    from accelerate import Accelerator

    refuse_existing(args.out, args.force)  # before the work, not after it
    if args.checkpoint and Path(args.checkpoint).resolve() == Path(args.out).resolve():
        raise UserError(f"--checkpoint {args.checkpoint} is also --out; give it its own name")
    acc = Accelerator()
    device = args.device or acc.device
    common = dict(
        grid_size=args.grid_size,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        t_start=args.t_start,
        t_end=args.t_end,
        seed=args.seed,
        checkpoint=args.checkpoint,
        progress=not args.no_progress,
        accelerator=acc,
        device=device,
    )
    if args.model in ("demo-ddpm", "demo-flow"):
        from .demo import digits_split, load_ddpm_pipeline, load_flow_pipeline

        flow = args.model == "demo-flow"
        pipe = load_flow_pipeline() if flow else load_ddpm_pipeline()
        unet = pipe.unet.to(device).eval()
        data = _load_images(args.data) if args.data else digits_split()[0].images
        if flow:  # lambda is infinite at t = 1 and t = 0: the range the solver's finite steps use
            common["t_start"] = 0.995 if args.t_start is None else args.t_start
            common["t_end"] = 0.005 if args.t_end is None else args.t_end
        fn = unet_model_fn(unet)
        ems = compute_ems(
            fn,
            pipe.scheduler.config,
            data,
            model_id=f"fastsample/{args.model}",
            model_hash=model_fingerprint(unet),
            **common,
        )
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(args.model).to(device)
        unet = pipe.unet.eval()
        if getattr(unet.config, "cross_attention_dim", None) is None:
            data = _load_images(args.data)
            fn = unet_model_fn(unet)
            guidance = 1.0
        else:
            prompts = Path(args.prompts).read_text().splitlines() if args.prompts else [""]
            pe, ne = pipe.encode_prompt(prompts, device, 1, args.guidance_scale > 1.0)[:2]
            fn = unet_model_fn(unet, pe, ne, args.guidance_scale)
            guidance = args.guidance_scale
            if args.data == "self":
                h = args.height or unet.config.sample_size * pipe.vae_scale_factor
                data = pipe(prompts, height=h, width=h, output_type="latent", guidance_scale=guidance).images.cpu()
            else:
                data = vae_latents(pipe.vae, _load_images(args.data))
        ems = compute_ems(
            fn,
            pipe.scheduler.config,
            data,
            guidance_scale=guidance,
            model_id=args.model,
            model_hash=model_fingerprint(unet),
            **common,
        )
    if acc.is_main_process:
        print(summary(ems))
        if args.validate:
            print(
                validation_text(
                    validate_ems(
                        ems,
                        fn,
                        pipe.scheduler.config,
                        num_samples=args.validate_samples,
                        device=device,
                        batch_size=args.batch_size,
                    )
                )
            )
        return ems.save(args.out)
    return Path(args.out)


def validation_text(v: dict) -> str:
    """The result of :func:`validate_ems` as lines: RMS error with / without statistics per grid and NFE."""
    lines = [f"validation on {v['num_samples']} held-out starts (reference error {v['reference']['error']:.2g}):"]
    for grid, row in v["rows"].items():
        cells = "; ".join(f"NFE {n} {a:.4f} / {b:.4f} / {c:.4f}" for n, (a, b, c) in row.items())
        lines.append(f"  {grid} (with / without / used): {cells}")
    if not v["rows"]:
        lines.append("  nothing to check: every step of these NFEs is finer than the statistics' lambda grid")
        return "\n".join(lines)
    if v["hurt"]:
        lines.append("all statistics raised the error at " + ", ".join(f"{g} NFE {n}" for g, n, _, _ in v["hurt"]))
    lam = v["use_from_lambda"]
    lines.append(
        f"the solver uses the statistics from lambda {lam:.2f} on"
        if lam <= v["lambda_max"]
        else "the solver does not use the statistics (DPM-Solver++): they did not help on this check"
    )
    return "\n".join(lines)


def main(argv=None) -> Path:
    """``fastsample ems ...`` as a function: parse ``argv`` and compute, save and return the file path."""
    from .cli import ArgumentParser

    p = ArgumentParser(prog="fastsample ems", description="compute DPM-Solver-v3 empirical model statistics")
    _add_arguments(p)
    return _run(p.parse_args(argv))


if __name__ == "__main__":
    main()
