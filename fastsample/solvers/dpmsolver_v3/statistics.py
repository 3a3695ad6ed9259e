"""The statistics as DPM-Solver-v3 uses them (arXiv 2310.13268): shrunk by their standard errors toward the
statistics-free values l = 1, s = b = 0, bounded, and trivial outside the range their validation accepted.

Arrays are float64 (K, D): K lambda points, D elements of the flattened sample shape.
"""

from __future__ import annotations

import numpy as np

__all__ = ["S_RANGE", "shrink", "regularize", "validated_start"]

S_RANGE = (-3.0, 1.0)  # bounds of s; exact statistics tend to s = +1 at high noise (f - E f ~ e^lambda)


def shrink(est, se, target: float):
    """Positive-part James-Stein shrinkage of ``est`` (K, D) toward ``target`` by its standard errors ``se``.

    Row k (one lambda point, D elements) becomes target + w_k (est_k - target) with z = (est - target) / se and
    w_k = max(0, 1 - (D - 2) / sum_i z_ki^2) for D >= 3 (per element, w = max(0, 1 - 1 / z^2), for D < 3).
    For D >= 3 this has a lower expected squared error, in units of se, than ``est`` itself whatever the true
    values (James & Stein 1961; Efron & Morris 1973): pure noise (z ~ N(0, 1)) gives w ~ 0, the value without
    statistics; statistics many errors away from it keep w ~ 1. Elements with se = 0 count as exact.
    Returns (shrunk (K, D) float64, w (K, 1) or (K, D)).
    """
    est, se = np.asarray(est, dtype=np.float64), np.asarray(se, dtype=np.float64)
    d = est - target
    with np.errstate(divide="ignore", invalid="ignore"):
        z2 = np.where(se > 0, (d / np.where(se > 0, se, 1.0)) ** 2, np.where(d != 0, np.inf, 0.0))
        if est.shape[1] >= 3:
            w = np.clip(1.0 - (est.shape[1] - 2) / z2.sum(axis=1, keepdims=True), 0.0, 1.0)
        else:
            w = np.clip(1.0 - 1.0 / z2, 0.0, 1.0)
    w = np.nan_to_num(w, nan=0.0)
    return target + w * d, w


def regularize(stats, grid_lambdas=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """l, s, b (K, D) float64 as the solver uses them: shrunk by their errors, bounded, and trivial below the
    lambda from which the statistics' validation found them useful on the grid with lambdas ``grid_lambdas``
    (:func:`validated_start`).

    ``stats`` has ``lambdas`` (K,), ``l``, ``s``, ``b`` (K, *S) and, from format version 2 of the
    :class:`~fastsample.formats.ems_file.EMS` file,
    ``se_l``, ``se_s``, ``se_b``, ``f_rms``, ``fp_rms`` (K, *S), ``x0_var`` (1, *S)
    (else None), and ``metadata["validation"]["use_from_lambda"]`` once validated
    (:func:`fastsample.ems.validate_ems`).

    1. Shrinkage (:func:`shrink`) toward l = 1, s = b = 0, the values for which the solver is DPM-Solver++, so
       statistics within their errors of those values become them.
    2. Bounds, whatever the file says. For the exact model 1 - l = E[Var(x0 | x_t)] / rho^2 (rho = sigma / alpha,
       Tweedie), and E[Var(x0 | x_t)] <= min(rho^2, Var x0) (x_t / alpha has squared error rho^2; total
       variance), so l is in [max(0, 1 - Var x0 / rho^2), 1]: exp(-(L_t - L_s)) is in [e^{-h}, 1] and the eps
       weight (1 - l) rho of f is at most min(rho, Var x0 / rho) <= sqrt(Var x0), the data's scale, where an
       unbounded l makes f grow like 1 / alpha at high noise. s in :data:`S_RANGE`, so the factors
       exp(-(S_i - S_s)) that carry older evaluations into a step grow at most like e^{lambda span};
       |b| <= rms(f') + |s| rms(f) (as |E f'| <= rms(f'), |s E f| <= |s| rms(f)).
    3. Below the validated start (:func:`validated_start`), l = 1, s = b = 0.
    Every step coefficient is then a bounded function of the grid (and of Var x0, rms f, rms f').
    """
    lam = np.asarray(stats.lambdas, dtype=np.float64)

    def flat(v):
        return None if v is None else np.asarray(v, dtype=np.float64).reshape(len(v), -1)

    l, s, b = (flat(v) for v in (stats.l, stats.s, stats.b))
    se = [flat(getattr(stats, n, None)) for n in ("se_l", "se_s", "se_b")]
    if all(v is not None for v in se):
        l, s, b = (shrink(v, e, t)[0] for v, e, t in zip((l, s, b), se, (1.0, 0.0, 0.0)))
    x0_var = flat(getattr(stats, "x0_var", None))
    low = 0.0 if x0_var is None else np.clip(1.0 - x0_var * np.exp(2 * lam)[:, None], 0.0, 1.0)
    l, s = np.clip(l, low, 1.0), np.clip(s, *S_RANGE)
    f_rms, fp_rms = flat(getattr(stats, "f_rms", None)), flat(getattr(stats, "fp_rms", None))
    if f_rms is not None and fp_rms is not None:
        bmax = fp_rms + np.abs(s) * f_rms
        b = np.clip(b, -bmax, bmax)
    start = validated_start(stats, grid_lambdas)
    if start is not None:
        off = (lam < start)[:, None]
        l, s, b = np.where(off, 1.0, l), np.where(off, 0.0, s), np.where(off, 0.0, b)
    return l, s, b


def _profile(lam) -> np.ndarray:
    """A grid's finite lambdas resampled at 33 evenly spaced fractions of its length (to compare grids)."""
    lam = np.asarray(lam, dtype=np.float64)
    lam = lam[np.isfinite(lam)]
    return np.interp(np.linspace(0.0, 1.0, 33), np.linspace(0.0, 1.0, len(lam)), lam)


def validated_start(stats, grid_lambdas=None) -> float | None:
    """The lambda from which the solver uses the statistics on a grid with lambdas ``grid_lambdas`` (None: all).

    ``stats.metadata["validation"]`` (written by :func:`fastsample.ems.validate_ems`) holds ``decisions``, one per
    validated (grid, number of steps): the grid's finite lambdas and its ``use_from_lambda`` (beyond the
    statistics' range: not used). A grid takes the decision of the validated grid with its number of steps (else
    the nearest number) whose lambdas, compared at 33 fractions of the grid, are on average within a fifth of a
    mean step of its own; a grid like none of them takes the most cautious of those decisions (the largest
    start). Without decisions (older files, or no grid given): the file-wide ``use_from_lambda``.
    """
    v = (getattr(stats, "metadata", None) or {}).get("validation") or {}
    decisions = v.get("decisions")
    if not decisions or grid_lambdas is None:
        return v.get("use_from_lambda")
    lam = np.asarray(grid_lambdas, dtype=np.float64)
    steps = len(lam) - 1
    near = min(abs(d["steps"] - steps) for d in decisions)
    cands = [d for d in decisions if abs(d["steps"] - steps) == near]
    prof = _profile(lam)
    dist = [float(np.mean(np.abs(_profile(d["lambdas"]) - prof))) for d in cands]
    tol = 0.2 * (prof[-1] - prof[0]) / max(steps, 1)
    best = int(np.argmin(dist))
    if dist[best] <= tol:
        return cands[best]["use_from_lambda"]
    return max(d["use_from_lambda"] for d in cands)

