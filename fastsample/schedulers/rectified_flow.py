"""``RectifiedFlowScheduler``: flow-model sampling (Liu et al., arXiv 2209.03003; SD3, arXiv 2403.03206) for Diffusers.

A drop-in for ``FlowMatchEulerDiscreteScheduler`` in SD3, Flux and other flow pipelines. Config keys
follow that class: ``shift`` (static shift, kept equal to the common key ``flow_shift``),
``use_dynamic_shifting`` with the ``mu`` the pipelines pass, ``time_shift_type``, ``shift_terminal``;
plus our own:

- ``solver``: ``euler`` | ``heun`` | ``midpoint`` | ``rk3`` | ``rk4`` | ``multistep2`` | ``multistep3``
  (:mod:`fastsample.solvers.flow`; every stage of a Runge-Kutta step is one pipeline call, and
  ``order`` is the number of calls per step, as diffusers' Heun scheduler reports it). Default
  ``multistep2``: one call per step, so ``num_inference_steps`` is the NFE, as pipelines assume;
  at equal NFE ``midpoint`` is often more accurate (benchmarks/results/flow.md).
- ``velocity_convention``: what the network predicts. ``diffusers``: v = eps - x0 at label 1000 t
  (SD3, Flux). ``rectified_flow``: Liu et al.'s code, noise at time 0, v = data - noise, label
  N (1 - t) (set ``num_train_timesteps=999`` for their ``t * 999`` labels). ``instaflow``:
  InstaFlow / PeRFlow on SD 1.5 (arXiv 2309.06380), label 1000 t and the negated velocity x0 - eps.

The time grid is computed once: without ``sigmas`` it is n equal steps in t from 1 to 0, shifted
once (no [..., 0.001, 0] end step, no second shift); explicit ``sigmas`` are shifted once, as
diffusers does, and a final 0 is appended. ``step()`` returns ``pred_original_sample``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.schedules import RectifiedFlow
from ..solvers.flow import FLOW_SOLVERS, make_flow_solver
from .adapter import FastScheduler

__all__ = ["RectifiedFlowScheduler", "VELOCITY_CONVENTIONS"]

VELOCITY_CONVENTIONS = ("diffusers", "rectified_flow", "instaflow")
_FLOW_CLASSES = ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler"]


class RectifiedFlowScheduler(FastScheduler):
    """Flow-ODE scheduler with Euler, Heun, midpoint, RK4 and multistep exponential-integrator solvers."""

    config_keys = {"shift": 1.0, "solver": "multistep2", "velocity_convention": "diffusers", "shift_terminal": None}
    _compatibles = _FLOW_CLASSES + ["RectifiedFlowScheduler"]
    supports_vp = False

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_config``; a diffusion (VP) scheduler's config is refused with a clear error."""
        if config is not None:
            config = dict(config)
            if not config.get("use_flow_sigmas", False) and (
                "beta_schedule" in config or "trained_betas" in config or "alphas_cumprod" in config
            ):
                raise ValueError(
                    f"RectifiedFlowScheduler is for flow-matching models; this is a diffusion (VP) scheduler's "
                    f"config ({config.get('_class_name', 'beta_schedule=' + str(config.get('beta_schedule')))})"
                )
            if "shift" not in config and "flow_shift" in config:
                config["shift"] = config["flow_shift"]
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def make_solver(self):
        return make_flow_solver(self.config.solver)

    def _configure(self):
        c = self.config
        if c.solver not in FLOW_SOLVERS:
            raise ValueError(f"unknown solver {c.solver!r}; allowed: {', '.join(FLOW_SOLVERS)}")
        if c.velocity_convention not in VELOCITY_CONVENTIONS:
            raise ValueError(
                f"unknown velocity_convention {c.velocity_convention!r}; allowed: {', '.join(VELOCITY_CONVENTIONS)}"
            )
        shift, flow_shift = float(c.shift), float(c.flow_shift)
        if shift != 1.0 and flow_shift != 1.0 and shift != flow_shift:
            raise ValueError(f"shift={shift} and flow_shift={flow_shift} disagree; pass one of them")
        shift = shift if shift != 1.0 else flow_shift
        self.register_to_config(use_flow_sigmas=True, prediction_type="flow_prediction", shift=shift, flow_shift=shift)
        super()._configure()
        self.schedule = RectifiedFlow(c.num_train_timesteps, reversed_labels=c.velocity_convention == "rectified_flow")

    @property
    def shift(self) -> float:
        return self.config.shift

    def make_grid(self, num_inference_steps: int, sigmas=None, timesteps=None, mu=None) -> np.ndarray:
        grid = super().make_grid(num_inference_steps, sigmas=sigmas, timesteps=timesteps, mu=mu)
        terminal = self.config.shift_terminal
        if terminal and timesteps is None:
            inner = grid[:-1] if grid[-1] == 0 else grid
            scale = (1.0 - inner[-1]) / (1.0 - float(terminal))
            inner[:] = 1.0 - (1.0 - inner) / scale
        return grid

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, **kwargs):
        """One solver stage; the model output is first mapped to diffusers' velocity eps - x0."""
        if self.config.velocity_convention != "diffusers":
            model_output = -model_output
        return super().step(model_output, timestep, sample, *args, **kwargs)
