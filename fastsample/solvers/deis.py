"""DEIS, the diffusion exponential integrator sampler of Zhang & Chen (arXiv 2204.13902), all variants.

With rho = sigma / alpha and y = x / alpha the probability-flow ODE is dy/drho = eps(x, t), so one step
from t to t' is exactly

    x_{t'} = (alpha_{t'} / alpha_t) x_t + alpha_{t'} * integral_{rho_t}^{rho_{t'}} eps drho,

and the variants differ only in how eps is approximated on the step:

- ``tab``: Lagrange extrapolation of eps in t through the last (degree + 1) evaluations (tAB-DEIS).
- ``rhoab``: Lagrange extrapolation in rho, integrated exactly (rhoAB-DEIS).
- ``logrho``: Lagrange extrapolation in log rho, integrated exactly against drho (diffusers'
  ``DEISMultistepScheduler``).
- ``ipndm``: Adams-Bashforth weights for equal steps in rho (improved PNDM, App. of the paper).
- ``rhork``: explicit Runge-Kutta in rho for y: Heun (order 2), Kutta's third order, classical RK4.

Multistep variants have polynomial degree 0-3 (global order 1-4) with lower-degree warm start; degree
0 of each is DDIM (Song et al., arXiv 2010.02502). Grids may end at t = 0 (rho = 0): every multistep
update stays exact there (it returns x0-hat for degree 0). A Runge-Kutta stage at rho = 0 would
evaluate the model at t = 0, so the step into t = 0 uses a scheme of the same order class whose nodes
avoid the end point: the midpoint rule for Heun, Heun's third-order rule (c = 0, 1/3, 2/3) for Kutta3
and RK4 (so RK4 spends 3 calls on that step; a single step of local order 4 keeps global order 4).
Where a schedule has no t > 0 for those stage noise levels (EDM, whose sigma stays near sigma_min down to
t = 0) that step is a single Euler (DDIM) step, as in Karras et al. (arXiv 2206.00364).

A flow grid may start at t = 1 where alpha = 0 and rho is infinite: that first multistep step is
DDIM written as x' = alpha' x0 + sigma' eps, and the t = 1 evaluation is not used for extrapolation.
Runge-Kutta in rho cannot start there and raises.

All coefficients are float64 numpy arrays computed once per grid (see :class:`~.base.Plan`).
"""

from __future__ import annotations

import math

import numpy as np

from ..core.grids import check_grid
from .base import Plan, Solver, final_order_cap, runge_kutta_plan
from .tableaux import TABLEAUX

__all__ = ["DEISSolver", "VARIANTS", "IPNDM_COEFFS"]

VARIANTS = ("tab", "rhoab", "logrho", "rhork", "ipndm")

IPNDM_COEFFS = {
    0: (1.0,),
    1: (1.5, -0.5),
    2: (23 / 12, -16 / 12, 5 / 12),
    3: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}
"""Adams-Bashforth weights for equal steps, by polynomial degree; entry j multiplies eps_{i-j}."""

_RK_BY_ORDER = {2: "heun", 3: "kutta3", 4: "rk4"}
_RK_FINAL = {"heun": "midpoint", "kutta3": "heun3", "rk4": "heun3"}

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(20)
_SUBDIVISIONS = 8


def _alpha_sigma_rho(schedule, t):
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    with np.errstate(divide="ignore"):
        return alpha, sigma, np.where(alpha > 0, sigma / np.where(alpha > 0, alpha, 1.0), np.inf)


def _lagrange_coeffs(nodes: np.ndarray) -> np.ndarray:
    """c[k, j]: the s^k coefficient of the Lagrange basis polynomial L_j through ``nodes`` (float64)."""
    m = len(nodes)
    return np.linalg.solve(np.vander(nodes, m, increasing=True), np.eye(m))


def _rho_quadrature(schedule, t0: float, t1: float):
    """Nodes tau and weights w with sum w f(tau) = integral_{t1}^{t0} f(tau) dtau for f smooth times rho.

    Composite Gauss-Legendre, split at the schedule's kinks (``t_nodes`` of :class:`DiscreteVP`, where
    log alpha is piecewise linear) and into equal parts; a piece that starts at tau = 0 is mapped by
    tau = b u^2, which removes the sqrt(tau) behaviour of rho there for VP schedules.
    """
    edges = np.linspace(t1, t0, _SUBDIVISIONS + 1)
    kinks = getattr(schedule, "t_nodes", None)
    if kinks is not None:
        kinks = np.asarray(kinks, dtype=np.float64)
        edges = np.union1d(edges, kinks[(kinks > t1) & (kinks < t0)])
    lo, hi = edges[:-1], edges[1:]
    u = 0.5 * (_GL_NODES + 1.0)
    tau = lo[:, None] + (hi - lo)[:, None] * u[None]
    w = 0.5 * (hi - lo)[:, None] * _GL_WEIGHTS[None]
    if lo[0] == 0.0:
        tau[0] = hi[0] * u * u
        w[0] = hi[0] * u * _GL_WEIGHTS
    return tau.ravel(), w.ravel()


def _tab_weights(schedule, t_nodes: np.ndarray, t_end: float, rho_start: float, rho_end: float) -> np.ndarray:
    """C_j = integral_t^{t'} L_j(tau) rho'(tau) dtau for Lagrange basis L_j in t (tAB-DEIS), float64.

    By parts, C_j = L_j(t') rho(t') - L_j(t) rho(t) - integral L_j'(tau) rho(tau) dtau, which needs
    rho only (not its derivative), is exact at a jump of rho at t = 0 (EDM), and sums to rho' - rho.
    """
    t0 = t_nodes[0]
    h = t_end - t0
    c = _lagrange_coeffs((t_nodes - t0) / h)
    m = len(t_nodes)
    weights = c.sum(axis=0) * rho_end
    weights[0] -= rho_start
    if m > 1:
        tau, w = _rho_quadrature(schedule, t0, t_end)
        _, _, rho = _alpha_sigma_rho(schedule, tau)
        s = (tau - t0) / h
        moments = (s[None, :] ** np.arange(m - 1)[:, None] * (w * rho)[None]).sum(axis=1) / abs(h)
        dc = c[1:] * np.arange(1, m)[:, None]
        weights -= dc.T @ moments
    return weights


def _rhoab_weights(rho_nodes: np.ndarray, rho_end: float) -> np.ndarray:
    """C_j = integral_rho^{rho'} L_j(r) dr for Lagrange basis L_j in rho (rhoAB-DEIS), exact."""
    h = rho_end - rho_nodes[0]
    c = _lagrange_coeffs((rho_nodes - rho_nodes[0]) / h)
    return h * (c / np.arange(1, len(rho_nodes) + 1)[:, None]).sum(axis=0)


def _logrho_weights(rho_nodes: np.ndarray, rho_end: float) -> np.ndarray:
    """C_j = integral_rho^{rho'} L_j(log r) dr for Lagrange basis L_j in log rho, exact.

    With v = log(r / rho) and L_j(v) = sum_k c_kj v^k, integral v^k e^v dv = e^v sum_{i<=k} (-1)^i k!/(k-i)! v^(k-i),
    which vanishes at rho' = 0 (v = -inf).
    """
    m = len(rho_nodes)
    c = _lagrange_coeffs(np.log(rho_nodes / rho_nodes[0]))

    def antiderivative(v):
        out = np.zeros(m)
        for k in range(m):
            q = sum((-1) ** i * math.factorial(k) / math.factorial(k - i) * v ** (k - i) for i in range(k + 1))
            out += c[k] * q
        return out * math.exp(v)

    end = antiderivative(math.log(rho_end / rho_nodes[0])) if rho_end > 0 else np.zeros(m)
    return rho_nodes[0] * (end - antiderivative(0.0))


def _ipndm_weights(rho_nodes: np.ndarray, rho_end: float) -> np.ndarray:
    return (rho_end - rho_nodes[0]) * np.asarray(IPNDM_COEFFS[len(rho_nodes) - 1])


class DEISSolver(Solver):
    """The DEIS family (Zhang & Chen, arXiv 2204.13902) as a :class:`~.base.Solver` producing a :class:`Plan`.

    Args:
        variant: one of ``VARIANTS``: ``"tab"``, ``"rhoab"``, ``"logrho"``, ``"ipndm"`` (multistep,
            one model call per step) or ``"rhork"`` (Runge-Kutta in rho, ``order`` calls per step).
        order: global order; multistep: 1-4 (polynomial degree ``order - 1``); ``rhork``: 2 (Heun),
            3 (Kutta), 4 (classical RK4).
        lower_order_final: multistep only; with fewer than 15 steps the last step has degree 0 and the
            one before degree at most 1 (diffusers' ``lower_order_final`` rule).

    ``prepare(schedule, grid)`` takes n + 1 decreasing float64 times and returns a float64 :class:`Plan`
    with ``w_eps`` of shape (nfe, order) (multistep) or (nfe, stages) (``rhork``); ``plan.info`` holds the
    per-step polynomial degrees (multistep) or the tableau name (``rhork``).
    """

    def __init__(self, variant: str = "tab", order: int = 3, lower_order_final: bool = False):
        if variant not in VARIANTS:
            raise ValueError(f"unknown DEIS variant {variant!r}; allowed: {', '.join(VARIANTS)}")
        allowed = (2, 3, 4) if variant == "rhork" else (1, 2, 3, 4)
        if order not in allowed:
            raise ValueError(f"order {order!r} is not available for DEIS {variant!r}; allowed: {allowed}")
        self.variant, self.order, self.lower_order_final = variant, int(order), bool(lower_order_final)
        self.stages = self.order if variant == "rhork" else 1
        self.rk = _RK_BY_ORDER.get(self.order) if variant == "rhork" else None
        self.name = f"deis_rhork_{self.rk}" if self.rk else f"deis_{variant}{self.order}"

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        """Model calls for ``num_steps`` steps; one fewer for RK4 when the grid ends at t = 0."""
        n = num_steps * self.stages
        if final_zero and self.rk is not None:
            n -= self.stages - len(TABLEAUX[_RK_FINAL[self.rk]].c)
        return n

    def prepare(self, schedule, grid) -> Plan:
        grid = check_grid(grid)
        if self.variant == "rhork":
            return self._prepare_rk(schedule, grid)
        return self._prepare_multistep(schedule, grid)

    def _prepare_multistep(self, schedule, grid: np.ndarray) -> Plan:
        n, degree = len(grid) - 1, self.order - 1
        alpha, sigma, rho = _alpha_sigma_rho(schedule, grid)
        a = np.zeros(n)
        w_eps, w_x0 = np.zeros((n, degree + 1)), np.zeros((n, 1))
        degrees = np.zeros(n, dtype=np.int64)
        first = 0
        for i in range(n):
            if alpha[i] == 0:
                w_x0[i, 0], w_eps[i, 0] = alpha[i + 1], sigma[i + 1]
                first = i + 1
                continue
            d = min(degree, i - first)
            if self.lower_order_final:
                d = min(d, final_order_cap(i, n) - 1)
            idx = i - np.arange(d + 1)
            if self.variant == "tab":
                c = _tab_weights(schedule, grid[idx], grid[i + 1], rho[i], rho[i + 1])
            elif self.variant == "rhoab":
                c = _rhoab_weights(rho[idx], rho[i + 1])
            elif self.variant == "logrho":
                c = _logrho_weights(rho[idx], rho[i + 1])
            else:
                c = _ipndm_weights(rho[idx], rho[i + 1])
            a[i] = alpha[i + 1] / alpha[i]
            w_eps[i, : d + 1] = alpha[i + 1] * c
            degrees[i] = d
        info = {"solver": self.name, "variant": self.variant, "degrees": degrees}
        return Plan.multistep(grid, a, w_eps, w_x0, order=self.order, info=info)

    def _prepare_rk(self, schedule, grid: np.ndarray) -> Plan:
        alpha, _, rho = _alpha_sigma_rho(schedule, grid)
        if np.any(alpha[:-1] == 0):
            raise ValueError("DEIS 'rhork' needs alpha > 0 at every step start; start flow grids below t = 1")
        steps = []
        for i in range(len(grid) - 1):
            tableau = _RK_FINAL[self.rk] if rho[i + 1] == 0 else self.rk
            h = rho[i + 1] - rho[i]
            stage_t = [grid[i]] + [float(schedule.t_of_sigma_ve(rho[i] + ci * h)) for ci in TABLEAUX[tableau].c[1:]]
            if min(stage_t) <= 0:
                tableau, stage_t = "euler", [grid[i]]
            c = TABLEAUX[tableau].c
            stage_t = [grid[i + 1] if ci == 1.0 else ti for ci, ti in zip(c, stage_t)]
            alpha_next = [float(schedule.alpha(t)) for t in stage_t[1:] + [grid[i + 1]]]
            steps.append((TABLEAUX[tableau], h, stage_t, [an / alpha[i] for an in alpha_next], alpha_next))
        info = {"solver": self.name, "variant": "rhork", "tableau": self.rk}
        return runge_kutta_plan(grid, steps, f_x0=0.0, order=self.order, info=info)

    def __repr__(self) -> str:
        return f"DEISSolver(variant={self.variant!r}, order={self.order})"
