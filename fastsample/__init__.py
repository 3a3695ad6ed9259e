"""fastsample: few-step samplers for diffusion and flow models as drop-in Diffusers schedulers.

Layers (see docs/design.md): noise schedules (:mod:`.schedules`), time grids (:mod:`.grids`), the
parameterisation (:mod:`.parameterization`), solvers as float64 plans (:mod:`.solvers`),
steering hooks, the Diffusers adapter (:mod:`.adapter`) and the public schedulers
(:mod:`.schedulers`). :mod:`.analytic` holds exact Gaussian-mixture models for testing.
"""

from .analytic import GaussianMixture
from .ems import EMS, compute_ems
from .flowchef import FlowChef
from .sampling import NonFiniteModelOutput, sample
from .schedulers import *  # noqa: F403
from .schedulers import __all__ as _schedulers

__version__ = "0.1.0"
__all__ = ["EMS", "compute_ems", "FlowChef", "GaussianMixture", "NonFiniteModelOutput", "sample", *_schedulers]
