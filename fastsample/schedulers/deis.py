"""``DEISScheduler``: the DEIS family (Zhang & Chen, arXiv 2204.13902) as a drop-in Diffusers scheduler.

Variants (config key ``deis_variant``): ``tab`` (Lagrange extrapolation of eps in t), ``rhoab``
(in rho = sigma / alpha), ``logrho`` (in log rho, diffusers' ``DEISMultistepScheduler``),
``rhork`` (Runge-Kutta in rho: Heun, Kutta-3, RK4) and ``ipndm``. ``solver_order`` is the global
order: polynomial degree + 1 for the multistep variants, the RK order for ``rhork``.
Every run ends at sigma = 0 unless ``final_sigmas_type="sigma_min"``. ``lower_order_final``
(diffusers' key and default) lowers the degree of the last two steps of runs under 15 steps,
which steadies trained networks at few steps; exact models prefer it off.
"""

from __future__ import annotations

from ..solvers.deis import DEISSolver
from .adapter import FastScheduler


class DEISScheduler(FastScheduler):
    config_keys = {"solver_order": 3, "deis_variant": "tab", "lower_order_final": True}

    def make_solver(self):
        c = self.config
        return DEISSolver(variant=c.deis_variant, order=c.solver_order, lower_order_final=c.lower_order_final)
