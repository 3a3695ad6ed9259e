"""``model_fn(x, t, **kwargs)`` adapters (our notation: continuous t in (0, 1]) for Diffusers models.

- :func:`network_model_fn`: a Diffusers UNet (``UNet2DModel``, ``UNet2DConditionModel``: called with
  ``sample=``) or transformer (``SD3Transformer2DModel``, ``DiTTransformer2DModel``: ``hidden_states=``),
  at the timestep label of the noise schedule (1000 t for flows, N t - 1 for discrete VP models).
- :func:`from_pipeline`: the network, noise schedule, prediction type and flow shift of a loaded
  pipeline, as keyword arguments for :class:`~fastsample.steps.optimize.StepProblem`.
- :func:`demo`: the same for the shipped demo models (``"ddpm"`` or ``"flow"``).

Flux's transformer takes packed latents with position ids and is not covered (a clear error says so).
"""

from __future__ import annotations

import inspect

import torch

from ..core.model import time_labels
from ..core.schedules import schedule_for_config
from ..formats.ems_file import model_fingerprint

__all__ = ["network_model_fn", "from_pipeline", "demo"]


def network_model_fn(network: torch.nn.Module, noise_schedule):
    """``f(x, t, **kwargs) -> network output`` (x's dtype) for a Diffusers UNet or transformer."""
    if type(network).__name__.startswith("Flux"):
        raise ValueError(
            "Flux transformers take packed latents and position ids; wrap the model in your own "
            "model_fn(x, t, **kwargs) (see fastsample.steps.optimize.StepProblem)"
        )
    names = set(inspect.signature(network.forward).parameters)
    key = "sample" if "sample" in names else "hidden_states" if "hidden_states" in names else None
    if key is None:
        raise ValueError(f"{type(network).__name__}.forward takes neither `sample` nor `hidden_states`")

    @torch.no_grad()
    def f(x, t, **kwargs):
        out = network(**{key: x.to(network.dtype)}, timestep=time_labels(noise_schedule, t, x), **kwargs)
        out = out.sample if hasattr(out, "sample") else out[0]
        return out.to(x.dtype)

    return f


def from_pipeline(pipe, name: str | None = None) -> dict:
    """``model_fn``, ``noise_schedule``, ``prediction_type``, ``flow_shift``, ``time_shift_type`` and
    ``description`` (name and weight fingerprint) for a pipeline with a ``unet`` or ``transformer``."""
    network = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if network is None:
        raise ValueError(f"{type(pipe).__name__} has neither a `unet` nor a `transformer`")
    schedule, ptype = schedule_for_config(pipe.scheduler.config)
    cfg = pipe.scheduler.config
    return {
        "model_fn": network_model_fn(network, schedule),
        "noise_schedule": schedule,
        "prediction_type": ptype,
        "flow_shift": float(cfg.get("shift", cfg.get("flow_shift", 1.0))),
        "time_shift_type": cfg.get("time_shift_type", "exponential"),
        "description": {
            "name": name or getattr(pipe, "name_or_path", None) or type(pipe).__name__,
            "fingerprint": model_fingerprint(network),
            "network": type(network).__name__,
        },
    }


def demo(which: str) -> tuple[dict, tuple]:
    """(:func:`from_pipeline` arguments, sample shape) for the shipped demo ``"ddpm"`` or ``"flow"`` model."""
    from .. import demo as shipped

    loaders = {"ddpm": shipped.load_ddpm_pipeline, "flow": shipped.load_flow_pipeline}
    if which not in loaders:
        raise ValueError(f"unknown demo model {which!r}; allowed: {', '.join(loaders)}")
    pipe = loaders[which]()
    size = pipe.unet.config.sample_size
    return from_pipeline(pipe, name=f"fastsample demo {which}"), (pipe.unet.config.in_channels, size, size)
