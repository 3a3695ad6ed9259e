"""DEIS (Zhang & Chen, arXiv 2204.13902): degree 0 is DDIM; log-rho, iPNDM, rhoRK-Heun match diffusers; plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DEISMultistepScheduler
from scipy.integrate import quad

from fastsample.core.grids import flow_shift, karras, quadratic_t, uniform_lambda, uniform_t
from fastsample.core.schedules import DiscreteVP, LinearVP
from fastsample.solvers import DDIMSolver, DEISSolver
from fastsample.solvers.deis import _alpha_sigma_rho, _tab_weights
from fastsample.solvers.sampling import sample

MULTISTEP = ("tab", "rhoab", "logrho", "ipndm")


def _diffusers_run(scheduler, mixture, n: int, seed: int = 0):
    """Run a diffusers scheduler's own loop on the analytic eps model; returns (x_start, x_end, timesteps)."""
    scheduler.set_timesteps(n)
    schedule = DiscreteVP(scheduler.alphas_cumprod.double().numpy())
    model = mixture.model_fn(schedule)
    x = torch.from_numpy(mixture.prior_sample(4, schedule, t_start=1.0, seed=seed)).float()
    y = x.clone()
    for ts in scheduler.timesteps:
        out = model(y, float(schedule.t_of_timestep(float(ts))))
        y = scheduler.step(out, ts, y).prev_sample
    return schedule, x, y, scheduler.timesteps.numpy().astype(np.float64)


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("variant", MULTISTEP)
def test_degree0_is_ddim_plan(variant, schedules):
    for name, schedule in schedules.items():
        grid = uniform_t(schedule, 7, t_start=0.99, t_end=0.02, final_zero=True)
        ddim, deis = DDIMSolver().prepare(schedule, grid), DEISSolver(variant, 1).prepare(schedule, grid)
        np.testing.assert_array_equal(deis.a, ddim.a, err_msg=name)
        np.testing.assert_allclose(deis.w_eps, ddim.w_eps, rtol=1e-12, atol=0, err_msg=name)
        alpha, _, rho = _alpha_sigma_rho(schedule, grid)
        np.testing.assert_allclose(ddim.w_eps[:, 0], alpha[1:] * (rho[1:] - rho[:-1]), rtol=1e-14, err_msg=name)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_matches_diffusers(set_alpha_to_one, spacing, mixture):
    scheduler = DDIMScheduler(
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=set_alpha_to_one,
        timestep_spacing=spacing,
        steps_offset=1,
    )
    schedule, x, y, ts = _diffusers_run(scheduler, mixture, 10)
    end = 0.0 if set_alpha_to_one else float(schedule.t_of_timestep(0.0))
    grid = np.concatenate([schedule.t_of_timestep(ts), [end]])
    for variant in MULTISTEP:
        ours = sample(mixture.model_fn(schedule), x, schedule, DEISSolver(variant, 1), grid)
        assert _rel(ours, y) < 2e-6, variant


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize(
    "spacing,lower_order_final,n", [("linspace", False, 10), ("trailing", True, 8), ("linspace", True, 20)]
)
def test_logrho_matches_diffusers_deis(order, spacing, lower_order_final, n, mixture):
    scheduler = DEISMultistepScheduler(
        beta_schedule="linear", solver_order=order, timestep_spacing=spacing, lower_order_final=lower_order_final
    )
    schedule, x, y, ts = _diffusers_run(scheduler, mixture, n)
    sigma_last = float(scheduler.sigmas[-1])
    grid = np.concatenate([schedule.t_of_timestep(ts), schedule.t_of_sigma_ve(np.array([sigma_last]))])
    solver = DEISSolver("logrho", order, lower_order_final=lower_order_final)
    ours = sample(mixture.model_fn(schedule), x, schedule, solver, grid)
    assert _rel(ours, y) < 1e-5


@pytest.mark.parametrize("name", ["discrete_vp", "linear_vp", "edm", "flow"])
def test_tab_weights_sum_to_ddim(name, schedules):
    schedule = schedules[name]
    for grid in (
        uniform_lambda(schedule, 9, t_start=0.99, t_end=0.01, final_zero=True),
        karras(schedule, 6, t_start=0.9, t_end=0.05),
    ):
        plan = DEISSolver("tab", 4).prepare(schedule, grid)
        alpha, _, rho = _alpha_sigma_rho(schedule, grid)
        expected = alpha[1:] * (rho[1:] - rho[:-1])
        scale = np.maximum(1.0, np.abs(alpha[1:] * rho[:-1]))
        assert np.all(np.abs(plan.w_eps.sum(axis=1) - expected) <= 1e-12 * scale)


def test_tab_weights_match_scipy_quad():
    """Independent check of the by-parts quadrature: integral L_j(t) rho'(t) dt with rho' in closed form (LinearVP)."""
    s = LinearVP()
    db, b0 = s.beta_max - s.beta_min, s.beta_min

    def drho(t):
        la = float(s.log_alpha(t))
        return np.exp(-2 * la) * (0.5 * db * t + 0.5 * b0) / np.sqrt(np.expm1(-2 * la))

    nodes, t_end = np.array([0.5, 0.6, 0.7, 0.8]), 0.4
    _, _, rho = _alpha_sigma_rho(s, np.array([nodes[0], t_end]))
    ours = _tab_weights(s, nodes, t_end, rho[0], rho[1])
    for j in range(len(nodes)):
        others = np.delete(nodes, j)

        def basis(t, j=j, others=others):
            return np.prod((t - others) / (nodes[j] - others))

        ref = -quad(lambda t, basis=basis: basis(t) * drho(t), t_end, nodes[0], epsabs=1e-14, epsrel=1e-13)[0]
        assert abs(ours[j] - ref) < 1e-12 * max(1.0, abs(ref))


@pytest.mark.parametrize(
    "variant,order", [(v, o) for v in MULTISTEP for o in (1, 2, 3, 4)] + [("rhork", o) for o in (2, 3, 4)]
)
def test_plan_invariants(variant, order, schedules):
    solver = DEISSolver(variant, order)
    for name, schedule in schedules.items():
        t_start = 0.999 if schedule.is_flow else 1.0
        for final_zero in (False, True):
            for make in (uniform_t, quadratic_t, uniform_lambda, karras):
                grid = make(schedule, 6, t_start=t_start, t_end=0.03, final_zero=final_zero)
                plan = solver.prepare(schedule, grid)
                if name == "edm" and final_zero and variant == "rhork":
                    # EDM has no t > 0 with sigma below sigma_min: the step into t = 0 is one Euler call
                    assert plan.nfe == len(plan.eval_times) == 5 * solver.stages + 1
                else:
                    assert plan.nfe == len(plan.eval_times) == solver.nfe(6, final_zero=final_zero), (name, make)
                if not (final_zero and variant == "rhork" and (order == 4 or name == "edm")):
                    assert plan.nfe == 6 * solver.stages
                assert np.all(plan.eval_times > 0) and np.all(np.isfinite(plan.w_eps)) and np.all(np.isfinite(plan.a))
                assert np.all(np.diff(plan.step_of_eval) >= 0) and plan.step_of_eval[-1] == 5
                assert np.all(plan.eval_times[plan.ref == 0] == grid[plan.step_of_eval[plan.ref == 0]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="tab, rhoab, logrho, rhork, ipndm"):
        DEISSolver("dpm", 2)
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 4\)"):
        DEISSolver("tab", 5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        DEISSolver("rhork", 1)


def test_attributes():
    s = DEISSolver("rhork", 4)
    assert (s.order, s.stages, s.name, s.nfe(10), s.nfe(10, final_zero=True)) == (4, 4, "deis_rhork_rk4", 40, 39)
    s = DEISSolver("tab", 3)
    assert (s.order, s.stages, s.name, s.nfe(10)) == (3, 1, "deis_tab3", 10)
    assert DDIMSolver().order == 1 and DDIMSolver().name == "ddim"


def test_flow_grid_from_t1(schedules, mixture):
    """At t = 1 (alpha = 0) the first step is DDIM as x' = alpha' x0 + sigma' eps; RK in rho refuses."""
    schedule = schedules["flow"]
    grid = flow_shift(schedule, 8, shift=3.0)
    for variant in MULTISTEP:
        plan = DEISSolver(variant, 3).prepare(schedule, grid)
        assert plan.a[0] == 0 and plan.w_x0[0, 0] == 1 - grid[1] and plan.w_eps[0, 0] == grid[1]
        assert list(plan.info["degrees"][:4]) == [0, 0, 1, 2]
        out = sample(
            mixture.model_fn(schedule, "flow_prediction"),
            torch.zeros(4, 6),
            schedule,
            DEISSolver(variant, 3),
            grid,
            "flow_prediction",
        )
        assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="alpha > 0"):
        DEISSolver("rhork", 2).prepare(schedule, grid)


@pytest.mark.parametrize("n", [4, 10])
def test_ipndm_matches_diffusers_ipndm(n, mixture):
    """Our iPNDM (order 4) against diffusers' ``IPNDMScheduler``, a v-prediction model on the VP sigmas it is given.

    ``trained_betas`` is that scheduler's sigma per step (n + 1 values, alpha = sqrt(1 - sigma^2)); its update
    alpha' ((x - sigma eps) / alpha) + sigma' eps with Adams-Bashforth eps weights 1; 3/2, -1/2; ... is ours in rho
    (``DEISScheduler`` with ``deis_variant="ipndm"``, ``solver_order=4``). Its default sigmas start at alpha = 0,
    where it divides by max(alpha, 1e-8) and so drops x0-hat from the first step; ours starts there with DDIM.
    """
    from diffusers import IPNDMScheduler

    schedule = LinearVP()
    grid = uniform_t(schedule, n, t_start=0.6, t_end=0.05, final_zero=True)
    scheduler = IPNDMScheduler(trained_betas=schedule.sigma(grid).tolist())
    scheduler.set_timesteps(n)
    model = mixture.model_fn(schedule, "v_prediction")
    x = torch.from_numpy(mixture.prior_sample(4, schedule, t_start=grid[0], seed=0)).float()
    y = x.clone()
    for t, ts in zip(grid[:-1], scheduler.timesteps, strict=True):
        y = scheduler.step(model(y, float(t)), ts, y).prev_sample
    ours = sample(model, x.double(), schedule, DEISSolver("ipndm", 4), grid, "v_prediction")
    exact = torch.from_numpy(mixture.ode_solve(x.double().numpy(), schedule, grid[0], 0.0))
    assert _rel(ours, y) < 2e-6 and _rel(ours, exact) > 1e-3  # same update, and not merely both exact
    third = sample(model, x.double(), schedule, DEISSolver("ipndm", 3), grid, "v_prediction")
    assert _rel(third, y) > 1e-4  # the order-4 weights are what match


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_rhork_heun_matches_diffusers_heun(spacing, mixture):
    """rhoRK-Heun against diffusers' ``HeunDiscreteScheduler`` (Karras et al., arXiv 2206.00364, Alg. 1 without churn).

    Diffusers integrates y = x / alpha in sigma_ve = rho with Heun's rule and takes the step into sigma = 0 as
    Euler; ours takes that one with the midpoint rule (no model call at t = 0), so the comparison stops before it.
    The model is called at our t of diffusers' sigma, so both see the same noise levels. (``DEISScheduler`` with
    ``deis_variant="rhork"``, ``solver_order=2``.)
    """
    from diffusers import HeunDiscreteScheduler

    n = 8
    scheduler = HeunDiscreteScheduler(beta_schedule="linear", timestep_spacing=spacing)
    scheduler.set_timesteps(n)
    schedule = DiscreteVP(scheduler.alphas_cumprod.double().numpy())
    model = mixture.model_fn(schedule)
    sigmas = scheduler.sigmas.double().numpy()[::2][:n]  # the n step starts (the sigmas are interleaved)
    grid = schedule.t_of_sigma_ve(sigmas)
    y0 = torch.from_numpy(mixture.prior_sample(4, schedule, t_start=grid[0], seed=0)).float() / schedule.alpha(grid[0])
    y = y0.clone()
    for ts in scheduler.timesteps[: 2 * (n - 1)]:
        x_in = scheduler.scale_model_input(y, ts)  # x = y / sqrt(1 + sigma^2) = alpha y
        sigma = float(scheduler.sigmas[scheduler.step_index])
        y = scheduler.step(model(x_in, float(schedule.t_of_sigma_ve(sigma))), ts, y).prev_sample
    x_start = (y0 * schedule.alpha(grid[0])).double()
    ours = sample(model, x_start, schedule, DEISSolver("rhork", 2), grid) / schedule.alpha(grid[-1])
    exact = torch.from_numpy(mixture.ode_solve(x_start.numpy(), schedule, grid[0], grid[-1])) / schedule.alpha(grid[-1])
    assert _rel(ours, y) < 2e-6 and _rel(ours, exact) > 1e-4  # same update, and not merely both exact
