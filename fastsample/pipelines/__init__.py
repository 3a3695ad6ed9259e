"""Diffusers pipeline classes shipped with fastsample."""

from .rectified_flow import RectifiedFlowPipeline

__all__ = ["RectifiedFlowPipeline"]
