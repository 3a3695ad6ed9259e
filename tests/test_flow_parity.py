"""Flow solvers against their Diffusers counterparts: same sigmas in, same trajectory out (float32 round-off).

- ``solver="heun"`` vs ``FlowMatchHeunDiscreteScheduler`` (Heun in t, Euler into sigma = 0).
- ``solver="multistep2"`` vs ``DPMSolverMultistepScheduler`` with flow sigmas (DPM-Solver++(2M), Lu et
  al., arXiv 2211.01095), at 15 and more steps, where Diffusers' ``lower_order_final`` rule leaves every
  step but the last (into sigma = 0, first order in both) alone. Not ``multistep3``: Diffusers' 3M
  weights its second-derivative term by half its exact Taylor weight (the S3 builtin ``dpmsolver++3m``
  reproduces it, tests/test_usf.py); ours uses the exact weight: ``test_multistep3_exact_weight_is_third_order``
  fits both orders against the exact ODE solution.

The model is the exact velocity of a Gaussian mixture (``GaussianMixture.model_fn``), float32 in and out.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchHeunDiscreteScheduler, UniPCMultistepScheduler

from fastsample import RectifiedFlowScheduler, S3Scheduler
from fastsample.core.analytic import GaussianMixture
from fastsample.core.grids import karras, uniform_lambda
from fastsample.core.schedules import LinearVP, RectifiedFlow
from fastsample.solvers.multistep import ExpMultistepSolver
from fastsample.solvers.sampling import sample
from fastsample.solvers.usf.builtins import builtin, dpmsolver_multistep
from fastsample.solvers.usf.executor import USFSolver

MIX = GaussianMixture.random(dim=8, components=3, seed=4)
VELOCITY = MIX.model_fn(RectifiedFlow(), "flow_prediction")


def _run(scheduler, x):
    """The model at each evaluation's noise level ``sigmas[i]`` (Diffusers' DPM-Solver rounds its timestep labels)."""
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(VELOCITY(x, float(scheduler.sigmas[i])), t, x).prev_sample
    return x


def _start():
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("n", [4, 10])
def test_heun_matches_flowmatch_heun(n):
    ref = FlowMatchHeunDiscreteScheduler()
    ref.set_timesteps(n)
    ours = RectifiedFlowScheduler.from_config(ref.config, solver="heun")
    ours.set_timesteps(sigmas=ref.sigmas.numpy()[::2][:n])  # Diffusers repeats each inner level for its 2nd stage
    np.testing.assert_allclose(ours.timesteps.numpy(), ref.timesteps.numpy(), atol=1e-3)
    torch.testing.assert_close(_run(ours, _start()), _run(ref, _start()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [15, 25])
def test_multistep2_matches_dpmsolver_multistep_with_flow_sigmas(n):
    order = 2
    ref = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", solver_order=order, final_sigmas_type="zero"
    )
    ref.set_timesteps(n)
    ours = RectifiedFlowScheduler(solver=f"multistep{order}")
    ours.set_timesteps(sigmas=ref.sigmas.numpy()[:-1])
    np.testing.assert_allclose(ours.sigmas.numpy(), ref.sigmas.numpy(), atol=1e-7)
    torch.testing.assert_close(_run(ours, _start()), _run(ref, _start()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("final_zero", [False, True])
@pytest.mark.parametrize("schedule", [LinearVP(), RectifiedFlow()])
def test_multistep_solver_is_the_dpmsolver_builtin(schedule, final_zero):
    """One statement of DPM-Solver++(2M): the solver and the S3 builtin ``dpmsolver++2m`` (without Diffusers'
    lower-order final steps) give identical tensors; 3M likewise with the exact third-order weight."""
    grid = karras(schedule, 9, 0.99, 0.05, final_zero=final_zero)
    x = torch.from_numpy(MIX.prior_sample(4, schedule, t_start=0.99, seed=1))
    model = MIX.model_fn(schedule)
    for order, sched in (
        (2, builtin("dpmsolver++2m", 9, lower_order_final=False, final_zero=final_zero)),
        (3, dpmsolver_multistep(9, 3, lower_order_final=False, final_zero=final_zero, exact_third_order=True)),
    ):
        ours = sample(model, x, schedule, ExpMultistepSolver(order), grid)
        assert torch.equal(ours, sample(model, x, schedule, USFSolver(sched), grid))


@pytest.mark.slow
def test_multistep3_exact_weight_is_third_order():
    """Fitted order against the exact ODE solution (linear VP, uniform lambda, 96-384 steps): the exact
    second-derivative weight (ours) is third order; Diffusers' half weight falls toward second order."""
    schedule, steps = LinearVP(), (96, 192, 384)
    x = MIX.prior_sample(8, schedule, t_start=1.0, seed=0)
    ref = MIX.ode_solve(x, schedule, 1.0, 0.03)

    def slopes(exact):
        errs = []
        for n in steps:
            sched = dpmsolver_multistep(n, 3, lower_order_final=False, final_zero=False, exact_third_order=exact)
            grid = uniform_lambda(schedule, n, 1.0, 0.03)
            y = sample(MIX.model_fn(schedule), torch.from_numpy(x), schedule, USFSolver(sched), grid)
            errs.append(np.abs(y.numpy() - ref).max())
        return -np.diff(np.log(errs)) / np.diff(np.log(steps))

    assert np.all(slopes(True) > 2.9)
    assert np.all(slopes(False) < 2.5)


@pytest.mark.parametrize("n", [4, 5, 6, 8])
def test_unipc_bh2_from_sigma_one_matches_diffusers(n):
    """UniPC-bh2 (arXiv 2302.04867) on a flow grid starting exactly at t = 1 (lambda = -inf): the first step's
    corrector is the h -> inf limit x_1 = (sigma_1 / sigma_0) x_0 + alpha_1 (m_0 + m_1) / 2, as in Diffusers'
    UniPC given sigma = 1 (dropping it, as before, was 20-30% worse at NFE 4-6 on the demo flow model); the
    next steps take the limits of Diffusers' weights as that point's lag goes to infinity. Order 2 only: Diffusers'
    order-3 solve turns the infinite lag into NaN."""
    ref = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", solver_type="bh2")
    ref.set_timesteps(n)
    ref.sigmas[0] = 1.0  # Diffusers starts at float32 1 - 1e-6; from exactly 1 its arithmetic takes the limit
    ours = S3Scheduler.from_config(ref.config, builtin_schedule="unipc-bh2")
    ours.set_timesteps(sigmas=ref.sigmas.numpy()[:-1])
    np.testing.assert_allclose(ours.sigmas.numpy(), ref.sigmas.numpy(), atol=1e-7)
    torch.testing.assert_close(_run(ours, _start()), _run(ref, _start()), rtol=1e-5, atol=1e-5)
