"""Noise-aware numbers: per-sample error against a reference solution, and bootstrap intervals.

- :func:`per_sample_rmse`: the error of each sample against a high-accuracy solution of the same noise.
- :func:`bootstrap_ci`: percentile bootstrap interval of a statistic over samples (Efron, 1979).
- :func:`fd_bootstrap`: a Frechet distance with a bootstrap interval over the generated samples.
- :func:`fd_difference`: the difference of two Frechet distances from the same noises, with a paired interval.

Used by ``fastsample sweep`` and by every benchmark (benchmarks/protocol.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["bootstrap_ci", "fd_bootstrap", "fd_difference", "per_sample_rmse"]


def per_sample_rmse(x, ref) -> np.ndarray:
    """Root mean square over all but the first (sample) axis: (B, ...) -> (B,) float64."""
    d = torch.as_tensor(x, dtype=torch.float64) - torch.as_tensor(ref, dtype=torch.float64)
    return d.reshape(len(d), -1).square().mean(1).sqrt().numpy()


def bootstrap_ci(
    values, stat: Callable[[np.ndarray], float] = np.mean, n_boot: int = 2000, level: float = 0.95, seed: int = 0
):
    """Percentile bootstrap interval of ``stat`` over the samples in ``values`` (resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    s = np.array([stat(v[i]) for i in idx])
    a = (1 - level) / 2
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))


def fd_bootstrap(features, reference, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> dict:
    """Frechet distance of ``features`` (n, D) to ``reference`` and a bootstrap interval over the generated
    samples (the reference fixed). ``reference``: (m, D) reference features or a ``ReferenceStatistics``.

    A resample repeats samples, which shrinks its covariance and biases its distance upwards (strongly when n is
    not much larger than D), so the percentile interval of the resampled distances is shifted by that bias
    (their median minus the distance): the interval keeps the resampling spread around the distance itself.
    """
    from .distance import ReferenceStatistics

    ref = reference
    if not isinstance(ref, ReferenceStatistics):
        ref = ReferenceStatistics.from_features(torch.as_tensor(reference, dtype=torch.float64))
    f = torch.as_tensor(features, dtype=torch.float64)
    fd = float(ref.distance_tensor_features(f))
    rng = np.random.default_rng(seed)
    boot = np.array([float(ref.distance_tensor_features(f[rng.integers(0, len(f), len(f))])) for _ in range(n_boot)])
    ci, bias = _shifted_interval(fd, boot, level)
    return {"fd": fd, "ci95": ci, "resampling_bias": bias, "n": len(f), "n_boot": n_boot}


def fd_difference(features, exact, reference, n_boot: int, level: float, seed: int = 0) -> dict:
    """FD(features) - FD(exact) to ``reference`` (a ``ReferenceStatistics``) and a paired bootstrap interval.

    ``features`` and ``exact`` (n, D) come from the same n noises (row i from noise i), so each resample draws the
    same rows from both (Efron, 1979): the interval holds the sampling noise both distances share, which separate
    intervals would count twice. Shifted by the resampling bias, as in :func:`fd_bootstrap`.
    """
    f, e = torch.as_tensor(features, dtype=torch.float64), torch.as_tensor(exact, dtype=torch.float64)
    if f.shape != e.shape:
        raise ValueError(f"paired features need the same shape, got {tuple(f.shape)} and {tuple(e.shape)}")
    diff = float(reference.distance_tensor_features(f) - reference.distance_tensor_features(e))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        i = torch.from_numpy(rng.integers(0, len(f), len(f)))
        boot.append(float(reference.distance_tensor_features(f[i]) - reference.distance_tensor_features(e[i])))
    return {"value": diff, "ci95": _shifted_interval(diff, np.asarray(boot), level)[0]}


def _shifted_interval(value: float, boot: np.ndarray, level: float) -> tuple[list[float], float]:
    """([lo, hi], bias): the percentile interval of the resampled statistics ``boot`` shifted by their bias (their
    median minus ``value``), so that it keeps the resampling spread around ``value`` itself."""
    bias = float(np.median(boot)) - value
    a = (1 - level) / 2
    return [float(np.quantile(boot, a)) - bias, float(np.quantile(boot, 1 - a)) - bias], bias
