"""Noise schedules: x_t = alpha_t * x0 + sigma_t * eps for continuous t in [0, 1].

t = 1 is noise, t = 0 is data, for every family (flow models included). lambda_t =
log(alpha_t / sigma_t) is the half log-SNR. All functions take and return float64 numpy
arrays (or floats); they run on the CPU once per time grid, never inside a sampling step.

Families:
- :class:`DiscreteVP`: a discrete-time VP model from ``alphas_cumprod`` (DDPM, SD, SDXL), with
  log(alpha) interpolated piecewise linearly in t (Lu et al., DPM-Solver, arXiv 2206.00927, App. D).
- :class:`LinearVP`: the continuous VP-SDE of Song et al. (arXiv 2011.13456).
- :class:`EDM`: the variance-exploding schedule of Karras et al. (arXiv 2206.00364), alpha = 1.
- :class:`RectifiedFlow`: alpha = 1 - t, sigma = t (Liu et al., arXiv 2209.03003; diffusers'
  flow convention).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "NoiseSchedule",
    "DiscreteVP",
    "LinearVP",
    "EDM",
    "RectifiedFlow",
    "betas_for_schedule",
]


def _arr(t):
    return np.asarray(t, dtype=np.float64)


class NoiseSchedule:
    """Base class. Subclasses define ``log_alpha`` and ``sigma`` (or ``lambda_``) and ``t_of_lambda``.

    Attributes:
        t_min: smallest time the network was trained at (0 for continuous schedules).
        t_max: largest time (1).
        is_flow: True when alpha + sigma = 1 (rectified flow), so a velocity parameterisation exists.
        num_train_timesteps: the scale of diffusers' ``timestep`` label.
    """

    t_min: float = 0.0
    t_max: float = 1.0
    is_flow: bool = False
    num_train_timesteps: int = 1000

    def alpha(self, t):
        return np.exp(self.log_alpha(t))

    def log_alpha(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, t):
        return np.sqrt(np.maximum(-np.expm1(2.0 * self.log_alpha(t)), 0.0))

    def lambda_(self, t):
        """Half log-SNR log(alpha / sigma); +inf at sigma = 0."""
        with np.errstate(divide="ignore"):
            return self.log_alpha(t) - np.log(self.sigma(t))

    def sigma_ve(self, t):
        """The EDM / k-diffusion noise level sigma / alpha."""
        return self.sigma(t) / self.alpha(t)

    def t_of_lambda(self, lam):  # pragma: no cover - abstract
        raise NotImplementedError

    def t_of_sigma_ve(self, s):
        with np.errstate(divide="ignore"):
            return self.t_of_lambda(-np.log(_arr(s)))

    def timestep(self, t):
        """Diffusers' timestep label for continuous time t (float64)."""
        return _arr(t) * self.num_train_timesteps

    def t_of_timestep(self, timestep):
        return _arr(timestep) / self.num_train_timesteps

    def describe(self) -> dict:
        return {"family": type(self).__name__}


def betas_for_schedule(
    beta_schedule: str,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
) -> np.ndarray:
    """Betas for diffusers' ``beta_schedule`` names (float64)."""
    n = num_train_timesteps
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

        return betas_for_alpha_bar(n).numpy().astype(np.float64)
    raise ValueError(
        f"unknown beta_schedule {beta_schedule!r}; allowed: 'linear', 'scaled_linear', 'squaredcos_cap_v2'"
    )


class DiscreteVP(NoiseSchedule):
    """Discrete VP schedule from ``alphas_cumprod`` (length N).

    Training index n in 0..N-1 sits at t_n = (n + 1) / N; log alpha is piecewise linear in t
    between the nodes, and t = 0 is added as the clean end point (alpha = 1, sigma = 0) so that
    a final step can reach data exactly. ``timestep(t) = N t - 1`` is diffusers' index.
    """

    def __init__(self, alphas_cumprod):
        acp = np.asarray(alphas_cumprod, dtype=np.float64)
        if acp.ndim != 1 or len(acp) < 2 or np.any(acp <= 0) or np.any(acp >= 1):
            raise ValueError("alphas_cumprod must be a 1-D array with values in (0, 1)")
        n = len(acp)
        self.num_train_timesteps = n
        self.alphas_cumprod = acp
        self.t_nodes = np.concatenate([[0.0], np.arange(1, n + 1, dtype=np.float64) / n])
        self.log_alpha_nodes = np.concatenate([[0.0], 0.5 * np.log(acp)])
        self.t_min = 1.0 / n
        if np.any(np.diff(acp) >= 0):
            raise ValueError("alphas_cumprod must be strictly decreasing")

    @classmethod
    def from_betas(cls, betas):
        return cls(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))

    @classmethod
    def from_config(cls, config) -> DiscreteVP:
        """From a diffusers scheduler config (``trained_betas`` or ``beta_schedule``)."""
        get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
        trained = get("trained_betas", None)
        if trained is not None:
            betas = np.asarray(trained, dtype=np.float64)
        else:
            betas = betas_for_schedule(
                get("beta_schedule", "linear"),
                get("num_train_timesteps", 1000),
                get("beta_start", 0.0001),
                get("beta_end", 0.02),
            )
        return cls.from_betas(betas)

    def log_alpha(self, t):
        return np.interp(_arr(t), self.t_nodes, self.log_alpha_nodes)

    def t_of_lambda(self, lam):
        """Exact inverse of lambda: alpha^2 = sigmoid(2 lambda) fixes log alpha, which is piecewise linear in t."""
        with np.errstate(over="ignore"):
            log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * _arr(lam))
        return np.interp(log_alpha, self.log_alpha_nodes[::-1], self.t_nodes[::-1])

    def timestep(self, t):
        return _arr(t) * self.num_train_timesteps - 1.0

    def t_of_timestep(self, timestep):
        return (_arr(timestep) + 1.0) / self.num_train_timesteps

    def describe(self) -> dict:
        return {"family": "DiscreteVP", "num_train_timesteps": self.num_train_timesteps}


class LinearVP(NoiseSchedule):
    """Continuous VP-SDE with linear beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self.beta_min, self.beta_max, self.t_min = float(beta_min), float(beta_max), float(t_min)

    def log_alpha(self, t):
        t = _arr(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_of_lambda(self, lam):
        lam = _arr(lam)
        with np.errstate(over="ignore"):
            log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        b0, db = self.beta_min, self.beta_max - self.beta_min
        # solve 0.25 db t^2 + 0.5 b0 t + log_alpha = 0 for t >= 0
        return 2.0 * (-log_alpha) / (0.5 * b0 + np.sqrt(0.25 * b0**2 - db * log_alpha))

    def describe(self) -> dict:
        return {"family": "LinearVP", "beta_min": self.beta_min, "beta_max": self.beta_max}


class EDM(NoiseSchedule):
    """Variance exploding: alpha = 1, sigma = sigma_ve, log sigma linear in t on [sigma_min, sigma_max].

    t = 0 is sigma = 0 exactly (the clean end point); ``t_min`` is where sigma = sigma_min.
    The timestep label is EDM's c_noise = log(sigma) / 4.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._a = math.log(self.sigma_min)
        self._b = math.log(self.sigma_max) - self._a
        self.t_min = 1e-6

    def log_alpha(self, t):
        return np.zeros_like(_arr(t))

    def sigma(self, t):
        t = _arr(t)
        s = np.exp(self._a + self._b * (t - self.t_min) / (1 - self.t_min))
        return np.where(t <= 0, 0.0, s)

    def lambda_(self, t):
        with np.errstate(divide="ignore"):
            return -np.log(self.sigma(t))

    def t_of_lambda(self, lam):
        lam = _arr(lam)
        t = self.t_min + (-lam - self._a) / self._b * (1 - self.t_min)
        return np.where(np.isposinf(lam), 0.0, t)

    def timestep(self, t):
        with np.errstate(divide="ignore"):
            return 0.25 * np.log(self.sigma(t))

    def t_of_timestep(self, timestep):
        return self.t_of_lambda(-4.0 * _arr(timestep))

    def describe(self) -> dict:
        return {"family": "EDM", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class RectifiedFlow(NoiseSchedule):
    """Rectified flow: x_t = (1 - t) x0 + t eps, velocity v = eps - x0; timestep = 1000 t.

    ``reversed_labels=True`` gives the label N (1 - t) of checkpoints trained with noise at time 0
    (Liu et al.'s RectifiedFlow code); the times and the ODE are unchanged.
    """

    is_flow = True

    def __init__(self, num_train_timesteps: int = 1000, reversed_labels: bool = False):
        self.num_train_timesteps = int(num_train_timesteps)
        self.reversed_labels = bool(reversed_labels)

    def timestep(self, t):
        t = _arr(t)
        return (1.0 - t if self.reversed_labels else t) * self.num_train_timesteps

    def t_of_timestep(self, timestep):
        t = _arr(timestep) / self.num_train_timesteps
        return 1.0 - t if self.reversed_labels else t

    def alpha(self, t):
        return 1.0 - _arr(t)

    def log_alpha(self, t):
        with np.errstate(divide="ignore"):
            return np.log1p(-_arr(t))

    def sigma(self, t):
        return _arr(t).copy()

    def lambda_(self, t):
        t = _arr(t)
        with np.errstate(divide="ignore"):
            return np.log1p(-t) - np.log(t)

    def t_of_lambda(self, lam):
        lam = _arr(lam)
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(lam))

    def describe(self) -> dict:
        return {"family": "RectifiedFlow", "num_train_timesteps": self.num_train_timesteps}
