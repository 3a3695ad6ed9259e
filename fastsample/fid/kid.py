"""Kernel Inception Distance and Inception Score.

KID (Binkowski et al., arXiv 1801.01401): the unbiased estimate of the squared maximum mean
discrepancy with the polynomial kernel k(x, y) = (gamma x.y + coef)^degree, gamma = 1 / D by
default, averaged over random subsets of equal size drawn without replacement from each set (as
torch-fidelity, clean-fid and torchmetrics do; 100 subsets of 1000 by default). Unlike FID it needs
the features themselves, not only their moments.

Inception Score (Salimans et al., arXiv 1606.03498): exp E_x KL(p(y|x) || p(y)) from classifier
logits, computed on ``splits`` consecutive chunks; mean and standard deviation over the chunks.
torch-fidelity and torchmetrics use the logits without the classifier bias (``logits_unbiased``,
:meth:`FIDInceptionV3.features_and_logits` with ``bias=False``).

CMMD (Jayasumana et al., arXiv 2401.09603): MMD^2 between CLIP image embeddings with the Gaussian RBF
kernel k(x, y) = exp(-|x - y|^2 / (2 sigma^2)), sigma = 10, times a scale of 1000 (:func:`rbf_mmd2`).
The paper's code (google-research/cmmd) uses the biased (V-statistic) estimate; ``unbiased=True``
drops the diagonal terms (the U-statistic), which has no O(1/n) bias.

All compute in float64. Standard deviations use ``ddof`` (0 like torch-fidelity and the original
code, 1 like torchmetrics).
"""

from __future__ import annotations

import torch

__all__ = ["inception_score", "kernel_inception_distance", "poly_mmd2", "rbf_mmd2"]


def poly_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0):
    """Unbiased MMD^2 between equal-size sets x, y (m, D) with the polynomial kernel; float64 0-d tensor."""
    if x.ndim != 2 or x.shape != y.shape or x.shape[0] < 2:
        raise ValueError(f"x and y must both be (m, D) with m >= 2, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    m = x.shape[0]
    g = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = (x @ x.T * g + coef) ** degree
    kyy = (y @ y.T * g + coef) ** degree
    kxy = (x @ y.T * g + coef) ** degree
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * kxy.sum() / (m * m)


def _rbf_kernel_sum(a: torch.Tensor, b: torch.Tensor, gamma: float, block: int = 2048) -> torch.Tensor:
    """sum_ij exp(-gamma |a_i - b_j|^2) in float64, in row blocks of ``block``."""
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    bn = b.square().sum(1)
    for i in range(0, a.shape[0], block):
        x = a[i : i + block]
        d2 = (x.square().sum(1)[:, None] + bn[None, :] - 2 * x @ b.T).clamp_min(0)
        total += torch.exp(-gamma * d2).sum()
    return total


def rbf_mmd2(
    x: torch.Tensor, y: torch.Tensor, sigma: float = 10.0, scale: float = 1000.0, unbiased: bool = True
) -> torch.Tensor:
    """scale * MMD^2 between x (n, D) and y (m, D) with the Gaussian RBF kernel of bandwidth sigma; float64 0-d.

    ``unbiased``: the U-statistic (diagonals of the within-set sums left out); else the V-statistic of
    the CMMD paper's code.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(x.shape[0], y.shape[0]) < 2:
        raise ValueError(f"x and y must be (n, D) and (m, D) with n, m >= 2, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.to(x.device).double()
    gamma = 1.0 / (2.0 * sigma**2)
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = _rbf_kernel_sum(x, x, gamma), _rbf_kernel_sum(y, y, gamma), _rbf_kernel_sum(x, y, gamma)
    if unbiased:  # k(x, x) = 1 on the diagonals
        within = (kxx - n) / (n * (n - 1)) + (kyy - m) / (m * (m - 1))
    else:
        within = kxx / n**2 + kyy / m**2
    return scale * (within - 2 * kxy / (n * m))


def kernel_inception_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    generator: torch.Generator | None = None,
    ddof: int = 0,
) -> tuple[float, float]:
    """KID mean and standard deviation over ``subsets`` random subsets of ``subset_size`` from each set.

    Args:
        real, fake: (N, D) and (M, D) features; both N and M must be at least ``subset_size``.
        generator: CPU generator for the subset draws (seeded for reproducibility).
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(real.shape)} and {tuple(fake.shape)}")
    n, m = real.shape[0], fake.shape[0]
    if subset_size > min(n, m) or subset_size < 2:
        raise ValueError(f"subset_size {subset_size} must be in [2, min(N, M)] with N = {n} real and M = {m} fake")
    vals = torch.empty(subsets, dtype=torch.float64)
    for i in range(subsets):
        ri = torch.randperm(n, generator=generator)[:subset_size].to(real.device)
        fi = torch.randperm(m, generator=generator)[:subset_size].to(fake.device)
        vals[i] = poly_mmd2(real[ri], fake[fi], degree, gamma, coef).cpu()
    return float(vals.mean()), float(vals.std(correction=ddof)) if subsets > ddof else 0.0


def inception_score(
    logits: torch.Tensor, splits: int = 10, shuffle: bool = False, generator=None, ddof: int = 0
) -> tuple[float, float]:
    """Inception Score mean and standard deviation from classifier logits (N, C).

    Chunk i is rows [i N // splits, (i + 1) N // splits), after a random permutation when ``shuffle``.
    """
    if logits.ndim != 2 or logits.shape[0] < splits:
        raise ValueError(f"logits must be (N, C) with N >= splits = {splits}, got {tuple(logits.shape)}")
    x = logits.double()
    n = x.shape[0]
    if shuffle:
        x = x[torch.randperm(n, generator=generator).to(x.device)]
    log_p = x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lp = log_p[i * n // splits : (i + 1) * n // splits]
        log_q = lp.exp().mean(0).log()
        scores.append((lp.exp() * (lp - log_q)).sum(1).mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(correction=ddof)) if splits > ddof else 0.0
