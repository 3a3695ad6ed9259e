"""Convergence order of every DEIS variant (Zhang & Chen, arXiv 2204.13902) against the exact Gaussian-mixture ODE.

Error (max abs over 8 samples, float64) against ``GaussianMixture.ode_solve`` (about 1e-10 accurate) on
three step counts; the fitted slope of log error vs log steps must be at least ``order - TOL``.

- VP: LinearVP, uniform half-log-SNR grid from t = 1 to t = 0.03. LinearVP, not DiscreteVP: DiscreteVP's
  log alpha is piecewise linear in t, so eps along the solution has kinks in t and tAB (a polynomial in
  t) loses order there.
- Flow: RectifiedFlow, uniform half-log-SNR grid from t = 0.999 to t = 0.05.
- Multistep variants warm-start with lower degree; the degree-0 first step leaves an O(h^2) error, which
  is negligible only where eps hardly changes over the first steps (near pure noise), hence grids from
  t = 1 (0.999 for flow). iPNDM's weights assume equal steps in rho, so it is measured on a grid uniform
  in rho; from t = 0.5 its warm-start floor shows for order 4 at the finest grids, so it must reach 3.
- rhoAB (a polynomial in rho) is still pre-asymptotic at these step counts on log-SNR grids, where rho
  spans four decades and its steps shrink geometrically: order 4 measures 3.4-3.6, so its tolerance is 0.6.
- Runge-Kutta in rho into t = 0 uses stage nodes that avoid t = 0; checked on a flow grid ending at t = 0.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastsample.core.grids import uniform_lambda, uniform_t
from fastsample.solvers import DEISSolver

TOL = 0.4
VARIANT_TOL = {"rhoab": 0.6}
MULTISTEP_STEPS = (48, 96, 192)
RK_STEPS = (20, 40, 80)
CASES = {"linear_vp": (1.0, 0.03), "flow": (0.999, 0.05)}


def _rho_grid(schedule, n, t_start, t_end):
    rho = schedule.sigma_ve(np.array([t_start, t_end]))
    grid = schedule.t_of_sigma_ve(np.linspace(rho[0], rho[1], n + 1))
    grid[0], grid[-1] = t_start, t_end
    return grid


_REFERENCE = {}


def _reference(mixture, schedule, t_start, t_end):
    key = (id(mixture), id(schedule), t_start, t_end)
    if key not in _REFERENCE:
        x = mixture.prior_sample(8, schedule, t_start=t_start)
        _REFERENCE[key] = x, mixture.ode_solve(x, schedule, t_start, t_end)
    return _REFERENCE[key]


def _slope(mixture, schedule, solver, make_grid, steps, t_start, t_end, sampler):
    _, ref = _reference(mixture, schedule, t_start, t_end)
    errs = []
    for n in steps:
        out, _ = sampler(mixture, schedule, solver, make_grid(schedule, n, t_start=t_start, t_end=t_end))
        errs.append(np.abs(out - ref).max())
    assert min(errs) > 1e-9, f"errors {errs} reach the oracle's accuracy; use fewer steps"
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "variant,order",
    [("tab", 1)] + [(v, o) for v in ("tab", "rhoab", "logrho") for o in (2, 3, 4)] + [("rhork", o) for o in (2, 3, 4)],
)
def test_order(variant, order, name, mixture, schedules, sampler):
    """Order 1 is DDIM for every multistep variant (see test_deis_parity), so it is measured once."""
    t_start, t_end = CASES[name]
    steps = RK_STEPS if variant == "rhork" else MULTISTEP_STEPS
    solver = DEISSolver(variant, order)
    slope, errs = _slope(mixture, schedules[name], solver, uniform_lambda, steps, t_start, t_end, sampler)
    tol = VARIANT_TOL.get(variant, TOL)
    assert slope >= order - tol, f"{variant} order {order} on {name}: slope {slope:.2f}, errors {errs}"


@pytest.mark.parametrize("name", ["linear_vp"])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_ipndm_order_on_uniform_rho(order, name, mixture, schedules, sampler):
    t_start, t_end = (0.5, 0.03) if name == "linear_vp" else (0.8, 0.05)
    solver = DEISSolver("ipndm", order)
    slope, errs = _slope(mixture, schedules[name], solver, _rho_grid, MULTISTEP_STEPS, t_start, t_end, sampler)
    assert slope >= min(order, 3) - TOL, f"ipndm order {order} on {name}: slope {slope:.2f}, errors {errs}"


def test_ipndm_is_rhoab_on_uniform_rho(schedules):
    schedule = schedules["linear_vp"]
    grid = _rho_grid(schedule, 12, 0.6, 0.05)
    for order in (1, 2, 3, 4):
        ip, ab = DEISSolver("ipndm", order).prepare(schedule, grid), DEISSolver("rhoab", order).prepare(schedule, grid)
        np.testing.assert_allclose(ip.w_eps, ab.w_eps, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_rk_order_into_zero(order, mixture, schedules, sampler):
    schedule = schedules["flow"]
    slope, errs = _slope(mixture, schedule, DEISSolver("rhork", order), uniform_t, RK_STEPS, 0.9, 0.0, sampler)
    assert slope >= order - TOL, f"rhork order {order} into t = 0: slope {slope:.2f}, errors {errs}"


@pytest.mark.parametrize("variant", ["tab", "rhoab", "logrho", "ipndm"])
def test_multistep_into_zero_is_accurate(variant, mixture, schedules, sampler):
    """Grids ending at t = 0 (final step to sigma = 0): VP and flow, error small and shrinking with steps."""
    for name, t_start in (("linear_vp", 1.0), ("discrete_vp", 1.0), ("flow", 0.999)):
        schedule = schedules[name]
        _, ref = _reference(mixture, schedule, t_start, 0.0)
        solver = DEISSolver(variant, 3)
        grids = [uniform_t(schedule, n, t_start=t_start, t_end=0.0) for n in (20, 80)]
        errs = [np.abs(sampler(mixture, schedule, solver, grid)[0] - ref).max() for grid in grids]
        assert errs[1] < 0.5 * errs[0] and errs[1] < 2e-2, (name, errs)
