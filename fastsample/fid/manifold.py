"""k-NN manifold metrics and the bounded, seeded feature sample they are computed on.

- Precision and recall (Kynkaanniemi et al., arXiv 1904.06991): the real manifold is the union of
  balls around each real feature with radius the distance to its k-th nearest real neighbour;
  precision is the fraction of generated features inside it, recall the fraction of real features
  inside the generated manifold built the same way.
- Density and coverage (Naeem et al., arXiv 2002.09797): density = (1 / k) * mean over generated
  features of the number of real balls containing it; coverage = fraction of real features whose
  ball contains at least one generated feature.

Balls are open (distance < radius), as the authors' ``prdc`` package has them. These metrics need the
features themselves, so streaming keeps a uniform random subsample of at most ``capacity`` features
per side (:class:`Reservoir`, Vitter's algorithm R, seeded): the result is computed on that subsample,
not on every image, and depends only on the order of the images, not on the batch sizes.
Distances are float64, computed in row blocks so memory stays O(block x N).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Reservoir", "knn_radii", "precision_recall_density_coverage"]

_BLOCK = 1024


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x (N, D) to its k-th nearest other row (float64 (N,)); needs N > k."""
    if x.shape[0] <= k:
        raise ValueError(f"k-NN radii need more than k = {k} features, got {x.shape[0]}")
    x = x.double()
    return torch.cat([_cdist(x[i : i + _BLOCK], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), _BLOCK)])


def precision_recall_density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of fake (M, D) against real (N, D) features, k nearest neighbours."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(real.shape)} and {tuple(fake.shape)}")
    real, fake = real.double(), fake.double()
    r_real, r_fake = knn_radii(real, k), knn_radii(fake.to(real.device), k)
    in_real_balls = torch.zeros(fake.shape[0], dtype=torch.float64, device=real.device)  # per fake: real balls
    covered = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    recalled = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    fake = fake.to(real.device)
    for i in range(0, real.shape[0], _BLOCK):
        d = _cdist(real[i : i + _BLOCK], fake)  # (b, M)
        inside = d < r_real[i : i + _BLOCK, None]
        in_real_balls += inside.sum(0)
        covered[i : i + _BLOCK] = inside.any(1)
        recalled[i : i + _BLOCK] = (d < r_fake[None, :]).any(1)
    return {
        "precision": float((in_real_balls > 0).double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(in_real_balls.mean() / k),
        "coverage": float(covered.double().mean()),
    }


class Reservoir:
    """A uniform random subsample of at most ``capacity`` rows of a stream of (B, D) batches (algorithm R).

    Row i of the stream (0-based) is kept if i < capacity, else it replaces slot j ~ U{0..i} when
    j < capacity. The draws come from a numpy generator seeded with ``seed``, one per row in stream
    order, so the sample depends on the rows' order but not on how they are batched.
    """

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.seed = int(capacity), int(seed)
        self.reset()

    def reset(self) -> None:
        self.rows, self.seen, self._rng = None, 0, np.random.default_rng(self.seed)

    def add(self, batch: torch.Tensor) -> None:
        """Offer the rows of ``batch`` (B, D), in order."""
        batch = batch.detach()
        if self.rows is None:
            self.rows = batch[: self.capacity].clone()
        elif len(self.rows) < self.capacity:
            self.rows = torch.cat([self.rows, batch[: self.capacity - len(self.rows)]])
        start = max(0, self.capacity - self.seen)  # rows of this batch past the initial fill
        idx = np.arange(self.seen + start, self.seen + batch.shape[0])
        if len(idx):
            slots = np.floor(self._rng.random(len(idx)) * (idx + 1)).astype(np.int64)
            for row, slot in zip(idx[slots < self.capacity] - self.seen, slots[slots < self.capacity]):
                self.rows[slot] = batch[row]
        self.seen += batch.shape[0]

    @property
    def subsampled(self) -> bool:
        """Whether rows were dropped (more than ``capacity`` seen)."""
        return self.seen > self.capacity
