"""scikit-learn's 8x8 digits (1,797 images, shipped inside scikit-learn) as a 16x16 image data set.

Images are scaled from 0..16 to [-1, 1] and upsampled bilinearly; the split into train and
held-out images is a fixed permutation, so every user gets the same held-out set. Held-out
images are for evaluation only (Frechet distance floor, classifier accuracy).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["DigitsData", "digits_split", "NUM_HELDOUT"]

NUM_HELDOUT = 300


class DigitsData(NamedTuple):
    """images: (N, 1, size, size) float32 in [-1, 1]; labels: (N,) int64 in 0..9."""

    images: torch.Tensor
    labels: torch.Tensor


def digits_split(size: int = 16, seed: int = 0, num_heldout: int = NUM_HELDOUT) -> tuple[DigitsData, DigitsData]:
    """(train, heldout) digits: 1,497 / 300 images for the defaults, split by a seeded permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    train, held = perm[:-num_heldout], perm[-num_heldout:]
    return DigitsData(x[train].contiguous(), y[train]), DigitsData(x[held].contiguous(), y[held])
