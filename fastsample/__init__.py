"""fastsample: few-step samplers for diffusion and flow models as drop-in Diffusers schedulers.

Layers, bottom up (see docs/design.md): :mod:`.core` (noise schedules, time grids, the parameterisation,
the exact Gaussian-mixture oracle), :mod:`.formats` (files solvers and schedulers read), :mod:`.solvers`
(float64 plans and the sampling loop), :mod:`.steering`, :mod:`.schedulers` (the Diffusers adapter and the
public schedulers), :mod:`.pipelines`; then the apps (:mod:`.fid`, :mod:`.sweep`, :mod:`.search`,
:mod:`.ems`, :mod:`.steps`, :mod:`.cli`) and :mod:`.demo`. Importing fastsample imports no app:
``fastsample.compute_ems`` loads :mod:`fastsample.ems` on first use (PEP 562 ``__getattr__``).
"""

from .core.analytic import GaussianMixture
from .formats.ems_file import EMS
from .schedulers import *  # noqa: F403
from .schedulers import __all__ as _schedulers
from .solvers.sampling import NonFiniteModelOutput, sample
from .steering.flowchef import FlowChef

__version__ = "0.1.0"
__all__ = ["EMS", "compute_ems", "FlowChef",  # noqa: F405 (compute_ems, recommend: __getattr__ below)
   "GaussianMixture", "NonFiniteModelOutput", "recommend", "sample", *_schedulers]


def __getattr__(name: str):
    """``fastsample.compute_ems`` and ``fastsample.recommend``: imported on first use, so that ``import
    fastsample`` loads no app (and no pipeline class)."""
    if name == "compute_ems":
        from .ems.estimation import compute_ems

        return compute_ems
    if name == "recommend":
        from .pipelines.recommend import recommend

        return recommend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
