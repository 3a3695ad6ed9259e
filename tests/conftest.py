"""Shared fixtures: an analytic Gaussian-mixture oracle, the schedule families, and a sampling helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import EDM, DiscreteVP, LinearVP, RectifiedFlow, betas_for_schedule
from fastsample.solvers.sampling import sample


@pytest.fixture(scope="session")
def mixture() -> GaussianMixture:
    """A 6-D, 3-component diagonal Gaussian mixture (fixed seed)."""
    return GaussianMixture.random(dim=6, components=3, seed=0)


@pytest.fixture(scope="session")
def schedules() -> dict:
    """One instance of each schedule family, keyed by short name."""
    return {
        "discrete_vp": DiscreteVP.from_betas(betas_for_schedule("linear")),
        "linear_vp": LinearVP(),
        "edm": EDM(),
        "flow": RectifiedFlow(),
    }


def run_sampler(mixture, schedule, solver, grid, n: int = 8, seed: int = 0, dtype=torch.float64) -> np.ndarray:
    """Sample from ``grid[0]`` to ``grid[-1]`` with the exact eps model; returns (x_end, x_start) float64 numpy."""
    x = mixture.prior_sample(n, schedule, t_start=float(grid[0]), seed=seed)
    out = sample(mixture.model_fn(schedule), torch.from_numpy(x).to(dtype), schedule, solver, grid)
    return out.to(torch.float64).numpy(), x


@pytest.fixture(scope="session")
def sampler():
    """The :func:`run_sampler` helper, as a fixture so test modules need not import conftest."""
    return run_sampler
