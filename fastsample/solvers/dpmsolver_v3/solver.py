"""The DPM-Solver-v3 solver (arXiv 2310.13268): the schedule of predictor and corrector orders, and the
per-element step coefficients of one grid as an :class:`~fastsample.solvers.elementwise.ElementwisePlan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...core.grids import check_grid
from ..base import Solver
from ..elementwise import ElementwisePlan
from .integrals import GL_NODES, LinearStats, b_integral, derivative_weights, step_integrals
from .statistics import regularize

__all__ = ["DPMSolverV3", "StatisticsResolutionError", "preset"]

_CHUNK = 1 << 21  # quadrature nodes x elements processed at once (float64 entries per array)


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
        return self.prepare(schedule, check_grid(grid))

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
        l, s, b = regularize(st, lam)
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
        nodes_per_step = [len(full.pieces(lam_c[k], lam_c[k + 1])) * GL_NODES if p[k] else 0 for k in range(n)]
        values = _GridValues(lam_c, alpha, sigma, m)
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
                    pts = tuple(k - j for j in range(p[k]))
                    upd = _Update(k, k + 1, pts, tuple(range(p[k])), self.predictor_pseudo)
                    co = _coefficients(st, integrals[k], values, upd)
                    a[k, sl], cst[k, sl], w_eps[k, :, sl], w_x0[k, :, sl] = co.a, co.c, co.w_eps, co.w_x0
                if c[k]:
                    # points: base k - 1, the new point k, then k - 2, ...; history slots 1, 0, 2, ...
                    pts = (k - 1, k) + tuple(k - j for j in range(2, c[k]))
                    upd = _Update(k - 1, k, pts, (1, 0) + tuple(range(2, c[k])), self.corrector_pseudo)
                    co = _coefficients(st, integrals[k - 1], values, upd)
                    ca[k, sl], cc[k, sl], cw_eps[k, :, sl], cw_x0[k, :, sl] = co.a, co.c, co.w_eps, co.w_x0

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


@dataclass(frozen=True)
class _GridValues:
    """Float64 (n + 1,) lambda (clipped to the statistics' range), alpha and sigma on the grid; m history slots."""

    lam: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    m: int


@dataclass(frozen=True)
class _Update:
    """One linear update x_s -> x_tgt from the evaluations ``pts`` (``pts[0]`` = s), stored in history ``slots``;
    derivatives by the exact Taylor system or, ``pseudo``, divided differences."""

    s: int
    tgt: int
    pts: tuple
    slots: tuple
    pseudo: bool


@dataclass(frozen=True)
class StepCoefficients:
    """x_tgt = a x_s + sum_j (w_eps[j] eps_j + w_x0[j] x0_j) + c, per element: a, c (D,); w_eps, w_x0 (m, D)."""

    a: np.ndarray
    w_eps: np.ndarray
    w_x0: np.ndarray
    c: np.ndarray


def _coefficients(st: LinearStats, integrals, g: _GridValues, u: _Update) -> StepCoefficients:
    """The coefficients of update ``u`` from the step's ``integrals`` (dL, phi, cb of :func:`step_integrals`)."""
    dL, phi, cb = integrals
    lam, alpha, sigma = g.lam, g.alpha, g.sigma
    D = st.dim
    K = alpha[u.tgt] * np.exp(-dL)  # alpha_t e^{-(L_t - L_s)}
    W = derivative_weights(lam[list(u.pts)], u.pseudo)
    n_pts = len(u.pts)
    G = np.zeros((n_pts, D))  # coefficient of g_i in x_t
    G[0] -= K * phi[0]
    for j in range(1, n_pts):
        for i in range(n_pts):
            G[i] -= K * phi[j] * W[j - 1, i]
    const = -K * cb
    w_eps, w_x0 = np.zeros((g.m, D)), np.zeros((g.m, D))
    S_s = st.anti("s", [lam[u.s]])[0]
    for i, (pt, slot) in enumerate(zip(u.pts, u.slots)):
        l_i = st.value(st.l, [lam[pt]])[0]
        e_i = np.exp(-(st.anti("s", [lam[pt]])[0] - S_s))
        const -= G[i] * b_integral(st, lam[u.s], lam[pt])
        coef_f = G[i] * e_i
        w_eps[slot] += coef_f * (1 - l_i) * sigma[pt] / alpha[pt]
        w_x0[slot] -= coef_f * l_i
    a = alpha[u.tgt] / alpha[u.s] * np.exp(-dL)
    return StepCoefficients(a, w_eps, w_x0, const)
