"""Time grids: pure functions (schedule, n, options) -> float64 array of n + 1 decreasing times.

The first entry is the start time (noise end), the last the end time. Every grid may end at
t = 0 (sigma = 0, exact data) or at a positive time; solvers never evaluate the model at t = 0.

- ``uniform_t``: equal steps in t (DDIM's "uniform"; diffusers' "linspace" spacing).
- ``quadratic_t``: t_i quadratic in i (Song et al., DDIM, arXiv 2010.02502).
- ``uniform_lambda``: equal steps in half log-SNR (DPM-Solver, arXiv 2206.00927).
- ``karras``: sigma_ve^(1/rho) uniform, rho = 7 (EDM, arXiv 2206.00364).
- ``flow_shift``: flow-matching grid with static ``shift`` or dynamic ``mu`` (SD3, arXiv 2403.03206).
- ``diffusers_spacing``: diffusers' integer "leading" / "trailing" / "linspace" timesteps.

:func:`check_grid` validates any grid (from a user, a file or a table) once, for every solver.
"""

from __future__ import annotations

import math

import numpy as np

from .schedules import NoiseSchedule

__all__ = [
    "uniform_t",
    "quadratic_t",
    "uniform_lambda",
    "karras",
    "flow_shift",
    "shift_sigmas",
    "diffusers_spacing",
    "check_grid",
    "GRIDS",
    "FLOW_GRIDS",
    "make_grid",
]


def _ends(schedule: NoiseSchedule, t_start, t_end):
    t0 = schedule.t_max if t_start is None else float(t_start)
    t1 = schedule.t_min if t_end is None else float(t_end)
    if not t0 > t1 >= 0:
        raise ValueError(f"need t_start > t_end >= 0, got {t0} and {t1}")
    return t0, t1


def _finish(grid, final_zero: bool):
    grid = np.asarray(grid, dtype=np.float64)
    if final_zero:
        grid = np.concatenate([grid, [0.0]])
    return grid


def check_grid(
    grid, what: str = "a time grid", *, increasing: bool = False, least: float | None = 0.0, min_len: int = 2,
    allow_inf: bool = False, shown=None, error: type[ValueError] = ValueError,
) -> np.ndarray:
    """``grid`` as float64 (n,), or ``error`` with one line naming ``what`` and the fault.

    A grid runs from noise to data: 1-D with at least ``min_len`` values, no NaN (nor +-inf unless ``allow_inf``:
    a lambda grid reaches +inf at t = 0), strictly decreasing (a time grid) or ``increasing`` (a lambda grid),
    no value below ``least`` (None: no bound). The message shows ``shown`` (the user's values, when ``grid`` is
    derived from them) or ``grid``.
    """
    g = np.asarray(grid, dtype=np.float64)
    ok = g.ndim == 1 and len(g) >= min_len
    if ok:
        d = np.diff(g)
        ok = not np.any(np.isnan(g)) and (allow_inf or bool(np.all(np.isfinite(g))))
        ok = ok and bool(np.all(d > 0 if increasing else d < 0)) and (least is None or g.min() >= least)
    if not ok:
        rule = f"1-D, at least {min_len} value{'s' if min_len > 1 else ''}, no NaN{'' if allow_inf else ' or Inf'}"
        rule += f", strictly {'increasing' if increasing else 'decreasing'}"
        rule += "" if least is None else f", >= {least:g}"
        values = np.asarray(g if shown is None else shown).tolist()
        raise error(f"{what} must run from noise to data ({rule}), got {values}")
    return g


def _check_n(n):
    if int(n) != n or n < 1:
        raise ValueError(f"number of steps must be a positive integer, got {n}")
    return int(n)


def uniform_t(schedule, n, t_start=None, t_end=None, final_zero=False):
    """n equal steps in t from t_start to t_end (then one more to t = 0 if ``final_zero``)."""
    n = _check_n(n)
    t0, t1 = _ends(schedule, t_start, t_end)
    k = n - 1 if final_zero else n
    return _finish(np.linspace(t0, t1, k + 1), final_zero)


def quadratic_t(schedule, n, t_start=None, t_end=None, final_zero=False):
    n = _check_n(n)
    t0, t1 = _ends(schedule, t_start, t_end)
    k = n - 1 if final_zero else n
    grid = np.linspace(math.sqrt(t0), math.sqrt(t1), k + 1) ** 2
    grid[-1], grid[0] = t1, t0  # exact ends (sqrt(0.999) ** 2 is 0.9990000000000001)
    return _finish(grid, final_zero)


def uniform_lambda(schedule, n, t_start=None, t_end=None, final_zero=False):
    n = _check_n(n)
    t0, t1 = _ends(schedule, t_start, t_end)
    k = n - 1 if final_zero else n
    lam = np.linspace(schedule.lambda_(t0), schedule.lambda_(t1), k + 1)
    grid = schedule.t_of_lambda(lam)
    grid[-1], grid[0] = t1, t0  # exact ends; with one point (k = 0) it is the start
    return _finish(grid, final_zero)


def karras(schedule, n, t_start=None, t_end=None, final_zero=False, rho=7.0):
    n = _check_n(n)
    t0, t1 = _ends(schedule, t_start, t_end)
    k = n - 1 if final_zero else n
    s0, s1 = schedule.sigma_ve(t0), schedule.sigma_ve(t1)
    u = np.linspace(s0 ** (1 / rho), s1 ** (1 / rho), k + 1) ** rho
    grid = schedule.t_of_sigma_ve(u)
    grid[-1], grid[0] = t1, t0  # exact ends; with one point (k = 0) it is the start
    return _finish(grid, final_zero)


def shift_sigmas(sigmas, shift=None, mu=None, time_shift_type="exponential"):
    """The SD3 / Flux time shift applied once: exponential (shift = e^mu) or linear."""
    s = np.asarray(sigmas, dtype=np.float64)
    if mu is not None:
        if time_shift_type == "exponential":
            with np.errstate(divide="ignore"):
                return np.where(s > 0, math.exp(mu) / (math.exp(mu) + (1 / np.where(s > 0, s, 1) - 1)), 0.0)
        if time_shift_type == "linear":
            with np.errstate(divide="ignore"):
                return np.where(s > 0, mu / (mu + (1 / np.where(s > 0, s, 1) - 1)), 0.0)
        raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}")
    shift = 1.0 if shift is None else float(shift)
    return shift * s / (1 + (shift - 1) * s)


def flow_shift(schedule, n, shift=1.0, mu=None, t_start=None, t_end=0.0, time_shift_type="exponential"):
    """Flow-matching grid: n equal steps in t from t_start to t_end, shifted once.

    With ``t_end = 0`` this is diffusers' ``FlowMatchEulerDiscreteScheduler`` grid with its final 0.
    """
    n = _check_n(n)
    t0 = schedule.t_max if t_start is None else float(t_start)
    base = np.linspace(t0, float(t_end), n + 1)
    return shift_sigmas(base, shift=shift, mu=mu, time_shift_type=time_shift_type)


def diffusers_spacing(schedule, n, spacing="leading", steps_offset=0, final_zero=True):
    """Diffusers' integer timesteps for ``timestep_spacing``, as times, plus the final t = 0.

    Reproduces ``DPMSolverMultistepScheduler.set_timesteps`` for discrete VP schedules. Where its
    integer construction breaks down (repeated or out-of-range timesteps: "leading" close to N steps,
    any spacing above N), the n evenly spaced float timesteps from N - 1 down are used instead.
    """
    n = _check_n(n)
    N = schedule.num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, N - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    elif spacing == "leading":
        step_ratio = N // (n + 1)
        ts = (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64)
        ts += steps_offset
    elif spacing == "trailing":
        step_ratio = N / n
        ts = np.arange(N, 0, -step_ratio).round().copy().astype(np.int64) - 1
    else:
        raise ValueError(f"timestep_spacing must be 'linspace', 'leading' or 'trailing', got {spacing!r}")
    ts = ts.astype(np.float64)
    if np.any(np.diff(ts) >= 0) or ts[0] > N - 1 or ts[-1] < 0:
        ts = np.linspace(0, N - 1, n + 1)[::-1][:-1]
    grid = schedule.t_of_timestep(ts)
    end = 0.0 if final_zero else schedule.t_min
    return np.concatenate([grid, [end]])


GRIDS = {
    "uniform_t": uniform_t,
    "quadratic_t": quadratic_t,
    "uniform_lambda": uniform_lambda,
    "karras": karras,
    # the USF paper's names (arXiv 2312.07243), which the S^3 search and its results files use
    "time_uniform": uniform_t,
    "time_quadratic": quadratic_t,
    "logSNR": uniform_lambda,
}
"""The one registry of named grids: ``make_grid(name, schedule, n, **options)``."""
FLOW_GRIDS = (uniform_t, quadratic_t)
"""The grids defined up to a flow's t = 1 (infinite noise level there: no Karras or log-SNR spacing)."""


def make_grid(name: str, schedule, n: int, **kwargs) -> np.ndarray:
    if name not in GRIDS:
        raise ValueError(f"unknown time grid {name!r}; allowed: {sorted(GRIDS)}")
    return GRIDS[name](schedule, n, **kwargs)
