"""Public Diffusers scheduler classes (thin files over :mod:`fastsample.adapter`)."""

from .deis import DEISScheduler

__all__ = ["DEISScheduler"]
