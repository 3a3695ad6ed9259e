"""The network as the solvers see it: time labels, classifier-free guidance and the prediction type, in one place.

As DPM-Solver's ``model_wrapper`` (Lu et al., arXiv 2206.00927, App. D; github LuChengTHU/dpm-solver):

- time label: what the network is called with at time t, ``schedule.timestep(t)`` (Diffusers' discrete VP
  index N t - 1, a continuous VP's 1000 t, a flow's 1000 sigma or reversed rectified-flow labels), as a
  float tensor (B,) on x's device;
- guidance: classifier-free guidance (Ho & Salimans, arXiv 2207.12598), uncond + scale (cond - uncond), the
  unconditional and conditional outputs from one batch of 2B;
- prediction type: the (guided) output -> (x0-hat, eps-hat) by :func:`~.parameterization.to_x0_eps`.

Shapes: x (B, *S); the output has x's shape; arithmetic as :func:`~.parameterization.to_x0_eps` does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .parameterization import check_prediction_type, to_x0_eps

__all__ = ["ModelWrapper", "guide", "time_labels"]


def time_labels(schedule, t: float, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The network's time label at time t for every sample of x: (B,) ``dtype`` on x's device."""
    return torch.full((len(x),), float(schedule.timestep(t)), dtype=dtype, device=x.device)


def guide(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (arXiv 2207.12598): uncond + scale (cond - uncond)."""
    return uncond + scale * (cond - uncond)


class ModelWrapper:
    """A network ``net(x, labels, **kwargs) -> output`` as ``output(x, t)`` and ``x0_eps(x, t)``.

    Args:
        net: the network; ``labels`` are :func:`time_labels`; ``kwargs`` the conditioning.
        schedule: the noise schedule (alpha, sigma, labels).
        prediction_type: what ``net`` predicts (see :mod:`.parameterization`).
        guidance_scale: with ``uncond`` kwargs given, the network runs once on the batch [x, x] with
            [uncond, cond] conditioning (each kwarg concatenated along dim 0) and the outputs are guided.
    """

    def __init__(self, net: Callable, schedule, prediction_type: str = "epsilon", guidance_scale: float = 1.0):
        self.net, self.schedule, self.guidance_scale = net, schedule, float(guidance_scale)
        self.prediction_type = check_prediction_type(prediction_type, schedule.is_flow)

    def output(self, x: torch.Tensor, t: float, uncond: dict | None = None, **cond) -> torch.Tensor:
        """The network's (guided) output at time t."""
        labels = time_labels(self.schedule, t, x)
        if uncond is None:
            return self.net(x, labels, **cond)
        both = {k: torch.cat([uncond[k], v]) for k, v in cond.items()}
        eu, ec = self.net(torch.cat([x, x]), torch.cat([labels, labels]), **both).chunk(2)
        return guide(eu, ec, self.guidance_scale)

    def x0_eps(self, x: torch.Tensor, t: float, uncond: dict | None = None, **cond):
        """(x0-hat, eps-hat) at time t (working dtype: float32, or float64 for float64 x)."""
        out = self.output(x, t, uncond, **cond)
        s = self.schedule
        return to_x0_eps(out, x, float(s.alpha(t)), float(s.sigma(t)), self.prediction_type)
