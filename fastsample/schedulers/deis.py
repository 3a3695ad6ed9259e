"""``DEISScheduler``: the DEIS family (Zhang & Chen, arXiv 2204.13902) as a drop-in Diffusers scheduler.

Variants (config key ``deis_variant``): ``tab`` (Lagrange extrapolation of eps in t), ``rhoab``
(in rho = sigma / alpha), ``logrho`` (in log rho, diffusers' ``DEISMultistepScheduler``),
``rhork`` (Runge-Kutta in rho: Heun, Kutta-3, RK4) and ``ipndm``. ``solver_order`` is the global
order: polynomial degree + 1 for the multistep variants, the RK order for ``rhork``.
Every run ends at sigma = 0 unless ``final_sigmas_type="sigma_min"``.
"""

from __future__ import annotations

from ..adapter import FastScheduler
from ..solvers.deis import DEISSolver


class DEISScheduler(FastScheduler):
    config_keys = {"solver_order": 3, "deis_variant": "tab"}

    def make_solver(self):
        return DEISSolver(variant=self.config.deis_variant, order=self.config.solver_order)
