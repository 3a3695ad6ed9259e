"""DDIM (Song et al., arXiv 2010.02502): DEIS of polynomial degree 0 (Zhang & Chen, arXiv 2204.13902).

x_{t'} = (alpha_{t'} / alpha_t) x_t + alpha_{t'} (rho_{t'} - rho_t) eps_t with rho = sigma / alpha. Order 1,
one model call per step; the final step to sigma = 0 returns x0-hat exactly. The math lives in
:mod:`.deis` (every multistep DEIS variant of degree 0 is this update).
"""

from __future__ import annotations

from .deis import DEISSolver

__all__ = ["DDIMSolver"]


class DDIMSolver(DEISSolver):
    """DDIM as ``DEISSolver("tab", order=1)``."""

    def __init__(self):
        super().__init__("tab", 1)
        self.name = "ddim"

    def __repr__(self) -> str:
        return "DDIMSolver()"
