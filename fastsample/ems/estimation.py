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

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .._io import UserError, atomic_path
from ..core.parameterization import to_x0_eps
from ..core.schedules import schedule_for_config
from ..fid.inception import no_tf32
from ..formats.ems_file import EMS, FORMAT_VERSION, _tensor_digest, schedule_fingerprint

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


def _check_time_derivative(model_fn, x0, points, device, dtype, steps=(0.1, 1.0, 10.0), rtol: float = 0.2) -> None:
    """Refuse a ``model_fn`` whose forward-mode derivative in the timestep is missing or wrong.

    s and b need d model / d timestep along the ODE (sec. 3.2 of arXiv 2310.13268); a wrapper that calls
    ``float(t)`` or indexes a table with ``int(t)`` silently gives a zero derivative there. At each probe point
    (x0: (B, *shape) float64 data; points: dicts of :func:`_point_scalars`) the JVP in the timestep must be
    non-zero and match a central difference over +-step labels within ``rtol`` of its norm, for one of ``steps``:
    the wider ones for models whose rounding swamps the narrow difference (float16 weights).
    """
    g = torch.Generator().manual_seed(12345)
    for pt in points:
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x = (pt["alpha"] * x0 + pt["sigma"] * noise).to(device, dtype)
        ts = torch.full((len(x),), pt["timestep"], device=device, dtype=dtype)
        _, d = _jvp(model_fn, x, ts, torch.zeros_like(x), torch.ones_like(ts))
        d = d.to(torch.float64)
        for step in steps:
            fd = (model_fn(x, ts + step).to(torch.float64) - model_fn(x, ts - step).to(torch.float64)) / (2 * step)
            ref, err = float(fd.norm()), float((d - fd).norm())
            if float(d.norm()) > 0 and err <= rtol * ref:
                break
        else:
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
            and smooth ones do not (measured: benchmarks/results/dpmsolver_v3.md, "other statistics
            settings").
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
    with torch.no_grad(), _math_attention(), no_tf32():
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

    with torch.no_grad(), _math_attention(), no_tf32():
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


def _all_reduce(t):
    import torch.distributed as dist

    dist.all_reduce(t)
    return t

