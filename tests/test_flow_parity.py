"""Flow solvers against their Diffusers counterparts: same sigmas in, same trajectory out (float32 round-off).

- ``solver="heun"`` vs ``FlowMatchHeunDiscreteScheduler`` (Heun in t, Euler into sigma = 0).
- ``solver="multistep2"`` vs ``DPMSolverMultistepScheduler`` with flow sigmas (DPM-Solver++(2M), Lu et
  al., arXiv 2211.01095), at 15 and more steps, where Diffusers' ``lower_order_final`` rule leaves every
  step but the last (into sigma = 0, first order in both) alone. Not ``multistep3``: Diffusers' 3M
  weights its second-derivative term differently (see :func:`fastsample.solvers.usf.builtins.dpmsolver_multistep`,
  which reproduces it); ours is order 3 on the exact ODE (tests/test_solver_registry.py).

The model is the exact velocity of a Gaussian mixture (``GaussianMixture.model_fn``), float32 in and out.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchHeunDiscreteScheduler

from fastsample import RectifiedFlowScheduler
from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import RectifiedFlow

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
