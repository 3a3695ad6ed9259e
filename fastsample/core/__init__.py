"""Core math, the bottom layer: noise schedules, time grids, the parameterisation and the exact mixture oracle.

- :mod:`.schedules`: alpha_t, sigma_t, lambda_t and their inverses (VP, EDM, rectified flow).
- :mod:`.grids`: time grids by name (:func:`~.grids.make_grid`).
- :mod:`.parameterization`: model outputs <-> (x0, eps) for every prediction type.
- :mod:`.analytic`: :class:`~.analytic.GaussianMixture`, exact denoiser and probability-flow ODE solution.

Nothing here imports any other part of fastsample except :mod:`fastsample._io`.
"""
