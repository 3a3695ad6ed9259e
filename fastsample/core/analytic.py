"""Exact models for testing samplers: Gaussian-mixture data and its probability-flow ODE.

For data x0 ~ sum_k w_k N(m_k, diag(v_k)) and x_t = alpha_t x0 + sigma_t eps, the denoiser
E[x0 | x_t] is known in closed form (Gaussian conditioning, then responsibilities), so a
sampler's output can be compared with the exact ODE solution. A zero-width mixture over a data
set (v = 0) is the empirical-data case (Karras et al., arXiv 2206.00364, App. B.3).

The reference solver uses the schedule-free form of the probability-flow ODE
(Song et al., arXiv 2011.13456): with y = x / alpha and rho = sigma / alpha,

    dy / drho = (y - E[x0 | y; rho]) / rho,

which depends on the schedule only through the end points, so one exact solution serves VP,
VE (EDM) and flow schedules alike. It is integrated with scipy's DOP853 in log rho (and in rho
for the last stretch to rho = 0) at rtol = atol = 1e-12, giving about 1e-10 accuracy.

Shapes: samples are (B, D) in float64 numpy, or torch tensors of shape (B, *shape) with
prod(shape) = D for the model functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .parameterization import check_prediction_type, from_x0_eps

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """A diagonal Gaussian mixture in D dimensions.

    Args:
        means: (K, D) component means.
        variances: (K, D), (K,) or scalar per-coordinate variances (0 allowed: point masses).
        weights: (K,) mixture weights (normalised here); uniform if omitted.
    """

    def __init__(self, means, variances=0.0, weights=None):
        m = np.atleast_2d(np.asarray(means, dtype=np.float64))
        k, d = m.shape
        v = np.asarray(variances, dtype=np.float64)
        v = np.broadcast_to(v.reshape(k, 1) if v.ndim == 1 and v.shape[0] == k and d != k else v, (k, d))
        if np.any(v < 0):
            raise ValueError("variances must be non-negative")
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (k,) or np.any(w <= 0):
            raise ValueError(f"weights must be {k} positive numbers")
        self.means, self.variances, self.weights = m, np.array(v), w / w.sum()
        self.log_weights = np.log(self.weights)
        self._t = {}

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def from_data(cls, data, variance: float = 0.0) -> GaussianMixture:
        """A mixture with one component per data point (flattened), all of width ``variance``."""
        x = np.asarray(data, dtype=np.float64).reshape(len(data), -1)
        return cls(x, np.full(x.shape, float(variance)))

    @classmethod
    def random(cls, dim: int, components: int, seed: int = 0, spread: float = 1.0, width=(0.05, 0.3)):
        """A random test mixture with well separated means and varied widths."""
        rng = np.random.default_rng(seed)
        means = rng.normal(0.0, spread, (components, dim))
        variances = rng.uniform(width[0], width[1], (components, dim))
        weights = rng.uniform(0.5, 1.5, components)
        return cls(means, variances, weights)

    # --- sampling and moments -------------------------------------------------------------

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        return self.means[k] + np.sqrt(self.variances[k]) * rng.standard_normal((n, self.dim))

    # --- the exact denoiser ---------------------------------------------------------------

    def _tensors(self, device, dtype=torch.float64):
        key = (str(device), dtype)
        if key not in self._t:
            self._t[key] = tuple(
                torch.as_tensor(a, dtype=dtype, device=device) for a in (self.means, self.variances, self.log_weights)
            )
        return self._t[key]

    def denoise_ve(self, y: torch.Tensor, rho: float) -> torch.Tensor:
        """E[x0 | x0 + rho * eps = y] for y of shape (B, D), float64, on y's device."""
        m, v, lw = self._tensors(y.device)
        if rho == 0:
            return y.clone()
        s2 = v + rho * rho  # (K, D)
        diff = y[:, None, :] - m[None]  # (B, K, D)
        logp = lw[None] - 0.5 * (torch.log(2 * math.pi * s2).sum(-1)[None] + (diff * diff / s2[None]).sum(-1))
        r = torch.softmax(logp, dim=1)  # (B, K)
        cond = m[None] + (v / s2)[None] * diff  # (B, K, D)
        return torch.einsum("bk,bkd->bd", r, cond)

    def denoise(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """E[x0 | x_t = x] for x_t = alpha x0 + sigma eps; x of shape (B, D), float64; the data mean at alpha = 0."""
        if alpha == 0:
            m, _, lw = self._tensors(x.device)
            return (torch.exp(lw)[:, None] * m).sum(0).expand_as(x).clone()
        return self.denoise_ve(x / alpha, sigma / alpha)

    def model_fn(self, schedule, prediction_type: str = "epsilon") -> Callable:
        """A perfect model: ``f(x, t) -> output`` for torch x of shape (B, *shape), float t in (0, 1].

        Output has the dtype and shape of x and is what a network of ``prediction_type`` would
        give (eps, x0, v or flow velocity), computed in float64.
        """
        ptype = check_prediction_type(prediction_type, schedule.is_flow)

        def f(x: torch.Tensor, t: float) -> torch.Tensor:
            alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
            xf = x.reshape(len(x), -1).to(torch.float64)
            x0 = self.denoise(xf, alpha, sigma)
            eps = (xf - alpha * x0) / sigma
            return from_x0_eps(x0, eps, alpha, sigma, ptype).reshape(x.shape).to(x.dtype)

        return f

    # --- the exact probability-flow ODE solution -----------------------------------------

    def ode_solve_ve(self, y: np.ndarray, rho_start: float, rho_end: float, rtol=1e-12, atol=1e-12):
        """Solve dy/drho = (y - E[x0|y; rho]) / rho from rho_start to rho_end (>= 0). y: (B, D)."""
        y = np.asarray(y, dtype=np.float64)
        shape = y.shape
        if rho_end < 0 or rho_start <= 0:
            raise ValueError("need rho_start > 0 and rho_end >= 0")
        if rho_start == rho_end:
            return y.copy()

        def f_log(s, yflat):
            rho = math.exp(s)
            yy = torch.from_numpy(yflat.reshape(shape))
            return (yy - self.denoise_ve(yy, rho)).numpy().reshape(-1)

        def f_lin(rho, yflat):
            yy = torch.from_numpy(yflat.reshape(shape))
            if rho <= 0:
                # limit of (y - x0_hat) / rho as rho -> 0 for positive widths; 0 for point masses
                return np.zeros_like(yflat)
            return ((yy - self.denoise_ve(yy, rho)) / rho).numpy().reshape(-1)

        switch = min(1e-3, rho_start) if rho_end < 1e-3 else rho_end
        yv = y.reshape(-1)
        if rho_start > switch:
            sol = solve_ivp(f_log, (math.log(rho_start), math.log(switch)), yv, method="DOP853", rtol=rtol, atol=atol)
            if not sol.success:
                raise RuntimeError(f"reference ODE solve failed: {sol.message}")
            yv = sol.y[:, -1]
        start = min(rho_start, switch)
        if rho_end < start:
            sol = solve_ivp(f_lin, (start, rho_end), yv, method="DOP853", rtol=rtol, atol=atol)
            if not sol.success:
                raise RuntimeError(f"reference ODE solve failed: {sol.message}")
            yv = sol.y[:, -1]
        return yv.reshape(shape)

    def ode_solve(self, x, schedule, t_start: float, t_end: float, rtol=1e-12, atol=1e-12) -> np.ndarray:
        """Exact probability-flow ODE map x(t_start) -> x(t_end) for ``schedule``; x: (B, D).

        A flow may start at alpha = 0 (t = 1): the first stretch, to t = 0.9, is then integrated in t
        as dx/dt = eps_hat - x0_hat, which is smooth there.
        """
        if float(schedule.alpha(t_start)) == 0 and t_end < 0.9:
            if not schedule.is_flow:
                raise ValueError("an ODE start at alpha = 0 is supported for flow schedules only")
            x = np.asarray(x, dtype=np.float64)

            def velocity(t, xflat):
                xx = torch.from_numpy(xflat.reshape(x.shape))
                x0 = self.denoise(xx, 1.0 - t, t)
                return ((xx - x0) / t).numpy().reshape(-1)

            sol = solve_ivp(velocity, (t_start, 0.9), x.reshape(-1), method="DOP853", rtol=rtol, atol=atol)
            if not sol.success:
                raise RuntimeError(f"reference ODE solve failed: {sol.message}")
            x, t_start = sol.y[:, -1].reshape(x.shape), 0.9
        a0, s0 = float(schedule.alpha(t_start)), float(schedule.sigma(t_start))
        a1, s1 = float(schedule.alpha(t_end)), float(schedule.sigma(t_end))
        y = self.ode_solve_ve(np.asarray(x, dtype=np.float64) / a0, s0 / a0, s1 / a1, rtol, atol)
        return a1 * y

    def prior_sample(self, n: int, schedule, t_start: float | None = None, seed: int = 0) -> np.ndarray:
        """Exact samples of x_{t_start}: alpha x0 + sigma eps (float64, (n, D))."""
        t0 = schedule.t_max if t_start is None else t_start
        rng = np.random.default_rng(seed + 1)
        x0 = self.sample(n, seed=seed)
        return float(schedule.alpha(t0)) * x0 + float(schedule.sigma(t0)) * rng.standard_normal(x0.shape)
