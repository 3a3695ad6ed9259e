"""DPM-Solver-v3 (Zheng, Lu, Chen, Zhu; NeurIPS 2023; arXiv 2310.13268): multistep predictor-corrector
with empirical model statistics (EMS).

Notation (paper sec. 3): lambda = log(alpha / sigma); l, s, b are per-element functions of lambda (the
EMS, see :mod:`fastsample.ems`), L and S antiderivatives of l and s. With the rescaled data prediction
f = (sigma eps - l x) / alpha and, for a step starting at lambda_s,

    g(r) = exp(-(S(r) - S_s)) f(r) - B(r),   B(r) = int_{lambda_s}^r exp(-(S(u) - S_s)) b(u) du,
    E(r) = exp((L + S)(r) - (L + S)_s),

the exact solution of the probability-flow ODE from lambda_s to lambda_t is

    x_t = alpha_t exp(-(L_t - L_s)) [ x_s / alpha_s - int_{lambda_s}^{lambda_t} E(r) (g(r) + B(r)) dr ].

The predictor of order p replaces g by its Taylor polynomial of degree p - 1 at lambda_s, with the
derivatives estimated from the last p evaluations (the exact Taylor system, or Newton divided differences
for the "pseudo-order" variant, paper sec. 3.3). The corrector redoes the step s -> t once the model has
been evaluated at t (no extra model call, UniC-style): the corrected state replaces x_t before the next
predictor, while f at t stays the one computed from the model at the uncorrected state. The
half-corrector applies it only where t > 0.5.

Everything is linear in (x_s, eps_j, x0_j), since f_j = (1 - l_j) (sigma_j / alpha_j) eps_j - l_j x0_j, so a
step is x_next = a * x_ref + sum_j (w_eps_j * eps_j + w_x0_j * x0_j) + c with per-element float64
coefficients computed once per grid (:class:`ElementwisePlan`). With no statistics (l = 1, s = b = 0)
the solver is the data-prediction exponential integrator: DDIM at order 1, DPM-Solver++(2M) with exact
Taylor weights (diffusers' ``solver_type="heun"``) at order 2, 3M at order 3.

The statistics are first shrunk by their standard errors toward l = 1, s = b = 0 and bounded
(:func:`regularize`), so that noisy or wrong statistics degrade toward DPM-Solver++ and cannot make it diverge.
They are piecewise linear in lambda between their grid points (L and S then piecewise quadratic,
exactly integrated); the remaining integrals use Gauss-Legendre quadrature on sub-intervals that never
straddle a statistics grid point, accurate to float64 round-off. A step with an infinite end (t = 0, or a
flow's t = 1 where alpha = 0) is the statistics-free first-order step x' = (sigma'/sigma) x +
alpha' (1 - e^{-h}) x0, i.e. x0-hat at t = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .base import History, Plan, Solver

__all__ = [
    "DPMSolverV3",
    "ElementwisePlan",
    "LinearStats",
    "elementwise_step",
    "derivative_weights",
    "preset",
    "shrink",
    "regularize",
    "S_RANGE",
    "StatisticsResolutionError",
]

_GL_NODES = 6
_MAX_PIECE = 0.1  # longest quadrature sub-interval in lambda
_CHUNK = 1 << 21  # quadrature nodes x elements processed at once (float64 entries per array)


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


def regularize(stats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """l, s, b (K, D) float64 as the solver uses them: shrunk by their errors, bounded, and trivial below the
    lambda from which the statistics' validation found them useful.

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
    3. Below ``use_from_lambda``, l = 1, s = b = 0.
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
    start = ((getattr(stats, "metadata", None) or {}).get("validation") or {}).get("use_from_lambda")
    if start is not None:
        off = (lam < start)[:, None]
        l, s, b = np.where(off, 1.0, l), np.where(off, 0.0, s), np.where(off, 0.0, b)
    return l, s, b


def preset(nfe: int, guided: bool = False, guidance_scale: float = 1.0) -> dict:
    """The paper's recommended settings for a number of model calls (arXiv 2310.13268, App. and released scripts).

    Unguided: order 3 on a log-SNR (uniform lambda) grid; pseudo-order predictor at NFE <= 5, corrector at
    NFE <= 6, lower order at the end. Guided: order 2 on a uniform-t grid, pseudo-order corrector, corrector
    only for guidance scales below 5.
    """
    if guided:
        return dict(
            order=2,
            time_grid="uniform_t",
            predictor_pseudo=False,
            use_corrector=guidance_scale < 5.0,
            corrector_pseudo=True,
            lower_order_final=True,
            half_corrector=False,
        )
    return dict(
        order=3,
        time_grid="uniform_lambda",
        predictor_pseudo=nfe <= 5,
        use_corrector=nfe <= 6,
        corrector_pseudo=False,
        lower_order_final=True,
        half_corrector=False,
    )



class StatisticsResolutionError(ValueError):
    """A step shorter in lambda than the spacing of the statistics' grid (they cannot resolve it)."""

class LinearStats:
    """l, s, b piecewise linear in lambda on increasing nodes; exact antiderivatives L, S.

    Args:
        lambdas: float64 (K + 1,), strictly increasing.
        l, s, b: (K + 1, D) arrays (D elements, flattened), converted to float64.
    """

    def __init__(self, lambdas, l, s, b):
        self.lam = np.asarray(lambdas, dtype=np.float64)
        self.l, self.s, self.b = (np.asarray(v, dtype=np.float64) for v in (l, s, b))
        if self.lam.ndim != 1 or len(self.lam) < 2 or np.any(np.diff(self.lam) <= 0):
            raise ValueError("statistics lambdas must be a strictly increasing 1-D array of >= 2 points")
        for v in (self.l, self.s, self.b):
            if v.shape[0] != len(self.lam) or v.ndim != 2:
                raise ValueError(f"statistics arrays must have shape ({len(self.lam)}, D), got {v.shape}")
        self.width = np.diff(self.lam)
        w = self.width[:, None]
        self.Lc = np.concatenate([np.zeros_like(self.l[:1]), np.cumsum(0.5 * w * (self.l[1:] + self.l[:-1]), 0)])
        self.Sc = np.concatenate([np.zeros_like(self.s[:1]), np.cumsum(0.5 * w * (self.s[1:] + self.s[:-1]), 0)])
        self.has_b = bool(np.any(self.b != 0))

    @classmethod
    def constant(cls, lo: float, hi: float, dim: int = 1) -> LinearStats:
        """No statistics: l = 1, s = b = 0 on [lo, hi]."""
        lam = np.array([lo, hi], dtype=np.float64)
        return cls(lam, np.ones((2, dim)), np.zeros((2, dim)), np.zeros((2, dim)))

    @property
    def dim(self) -> int:
        return self.l.shape[1]

    def chunk(self, sl: slice) -> LinearStats:
        return LinearStats(self.lam, self.l[:, sl], self.s[:, sl], self.b[:, sl])

    def _cell(self, r):
        r = np.asarray(r, dtype=np.float64)
        i = np.clip(np.searchsorted(self.lam, r, side="right") - 1, 0, len(self.lam) - 2)
        return i, r - self.lam[i]

    def value(self, v, r):
        """Interpolated v at lambdas r: (len(r), D)."""
        i, u = self._cell(r)
        w = (u / self.width[i])[:, None]
        return v[i] * (1 - w) + v[i + 1] * w

    def anti(self, which: str, r):
        """L (``which="l"``) or S at lambdas r, exactly: (len(r), D)."""
        v, cum = (self.l, self.Lc) if which == "l" else (self.s, self.Sc)
        i, u = self._cell(r)
        uu, wd = u[:, None], self.width[i][:, None]
        return cum[i] + v[i] * uu + (v[i + 1] - v[i]) * uu * uu / (2 * wd)

    def pieces(self, lo: float, hi: float) -> np.ndarray:
        """Sub-interval bounds of [lo, hi] (lo < hi): the statistics nodes inside, then at most _MAX_PIECE long."""
        inner = self.lam[(self.lam > lo) & (self.lam < hi)]
        bounds = np.concatenate([[lo], inner, [hi]])
        out = [bounds[:1]]
        for a, b in zip(bounds[:-1], bounds[1:]):
            k = max(1, math.ceil((b - a) / _MAX_PIECE))
            out.append(np.linspace(a, b, k + 1)[1:])
        return np.concatenate(out)


def _gauss_legendre(m: int):
    """Nodes, weights on [-1, 1] and the spectral cumulative-integration matrix Q[i, j] = int_{-1}^{x_i} ell_j."""
    x, w = np.polynomial.legendre.leggauss(m)
    q = np.empty((m, m))
    for j in range(m):
        y = np.zeros(m)
        y[j] = 1.0
        coef = np.polynomial.polynomial.polyfit(x, y, m - 1)
        anti = np.polynomial.polynomial.polyint(coef, lbnd=-1.0)
        q[:, j] = np.polynomial.polynomial.polyval(x, anti)
    return x, w, q


_GL = _gauss_legendre(_GL_NODES)


def _nodes(bounds):
    """Quadrature nodes r (P, m), weights (P, m) and half-widths (P,) for sub-interval bounds (P + 1,)."""
    x, w, _ = _GL
    half = 0.5 * np.diff(bounds)
    mid = 0.5 * (bounds[1:] + bounds[:-1])
    return mid[:, None] + half[:, None] * x[None], half[:, None] * w[None], half


def _flat_value(stats, fn, r2d):
    """fn(stats, r) evaluated on a (P, m) grid of lambdas: (P, m, D)."""
    return fn(r2d.reshape(-1)).reshape(r2d.shape + (stats.dim,))


def b_integral(stats: LinearStats, lam_s: float, lam_i: float) -> np.ndarray:
    """B_s(lambda_i) = int_{lambda_s}^{lambda_i} exp(-(S(u) - S_s)) b(u) du, per element (D,)."""
    if not stats.has_b or lam_i == lam_s:
        return np.zeros(stats.dim)
    lo, hi = min(lam_s, lam_i), max(lam_s, lam_i)
    r, w, _ = _nodes(stats.pieces(lo, hi))
    S_s = stats.anti("s", [lam_s])[0]
    q = np.exp(-(_flat_value(stats, lambda u: stats.anti("s", u), r) - S_s)) * _flat_value(
        stats, lambda u: stats.value(stats.b, u), r
    )
    total = np.einsum("pm,pmd->d", w, q)
    return total if lam_i > lam_s else -total


def step_integrals(stats: LinearStats, lam_s: float, lam_t: float, degree: int):
    """Per-element integrals of one step lambda_s < lambda_t.

    Returns (dL, phi, cb): dL = L_t - L_s (D,); phi (degree + 1, D) with
    phi_j = int E(r) (r - lambda_s)^j / j! dr; cb = int E(r) B(r) dr (D,).
    """
    r, w, half = _nodes(stats.pieces(lam_s, lam_t))
    LS_s = stats.anti("l", [lam_s])[0] + stats.anti("s", [lam_s])[0]
    dL = stats.anti("l", [lam_t])[0] - stats.anti("l", [lam_s])[0]
    LS = _flat_value(stats, lambda u: stats.anti("l", u) + stats.anti("s", u), r)
    E = np.exp(LS - LS_s)
    u = r - lam_s
    phi = np.stack([np.einsum("pm,pmd->d", w * u**j / math.factorial(j), E) for j in range(degree + 1)])
    cb = np.zeros(stats.dim)
    if stats.has_b:
        S_s = stats.anti("s", [lam_s])[0]
        S = _flat_value(stats, lambda v: stats.anti("s", v), r)
        q = np.exp(-(S - S_s)) * _flat_value(stats, lambda v: stats.value(stats.b, v), r)
        _, _, Q = _GL
        local = np.einsum("ij,pjd->pid", Q, q) * half[:, None, None]
        totals = np.einsum("pm,pmd->pd", w, q)
        prefix = np.concatenate([np.zeros_like(totals[:1]), np.cumsum(totals, 0)[:-1]])
        B = prefix[:, None, :] + local
        cb = np.einsum("pm,pmd->d", w, E * B)
    return dL, phi, cb


def derivative_weights(lams, pseudo: bool = False) -> np.ndarray:
    """Weights W (n, n + 1) with g^(j)(lams[0]) ~ sum_i W[j - 1, i] g(lams[i]) for j = 1..n.

    ``pseudo=False``: the exact Taylor system at lams[0]; ``pseudo=True``: j! times Newton's divided
    differences over lams[0..j] (the pseudo-order estimate of arXiv 2310.13268 sec. 3.3).
    """
    lams = np.asarray(lams, dtype=np.float64)
    n = len(lams) - 1
    if n == 0:
        return np.zeros((0, 1))
    if pseudo:
        table = [np.eye(n + 1)]
        for i in range(1, n + 1):
            prev = table[-1]
            table.append(np.stack([(prev[j] - prev[j + 1]) / (lams[j] - lams[i + j]) for j in range(n - i + 1)]))
        return np.stack([table[i][0] * math.factorial(i) for i in range(1, n + 1)])
    d = lams[1:] - lams[0]
    R = np.stack([d**j for j in range(1, n + 1)], axis=1)  # (n points, n powers)
    inv = np.linalg.inv(R)  # Taylor coefficients c_j = g^(j) / j!
    W = np.zeros((n, n + 1))
    for j in range(1, n + 1):
        W[j - 1, 1:] = math.factorial(j) * inv[j - 1]
        W[j - 1, 0] = -W[j - 1, 1:].sum()
    return W


@dataclass(frozen=True)
class ElementwisePlan(Plan):
    """A :class:`Plan` whose linear update has per-element coefficients, and an optional corrector.

    Predictor after evaluation k:
    x_next = a[k] * x[k] + sum_j (w_eps[k, j] * eps[k - j] + w_x0[k, j] * x0[k - j]) + c[k].
    Corrector at evaluation k (where ``corrects[k]``): the stored state x[k] becomes
    ca[k] * x[k - 1] + sum_j (cw_eps[k, j] * eps[k - j] + cw_x0[k, j] * x0[k - j]) + cc[k].
    Shapes: a, c, ca, cc (nfe, *S); w_* (nfe, m, *S); S is the sample shape without batch, or () when
    the coefficients are the same for every element. All float64 numpy; moved to the device once per run.
    """

    c: np.ndarray | None = None
    corrects: np.ndarray | None = None
    ca: np.ndarray | None = None
    cw_eps: np.ndarray | None = None
    cw_x0: np.ndarray | None = None
    cc: np.ndarray | None = None
    _device: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        n = len(self.eval_times)
        for name in ("step_of_eval", "ref", "corrects"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"ElementwisePlan.{name} must have shape ({n},)")
        for name in ("a", "c", "ca", "cc", "w_eps", "w_x0", "cw_eps", "cw_x0"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"ElementwisePlan.{name} must have {n} rows")
        if np.any(self.eval_times <= 0):
            raise ValueError("a plan may not evaluate the model at t <= 0")

    @property
    def history_len(self) -> int:
        m = max(self.w_eps.shape[1], self.cw_eps.shape[1] if np.any(self.corrects) else 1)
        return max(m, 2 if np.any(self.corrects) else 1)

    def _tensors(self, like: torch.Tensor) -> dict:
        """Coefficients as tensors on ``like``'s device in the working dtype (built once, no host sync)."""
        dt = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (str(like.device), dt)
        if key not in self._device:
            out = {}
            for name in ("a", "w_eps", "w_x0", "c", "ca", "cw_eps", "cw_x0", "cc"):
                t = torch.from_numpy(np.ascontiguousarray(getattr(self, name))).to(dt)
                if like.device.type == "cuda":
                    t = t.pin_memory().to(like.device, non_blocking=True)
                out[name] = t.to(like.device)
            out["active"] = np.any(self.w_eps != 0, axis=tuple(range(2, self.w_eps.ndim))) | np.any(
                self.w_x0 != 0, axis=tuple(range(2, self.w_x0.ndim))
            )
            out["cactive"] = np.any(self.cw_eps != 0, axis=tuple(range(2, self.cw_eps.ndim))) | np.any(
                self.cw_x0 != 0, axis=tuple(range(2, self.cw_x0.ndim))
            )
            self._device[key] = out
        return self._device[key]

    def step(self, k: int, history: History) -> torch.Tensor:
        t = self._tensors(history.eps[-1])
        return elementwise_step(t["a"][k], t["w_eps"][k], t["w_x0"][k], t["c"][k], t["active"][k], 0, history)

    def correct(self, k: int, history: History) -> History:
        if not self.corrects[k]:
            return history
        t = self._tensors(history.eps[-1])
        xk = elementwise_step(t["ca"][k], t["cw_eps"][k], t["cw_x0"][k], t["cc"][k], t["cactive"][k], 1, history)
        return History(tuple(history.x[:-1]) + (xk,), history.x0, history.eps)


def elementwise_step(a, w_eps, w_x0, c, active, ref: int, history: History) -> torch.Tensor:
    """a * x[-1 - ref] + sum_j (w_eps[j] * eps[-1 - j] + w_x0[j] * x0[-1 - j]) + c, broadcasting over the batch.

    Coefficient tensors have the sample shape without batch (or are 0-d); ``active`` is a numpy bool
    (m,) saying which history slots are used. Arithmetic in the predictions' dtype; pure.
    """
    out = history.x[-1 - ref].to(history.eps[-1].dtype) * a + c
    for j in np.flatnonzero(active):
        out = out + w_eps[j] * history.eps[-1 - j] + w_x0[j] * history.x0[-1 - j]
    return out


def _first_order_infinite(schedule, ts: float, tt: float):
    """a, w_x0 of x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) x0 for a step with an infinite lambda end."""
    a_t, s_t, s_s = float(schedule.alpha(tt)), float(schedule.sigma(tt)), float(schedule.sigma(ts))
    h = float(schedule.lambda_(tt)) - float(schedule.lambda_(ts))
    return s_t / s_s, a_t * -math.expm1(-h)


class DPMSolverV3(Solver):
    """DPM-Solver-v3 multistep predictor (orders 1-3) with optional corrector (arXiv 2310.13268).

    Args:
        stats: an object with ``lambdas`` (K + 1,) increasing, and ``l``, ``s``, ``b`` arrays of shape
            (K + 1, *S) (e.g. :class:`fastsample.formats.ems_file.EMS`), or None for l = 1, s = b = 0; used as
            :func:`regularize` makes them (shrunk by their standard errors, bounded, validated range).
        order: predictor order 1-3 (warm start at lower order).
        predictor_pseudo, corrector_pseudo: pseudo-order derivative estimates; a pseudo corrector has
            order (predictor order + 1).
        use_corrector, half_corrector: corrector on; only where t > 0.5.
        lower_order_final: order at most (number of remaining steps).
    """

    name = "dpmsolver_v3"
    stages = 1

    def __init__(
        self,
        stats=None,
        order: int = 3,
        predictor_pseudo: bool = False,
        use_corrector: bool = False,
        corrector_pseudo: bool = False,
        lower_order_final: bool = True,
        half_corrector: bool = False,
    ):
        if order not in (1, 2, 3):
            raise ValueError(f"DPM-Solver-v3 order must be 1, 2 or 3, got {order}")
        self.stats, self.order = stats, int(order)
        self.predictor_pseudo, self.corrector_pseudo = bool(predictor_pseudo), bool(corrector_pseudo)
        self.use_corrector, self.half_corrector = bool(use_corrector), bool(half_corrector)
        self.lower_order_final = bool(lower_order_final)

    def __repr__(self) -> str:
        return (
            f"DPMSolverV3(order={self.order}, stats={'none' if self.stats is None else 'EMS'}, "
            f"corrector={self.use_corrector})"
        )

    def plan(self, schedule, grid) -> ElementwisePlan:
        grid = np.asarray(grid, dtype=np.float64)
        if grid.ndim != 1 or len(grid) < 2 or np.any(np.diff(grid) >= 0) or grid[-1] < 0:
            raise ValueError(f"a time grid must be 1-D, decreasing and end at t >= 0, got {grid}")
        return self.prepare(schedule, grid)

    # --- the schedule of orders -------------------------------------------------------------------

    def _orders(self, lam, t):
        """Predictor order per evaluation (0 = infinite-end step) and corrector order (0 = none)."""
        n = len(lam) - 1
        finite = np.isfinite(lam)
        k0 = int(np.argmax(finite[:-1])) if finite[:-1].any() else n
        p = np.zeros(n, dtype=np.int64)
        for k in range(n):
            if finite[k] and finite[k + 1]:
                p[k] = min(self.order, k - k0 + 1)
                if self.lower_order_final:
                    p[k] = min(p[k], n - k)
        c = np.zeros(n, dtype=np.int64)
        if self.use_corrector:
            for k in range(1, n):
                if p[k - 1] == 0 or p[k] == 0 or (self.half_corrector and not t[k] > 0.5):
                    continue
                ck = min(p[k - 1] + int(self.corrector_pseudo), k - k0 + 1)
                c[k] = ck if ck > 1 else 0
        return p, c

    # --- coefficients -------------------------------------------------------------------------------

    def _resolve_stats(self, lam) -> tuple[LinearStats, tuple]:
        fin = lam[np.isfinite(lam)]
        if self.stats is None:
            lo, hi = (fin.min(), fin.max()) if fin.size else (0.0, 0.0)
            return LinearStats.constant(lo - 1.0, hi + 1.0), ()
        st = self.stats
        lams = np.asarray(st.lambdas, dtype=np.float64)
        shape = tuple(np.asarray(st.l).shape[1:])
        l, s, b = regularize(st)
        lo, hi = lams[0], lams[-1]
        tol = 1e-6 * max(1.0, hi - lo)
        if fin.min() < lo - tol or fin.max() > hi + tol:
            raise ValueError(
                f"the time grid reaches lambda in [{fin.min():.4f}, {fin.max():.4f}], outside the statistics' "
                f"range [{lo:.4f}, {hi:.4f}]; compute statistics over the sampling range or keep the grid inside it"
            )
        flat = LinearStats(lams, l, s, b)
        return flat, shape

    def _check_resolution(self, stats: LinearStats, lam, p):
        """StatisticsResolutionError where a step is shorter than the statistics' lambda spacing."""
        if self.stats is None:
            return
        dmin = float(stats.width.min())
        for k in np.flatnonzero(p):
            h = lam[k + 1] - lam[k]
            if h < dmin * (1 - 1e-6):
                raise StatisticsResolutionError(
                    f"step {k} spans {h:.4g} in lambda, less than the statistics' grid spacing {dmin:.4g}: "
                    f"{len(lam) - 1} steps need statistics on a finer lambda grid (more grid points) "
                    f"than the {len(stats.lam)} points given; use fewer steps or recompute the statistics"
                )

    def prepare(self, schedule, grid) -> ElementwisePlan:
        grid = np.asarray(grid, dtype=np.float64)
        t = grid
        n = len(grid) - 1
        with np.errstate(divide="ignore"):
            lam = np.asarray(schedule.lambda_(grid), dtype=np.float64)
        alpha = np.asarray(schedule.alpha(grid), dtype=np.float64)
        sigma = np.asarray(schedule.sigma(grid), dtype=np.float64)
        p, c = self._orders(lam, t)
        full, shape = self._resolve_stats(lam)
        lam_c = np.clip(lam, full.lam[0], full.lam[-1])  # round-off at the ends only (range checked above)
        self._check_resolution(full, lam_c, p)
        m = max(1, self.order + 1)
        D = full.dim
        a = np.zeros((n, D))
        w_eps, w_x0 = np.zeros((n, m, D)), np.zeros((n, m, D))
        cst = np.zeros((n, D))
        ca, cw_eps, cw_x0, cc = np.zeros((n, D)), np.zeros((n, m, D)), np.zeros((n, m, D)), np.zeros((n, D))
        for k in range(n):
            if p[k] == 0:
                a[k], w_x0[k, 0] = _first_order_infinite(schedule, t[k], t[k + 1])
        nodes_per_step = [len(full.pieces(lam_c[k], lam_c[k + 1])) * _GL_NODES if p[k] else 0 for k in range(n)]
        chunk = max(1, _CHUNK // max(1, max(nodes_per_step, default=1)))
        for start in range(0, D, chunk):
            sl = slice(start, min(D, start + chunk))
            st = full.chunk(sl)
            integrals = {}
            for k in range(n):
                if p[k] == 0:
                    continue
                deg = max(p[k], c[k + 1] if k + 1 < n else 0) - 1
                integrals[k] = step_integrals(st, lam_c[k], lam_c[k + 1], max(deg, 0))
            for k in range(n):
                if p[k]:
                    slots = list(range(p[k]))
                    pts = [k - j for j in slots]
                    res = self._update(
                        st, integrals[k], k, k + 1, pts, slots, lam_c, alpha, sigma, self.predictor_pseudo, m
                    )
                    a[k, sl], cst[k, sl] = res[0], res[3]
                    w_eps[k, :, sl], w_x0[k, :, sl] = res[1], res[2]
                if c[k]:
                    # points: base k - 1, the new point k, then k - 2, ...; history slots 1, 0, 2, ...
                    pts = [k - 1, k] + [k - j for j in range(2, c[k])]
                    slots = [1, 0] + list(range(2, c[k]))
                    res = self._update(
                        st, integrals[k - 1], k - 1, k, pts, slots, lam_c, alpha, sigma, self.corrector_pseudo, m
                    )
                    ca[k, sl], cc[k, sl] = res[0], res[3]
                    cw_eps[k, :, sl], cw_x0[k, :, sl] = res[1], res[2]

        for name, v in (("a", a), ("w_eps", w_eps), ("w_x0", w_x0), ("c", cst), ("corrector", cw_x0), ("cc", cc)):
            if not np.all(np.isfinite(v)):
                raise ValueError(
                    f"the statistics give non-finite step coefficients ({name}) on this grid; they are too noisy "
                    "(too few samples) or do not belong to this model"
                )

        def shaped(v, lead):
            return v.reshape(v.shape[:lead] + shape)

        return ElementwisePlan.multistep(
            grid,
            shaped(a, 1),
            shaped(w_eps, 2),
            shaped(w_x0, 2),
            order=self.order,
            info={"predictor_orders": p.tolist(), "corrector_orders": c.tolist()},
            c=shaped(cst, 1),
            corrects=c > 0,
            ca=shaped(ca, 1),
            cw_eps=shaped(cw_eps, 2),
            cw_x0=shaped(cw_x0, 2),
            cc=shaped(cc, 1),
        )

    @staticmethod
    def _update(st, integrals, s, tgt, pts, slots, lam, alpha, sigma, pseudo, m):
        """Coefficients (a, w_eps (m, D), w_x0 (m, D), c) of x_tgt from x_s and the evaluations ``pts``.

        ``pts[0]`` is the base point s; ``slots[i]`` is the history slot of evaluation ``pts[i]``.
        """
        dL, phi, cb = integrals
        D = st.dim
        K = alpha[tgt] * np.exp(-dL)  # alpha_t e^{-(L_t - L_s)}
        W = derivative_weights(lam[pts], pseudo)
        n_pts = len(pts)
        G = np.zeros((n_pts, D))  # coefficient of g_i in x_t
        G[0] -= K * phi[0]
        for j in range(1, n_pts):
            for i in range(n_pts):
                G[i] -= K * phi[j] * W[j - 1, i]
        const = -K * cb
        w_eps, w_x0 = np.zeros((m, D)), np.zeros((m, D))
        S_s = st.anti("s", [lam[s]])[0]
        for i, (pt, slot) in enumerate(zip(pts, slots)):
            l_i = st.value(st.l, [lam[pt]])[0]
            e_i = np.exp(-(st.anti("s", [lam[pt]])[0] - S_s))
            const -= G[i] * b_integral(st, lam[s], lam[pt])
            coef_f = G[i] * e_i
            w_eps[slot] += coef_f * (1 - l_i) * sigma[pt] / alpha[pt]
            w_x0[slot] -= coef_f * l_i
        a = alpha[tgt] / alpha[s] * np.exp(-dL)
        return a, w_eps, w_x0, const
