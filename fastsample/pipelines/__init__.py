"""Diffusers pipeline classes shipped with fastsample (saved folders name them; see :mod:`.base`)."""

from .flowchef import FlowChefFluxPipeline, FlowChefStableDiffusion3Pipeline
from .rectified_flow import RectifiedFlowPipeline

__all__ = ["FlowChefFluxPipeline", "FlowChefStableDiffusion3Pipeline", "RectifiedFlowPipeline"]
