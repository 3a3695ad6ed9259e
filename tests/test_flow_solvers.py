"""Flow solvers (fastsample.solvers.flow) and RectifiedFlowScheduler: order, parity, grids, conventions."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from fastsample.core import grids
from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import RectifiedFlow
from fastsample.schedulers import RectifiedFlowScheduler
from fastsample.solvers.base import History
from fastsample.solvers.flow import FLOW_SOLVERS, make_flow_solver
from fastsample.solvers.multistep import ExpMultistepSolver
from fastsample.solvers.sampling import sample

FLOW = RectifiedFlow()
ORDERS = {"euler": 1, "heun": 2, "midpoint": 2, "rk3": 3, "rk4": 4, "multistep2": 2, "multistep3": 3}
T_END = 0.05


@pytest.fixture(scope="module")
def problem():
    """A 4-D mixture, 8 exact prior samples at t = 0.999 and their exact ODE ends at t = 0.05."""
    mix = GaussianMixture.random(dim=4, components=3, seed=1)
    x = mix.prior_sample(8, FLOW, t_start=0.999, seed=0)
    return {"mix": mix, 0.999: (x, mix.ode_solve(x, FLOW, 0.999, T_END))}


def _error(problem, name, grid):
    x, ref = problem[float(grid[0])]
    model = problem["mix"].model_fn(FLOW, "flow_prediction")
    out = sample(model, torch.from_numpy(x), FLOW, make_flow_solver(name), grid, prediction_type="flow_prediction")
    return float(np.sqrt(np.mean((out.numpy() - ref) ** 2)))


def _slope(problem, name, t0, grid_fn, steps):
    errs = [_error(problem, name, grid_fn(FLOW, n, t_start=t0, t_end=T_END)) for n in steps]
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["heun", "rk4"])
def test_runge_kutta_keeps_order_from_t1(problem, name):
    """Runge-Kutta in t starts at t = 1 (alpha = 0) without a first-order start step."""
    if 1.0 not in problem:
        x = problem["mix"].prior_sample(8, FLOW, t_start=1.0, seed=0)
        problem[1.0] = (x, problem["mix"].ode_solve(x, FLOW, 1.0, T_END))
    slope, errs = _slope(problem, name, 1.0, grids.uniform_t, [12, 16, 24, 32])
    assert slope >= ORDERS[name] - 0.3, (slope, errs)


def test_multistep3_is_exact_for_quadratic_x0():
    """3M is exact for x0 quadratic in lambda (x' = (sigma'/sigma) x + alpha' int e^{lambda - lambda'} x0 dlambda).

    This pins the second-difference weight alpha' (1 - 2 phi), phi = (h - 1 + e^{-h}) / h^2.
    """
    from scipy.integrate import quad

    grid = np.array([0.9, 0.7, 0.55, 0.4, 0.3, 0.2])
    plan = ExpMultistepSolver(3).prepare(FLOW, grid)
    lam = FLOW.lambda_(grid)

    def f(v):
        return 1.0 + 0.3 * v - 0.2 * v * v

    xs, errs = [0.37], []
    for i in range(len(grid) - 1):
        integral = quad(lambda v: np.exp(v) * f(v), lam[i], lam[i + 1], epsabs=1e-14)[0]
        exact = grid[i + 1] * (xs[i] / grid[i] + integral)
        hist = [torch.tensor([v], dtype=torch.float64) for v in xs]
        x0 = [torch.tensor([f(v)], dtype=torch.float64) for v in lam[: i + 1]]
        errs.append(abs(plan.step(i, History(hist, x0, x0)).item() - exact))
        xs.append(exact)
    # warm-up steps of order 1 and 2 (not exact for a quadratic: the check can fail), then order 3, exact
    assert plan.info["orders"].tolist() == [1, 2, 3, 3, 3]
    assert min(errs[:2]) > 1e-6 and max(errs[2:]) < 1e-12, errs


@pytest.mark.parametrize("name", FLOW_SOLVERS)
def test_final_step_to_zero_never_evaluates_at_zero(name):
    solver = make_flow_solver(name)
    grid = grids.flow_shift(FLOW, 5, shift=3.0)
    plan = solver.plan(FLOW, grid)
    assert plan.eval_times.min() > 0 and plan.eval_times[0] == 1.0
    assert plan.nfe == solver.nfe(5, final_zero=True)
    assert plan.nfe == {"heun": 9, "midpoint": 10, "rk3": 15, "rk4": 19}.get(name, 5)


@pytest.mark.parametrize("shift,mu", [(1.0, None), (3.0, None), (1.0, 0.8)])
def test_euler_parity_with_flowmatch_euler(shift, mu):
    """Same sigmas in, same trajectory out (float32 round-off) on a linear toy velocity field."""
    ref = FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=mu is not None)
    ours = RectifiedFlowScheduler.from_config(ref.config, solver="euler")
    n = 8
    ref.set_timesteps(n, mu=mu)
    base = ref.sigmas.numpy()[:-1] if mu is None and shift == 1.0 else np.linspace(1.0, 1.0 / n, n)
    if mu is None and shift == 1.0:
        ours.set_timesteps(sigmas=base)
    else:
        ref.set_timesteps(sigmas=base, mu=mu)
        ours.set_timesteps(sigmas=base, mu=mu)
    np.testing.assert_allclose(ours.sigmas.numpy(), ref.sigmas.numpy(), atol=1e-7)
    np.testing.assert_allclose(ours.timesteps.numpy(), ref.timesteps.numpy(), atol=1e-4)
    g = torch.Generator().manual_seed(0)
    xa = torch.randn(2, 4, 8, 8, generator=g)
    xb = xa.clone()
    w = 0.3 * torch.randn(4, 4, generator=g)
    for t in ref.timesteps:
        xa = ref.step(torch.einsum("ij,bjhw->bihw", w, xa) + t / 1000, t, xa).prev_sample
        xb = ours.step(torch.einsum("ij,bjhw->bihw", w, xb) + t / 1000, t, xb).prev_sample
    torch.testing.assert_close(xb, xa, rtol=1e-5, atol=1e-5)


def test_grid_is_shifted_once_and_ends_at_zero():
    s = RectifiedFlowScheduler(shift=3.0)
    s.set_timesteps(6)
    want = grids.shift_sigmas(np.linspace(1, 0, 7), shift=3.0)
    np.testing.assert_allclose(s.sigmas.numpy(), want, atol=1e-7)
    assert s.sigmas[-1] == 0 and s.sigmas[-2] > 0.1  # no wasted [..., 0.001, 0] step
    dyn = RectifiedFlowScheduler(use_dynamic_shifting=True, shift=3.0)
    with pytest.raises(ValueError, match="mu"):
        dyn.set_timesteps(6)
    dyn.set_timesteps(sigmas=np.linspace(1, 1 / 6, 6), mu=1.1)
    want = np.append(grids.shift_sigmas(np.linspace(1, 1 / 6, 6), mu=1.1), 0.0)  # mu only, shift ignored
    np.testing.assert_allclose(dyn.sigmas.numpy(), want, atol=1e-7)
    term = RectifiedFlowScheduler(shift=3.0, shift_terminal=0.1)
    term.set_timesteps(sigmas=np.linspace(1, 1 / 6, 6))
    assert term.sigmas[-2].item() == pytest.approx(0.1) and term.sigmas[0].item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", FLOW_SOLVERS)
def test_scheduler_matches_sampling_loop(problem, name):
    """The adapter's step() and fastsample.sample() run the same plan; x0 preview is returned."""
    mix = problem["mix"]
    x = torch.from_numpy(mix.prior_sample(4, FLOW, t_start=1.0, seed=3))
    sched = RectifiedFlowScheduler(solver=name)
    sched.set_timesteps(5)
    model = mix.model_fn(FLOW, "flow_prediction")
    y = x.clone()
    for k, t in enumerate(sched.timesteps):
        out = sched.step(model(y, float(sched.plan.eval_times[k])), t, y)
        assert out.pred_original_sample.shape == y.shape
        y = out.prev_sample
    want = sample(model, x, FLOW, make_flow_solver(name), sched.plan.grid, prediction_type="flow_prediction")
    torch.testing.assert_close(y, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("convention", ["rectified_flow", "instaflow"])
def test_velocity_conventions(problem, convention):
    """Liu's (noise at t = 0, v = data - noise) and InstaFlow's (negated v) models give the same samples."""
    mix = problem["mix"]
    model = mix.model_fn(FLOW, "flow_prediction")
    x = torch.from_numpy(mix.prior_sample(4, FLOW, t_start=1.0, seed=4))
    runs = {}
    for conv in ("diffusers", convention):
        sched = RectifiedFlowScheduler(solver="heun", velocity_convention=conv)
        sched.set_timesteps(4)
        y = x.clone()
        for t in sched.timesteps:
            label_time = float(t) / 1000  # the time the network sees: 1 - t for Liu's convention
            v = model(y, 1.0 - label_time if conv == "rectified_flow" else label_time)
            y = sched.step(v if conv == "diffusers" else -v, t, y).prev_sample
        runs[conv] = y
    torch.testing.assert_close(runs[convention], runs["diffusers"], rtol=0, atol=1e-12)


def test_bad_config():
    with pytest.raises(ValueError, match="solver"):
        RectifiedFlowScheduler(solver="rk45")
    with pytest.raises(ValueError, match="velocity_convention"):
        RectifiedFlowScheduler(velocity_convention="eps")
    from diffusers import DDPMScheduler

    with pytest.raises(ValueError, match="flow-matching"):
        RectifiedFlowScheduler.from_config(DDPMScheduler().config)


def test_config_round_trip(tmp_path):
    s = RectifiedFlowScheduler(shift=3.0, solver="rk4", velocity_convention="instaflow")
    s.save_pretrained(tmp_path)
    r = RectifiedFlowScheduler.from_pretrained(tmp_path)
    assert (r.config.shift, r.config.solver, r.config.velocity_convention, r.order) == (3.0, "rk4", "instaflow", 4)
    euler = FlowMatchEulerDiscreteScheduler.from_config(r.config)
    assert euler.config.shift == 3.0


@pytest.mark.slow
def test_demo_flow_pipeline_smoke():
    demo = pytest.importorskip("fastsample.demo")
    try:
        pipe = demo.load_flow_pipeline()
    except (AttributeError, FileNotFoundError) as e:
        pytest.skip(f"demo flow pipeline not available: {e}")
    pipe.scheduler = RectifiedFlowScheduler.from_config(pipe.scheduler.config, solver="multistep3")
    pipe.set_progress_bar_config(disable=True)
    img = pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert img.images.shape == (2, 1, 16, 16) and torch.isfinite(img.images).all()
