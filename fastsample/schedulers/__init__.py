"""Public Diffusers scheduler classes (thin files over :mod:`fastsample.adapter`)."""

from .deis import DEISScheduler
from .dpmsolver_v3 import DPMSolverV3Scheduler
from .rectified_flow import RectifiedFlowScheduler

__all__ = ["DEISScheduler", "DPMSolverV3Scheduler", "RectifiedFlowScheduler"]
