"""Public Diffusers scheduler classes (thin files over :mod:`fastsample.schedulers.adapter`)."""

from .deis import DEISScheduler
from .dpmsolver_v3 import DPMSolverV3Scheduler
from .rectified_flow import RectifiedFlowScheduler
from .s3 import S3Scheduler

__all__ = ["DEISScheduler", "DPMSolverV3Scheduler", "RectifiedFlowScheduler", "S3Scheduler"]
