"""Core layers: schedules, grids, parameterisation and the analytic oracle."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from fastsample.core import grids
from fastsample.core.analytic import GaussianMixture
from fastsample.core.parameterization import check_prediction_type, from_x0_eps, to_x0_eps
from fastsample.core.schedules import EDM, DiscreteVP, LinearVP, RectifiedFlow, betas_for_schedule

SCHEDULES = [
    DiscreteVP.from_betas(betas_for_schedule("linear")),
    DiscreteVP.from_betas(betas_for_schedule("scaled_linear", beta_start=0.00085, beta_end=0.012)),
    LinearVP(),
    EDM(),
    RectifiedFlow(),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.describe()["family"])
def test_lambda_inverse_round_trip(schedule):
    t = np.linspace(max(schedule.t_min, 0.01), 0.99, 37)
    np.testing.assert_allclose(schedule.t_of_lambda(schedule.lambda_(t)), t, rtol=0, atol=1e-10)
    np.testing.assert_allclose(schedule.t_of_timestep(schedule.timestep(t)), t, atol=1e-12)


def test_vp_schedules_are_variance_preserving():
    for s in SCHEDULES[:3]:
        t = np.linspace(0.001, 1, 50)
        np.testing.assert_allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, 1.0, atol=1e-12)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_vp_matches_diffusers(beta_schedule):
    ref = DDPMScheduler(beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012)
    s = DiscreteVP.from_config(ref.config)
    n = np.arange(1000)
    acp = ref.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(s.alpha(s.t_of_timestep(n)) ** 2, acp, rtol=1e-6)
    assert s.alpha(0.0) == 1.0 and s.sigma(0.0) == 0.0


def test_unknown_beta_schedule():
    with pytest.raises(ValueError, match="allowed"):
        betas_for_schedule("cubic")


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [5, 10, 25])
def test_diffusers_spacing_matches_dpmsolver(spacing, n):
    ref = DPMSolverMultistepScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    ref.set_timesteps(n)
    s = DiscreteVP.from_config(ref.config)
    grid = grids.diffusers_spacing(s, n, spacing, ref.config.steps_offset)
    np.testing.assert_array_equal(np.round(s.timestep(grid[:-1])).astype(int), ref.timesteps.numpy())
    assert grid[-1] == 0.0


@pytest.mark.parametrize("shift,mu", [(1.0, None), (3.0, None), (1.0, 0.8)])
def test_flow_shift_matches_flowmatch_with_sigmas(shift, mu):
    n = 8
    ref = FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=mu is not None)
    base = np.linspace(1.0, 1 / n, n)
    ref.set_timesteps(sigmas=base, mu=mu)
    ours = np.concatenate([grids.shift_sigmas(base, shift=shift, mu=mu), [0.0]])
    np.testing.assert_allclose(ours, ref.sigmas.numpy(), atol=1e-6)


@pytest.mark.parametrize("name", ["uniform_t", "quadratic_t", "uniform_lambda", "karras"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.describe()["family"])
def test_grids_are_decreasing_and_hit_ends(name, schedule):
    t0 = 0.999 if schedule.is_flow else 1.0
    g = grids.make_grid(name, schedule, 7, t_start=t0, t_end=0.05)
    assert len(g) == 8 and np.all(np.diff(g) < 0)
    assert g[0] == t0 and g[-1] == 0.05  # exactly (quadratic gave 0.999 + 1e-16)
    gz = grids.make_grid(name, schedule, 7, t_start=t0, t_end=0.05, final_zero=True)
    assert len(gz) == 8 and gz[-1] == 0.0 and gz[-2] == 0.05


def test_uniform_lambda_is_uniform():
    s = LinearVP()
    g = grids.uniform_lambda(s, 9, t_end=1e-3)
    np.testing.assert_allclose(np.diff(s.lambda_(g)), np.diff(s.lambda_(g))[0], rtol=1e-9)


def test_grid_errors():
    s = LinearVP()
    with pytest.raises(ValueError, match="allowed"):
        grids.make_grid("cosine", s, 5)
    with pytest.raises(ValueError, match="positive integer"):
        grids.uniform_t(s, 0)
    with pytest.raises(ValueError, match="decreasing"):
        grids.check_grid([0.5, 0.7, 0.0])
    with pytest.raises(ValueError, match="no NaN"):
        grids.check_grid([1.0, float("nan"), 0.0])
    assert grids.check_grid([1, 0.5, 0]).dtype == np.float64


@pytest.mark.parametrize("ptype", ["epsilon", "sample", "v_prediction", "flow_prediction"])
def test_parameterisation_round_trip(ptype):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    if ptype == "flow_prediction":
        alpha, sigma = 0.3, 0.7
    else:
        alpha, sigma = 0.6, 0.8
    x = alpha * x0 + sigma * eps
    x0h, epsh = to_x0_eps(from_x0_eps(x0, eps, alpha, sigma, ptype), x, alpha, sigma, ptype)
    torch.testing.assert_close(x0h, x0)
    torch.testing.assert_close(epsh, eps)


def test_prediction_type_errors():
    with pytest.raises(ValueError, match="allowed: epsilon, sample, v_prediction, flow_prediction"):
        check_prediction_type("score")
    with pytest.raises(ValueError, match="flow schedule"):
        check_prediction_type("flow_prediction", is_flow=False)
    assert check_prediction_type("flow", True) == "flow_prediction"


def test_single_gaussian_ode_has_closed_form():
    """For N(m, v I), y - m scales as sqrt(v + rho^2) along the ODE: an exact check of the oracle."""
    m, v = np.array([[0.5, -1.0, 2.0]]), 0.3
    gm = GaussianMixture(m, v)
    s = LinearVP()
    x = gm.prior_sample(6, s, seed=3)
    for t_end in (0.3, 0.02, 0.0):
        out = gm.ode_solve(x, s, 1.0, t_end)
        r0, r1 = s.sigma_ve(1.0), s.sigma_ve(t_end)
        y_end = m + (x / s.alpha(1.0) - m) * np.sqrt((v + r1**2) / (v + r0**2))
        np.testing.assert_allclose(out, s.alpha(t_end) * y_end, rtol=1e-9, atol=1e-10)


def test_denoiser_matches_quadrature():
    """E[x0 | x_t] against a direct 2-D quadrature of Bayes' rule over the mixture density."""
    gm = GaussianMixture.random(2, 3, seed=1)
    s = RectifiedFlow()
    t = 0.6
    a, sg = float(s.alpha(t)), float(s.sigma(t))
    u = np.linspace(-5, 5, 1201)
    g = np.stack(np.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    dens = sum(
        w * np.exp(-0.5 * ((g - m) ** 2 / v).sum(1)) / np.sqrt(np.prod(2 * np.pi * v))
        for w, m, v in zip(gm.weights, gm.means, gm.variances)
    )
    for q in ([0.2, -0.1], [1.0, 0.7]):
        like = np.exp(-0.5 * ((np.array(q) - a * g) ** 2).sum(1) / sg**2)
        quad = (dens * like) @ g / (dens * like).sum()
        exact = gm.denoise(torch.tensor([q], dtype=torch.float64), a, sg).numpy()[0]
        np.testing.assert_allclose(exact, quad, atol=1e-7)


def test_model_fn_types_agree():
    gm = GaussianMixture.random(3, 2, seed=0)
    s = LinearVP()
    x = torch.randn(5, 3, dtype=torch.float64)
    outs = {p: gm.model_fn(s, p)(x, 0.4) for p in ["epsilon", "sample", "v_prediction"]}
    a, sg = float(s.alpha(0.4)), float(s.sigma(0.4))
    x0s = [to_x0_eps(o, x, a, sg, p)[0] for p, o in outs.items()]
    for x0 in x0s[1:]:
        torch.testing.assert_close(x0, x0s[0])


# --- the model wrapper ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, ptype",
    [(DiscreteVP.from_betas(betas_for_schedule("linear")), p) for p in ("epsilon", "sample", "v_prediction")]
    + [(RectifiedFlow(), p) for p in ("epsilon", "sample", "v_prediction", "flow_prediction")],
)
def test_model_wrapper_gives_the_exact_x0_and_eps(schedule, ptype):
    """A network of each prediction type, called with the schedule's time labels, gives the mixture's exact
    E[x0 | x_t] and the matching eps (float64)."""
    from fastsample.core.model import ModelWrapper

    mix = GaussianMixture.random(dim=5, components=3, seed=2)
    exact = mix.model_fn(schedule, ptype)
    labels_seen = []

    def net(x, labels):
        labels_seen.append(labels)
        return exact(x, float(schedule.t_of_timestep(float(labels[0]))))

    x = torch.from_numpy(mix.prior_sample(6, schedule, t_start=0.6, seed=1))
    t = 0.6
    x0, eps = ModelWrapper(net, schedule, ptype).x0_eps(x, t)
    a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
    want = mix.denoise(x, a, s)
    torch.testing.assert_close(x0, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eps, (x - a * want) / s, rtol=1e-5, atol=1e-6)
    assert labels_seen[0].shape == (6,) and float(labels_seen[0][0]) == float(np.float32(schedule.timestep(t)))


def test_model_wrapper_classifier_free_guidance():
    """One network call on [x, x] with [uncond, cond]; output uncond + scale (cond - uncond), by hand."""
    from fastsample.core.model import ModelWrapper

    calls = []

    def net(x, labels, context):
        calls.append((x.shape, context.tolist()))
        return x * context[:, None] + labels[:, None] / 1000

    schedule = LinearVP()
    x = torch.randn(3, 4, dtype=torch.float64)
    cond, uncond = torch.full((3,), 2.0, dtype=torch.float64), torch.full((3,), -1.0, dtype=torch.float64)
    out = ModelWrapper(net, schedule, guidance_scale=7.5).output(x, 0.5, uncond={"context": uncond}, context=cond)
    label = float(np.float32(schedule.timestep(0.5))) / 1000
    eu, ec = -x + label, 2 * x + label
    torch.testing.assert_close(out, eu + 7.5 * (ec - eu))
    assert calls == [((6, 4), [-1.0, -1.0, -1.0, 2.0, 2.0, 2.0])]
