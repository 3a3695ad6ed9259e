"""Frechet distance between two Gaussians, as used by FID (Heusel et al., arXiv 1706.08500).

    d^2 = |mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr sqrt(C1^{1/2} C2 C1^{1/2})

The cross term is computed in the symmetric form: with S = C1^{1/2} (the symmetric eigh square root,
eigenvalues below round-off level set to 0), tr sqrt(S C2 S) is the sum of square roots of the
(likewise clipped) eigenvalues of the symmetric PSD matrix S C2 S. Any factor C1 = F F^T gives the
same eigenvalues (F^T C2 F is similar to C1 C2), so a positive definite C1 uses its Cholesky factor,
which is far cheaper than an eigendecomposition. This equals pytorch-fid's
tr sqrtm(C1 C2) (C1 C2 is similar to S C2 S) without a non-symmetric matrix square root, needs no
``scipy.linalg.sqrtm`` (whose ``disp`` argument scipy 1.18 removes) and is well defined for
singular covariances. Everything runs in float64 with ``torch.linalg.eigh``, on the GPU when the
inputs are CUDA tensors.

:class:`ReferenceStatistics` caches what depends on the reference set alone (mean, trace, factor), so
each further distance costs two (D, D) matrix products and one symmetric eigenvalue solve.

Low rank (a side with n <= D samples, e.g. FID-1k on 2048-dim features): the centred features give a
factor G = (X - mean)^T / sqrt(n - 1) of shape (D, n) with C = G G^T, so F^T C2 F is n x n (or, with
both sides as features, the cross term is the nuclear norm of the (n1, n2) matrix F^T G) and no D x D
eigenproblem is solved (:meth:`ReferenceStatistics.from_features`, :meth:`ReferenceStatistics.distance_tensor_features`,
:func:`frechet_distance_features`).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["centred_factor", "frechet_distance", "frechet_distance_features", "ReferenceStatistics", "sqrtm_psd"]


def _device_of(*xs) -> torch.device:
    for x in xs:
        if isinstance(x, torch.Tensor) and x.device.type != "cpu":
            return x.device
    return torch.device("cpu")


def _f64(x, device: torch.device) -> torch.Tensor:
    """Any array-like -> float64 tensor on ``device``."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), device=device)


def _check_pair(mu: torch.Tensor, cov: torch.Tensor, name: str) -> None:
    if mu.ndim != 1 or cov.ndim != 2 or cov.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: expected mean (D,) and covariance (D, D), got {tuple(mu.shape)} and {tuple(cov.shape)}"
        )
    if not (torch.isfinite(mu).all() and torch.isfinite(cov).all()):
        raise ValueError(f"{name}: mean or covariance contains NaN or inf")


def _sym(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + a.mT)


def _clip_eigenvalues(w: torch.Tensor) -> torch.Tensor:
    """Set eigenvalues below the round-off level D * eps * max|w| (negative ones included) to 0.

    Without this, exactly singular covariances give eigenvalues of size 1e-16 whose square roots
    (1e-8 each) add up to a visible error in the trace.
    """
    tol = w.shape[-1] * torch.finfo(w.dtype).eps * w.abs().amax(-1, keepdim=True)
    return torch.where(w > tol, w, torch.zeros_like(w))


def sqrtm_psd(cov) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD (D, D) matrix, float64 (round-off eigenvalues set to 0)."""
    c = _sym(_f64(cov, _device_of(cov)))
    w, v = torch.linalg.eigh(c)
    return _sym((v * _clip_eigenvalues(w).sqrt()) @ v.mT)


def centred_factor(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (n, D), n >= 2 -> float64 mean (D,) and G = (X - mean)^T / sqrt(n - 1) (D, n): cov = G G^T."""
    x = _f64(features, _device_of(features))
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must have shape (n, D) with n >= 2, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    mu = x.mean(0)
    return mu, (x - mu).mT / (x.shape[0] - 1) ** 0.5


def _sqrt_eig_sum(m: torch.Tensor) -> torch.Tensor:
    """Sum of square roots of the (round-off clipped) eigenvalues of the symmetric PSD matrix m."""
    return _clip_eigenvalues(torch.linalg.eigvalsh(_sym(m))).sqrt().sum()


class ReferenceStatistics:
    """Gaussian statistics of a reference set with everything the Frechet distance needs from it cached.

    The cache holds the mean, the trace and a factor F with C1 = F F^T: the Cholesky factor when C1 is
    positive definite (cheap), else the symmetric eigh square root S (any PSD C1, singular included),
    or, built by :meth:`from_features` from n <= D samples, the (D, n) centred features (``"low-rank"``).
    tr sqrt(C1^{1/2} C2 C1^{1/2}) is then the sum of square roots of the eigenvalues of the symmetric
    PSD matrix F^T C2 F, which has the nonzero eigenvalues of C1 C2: two products and one ``eigvalsh``.

    Args:
        mu: (D,) mean, numpy or torch.
        cov: (D, D) covariance, numpy or torch.
        device: where to keep the float64 cache (default: the inputs' device).
        factor: "auto" (Cholesky, falling back to eigh when C1 is not positive definite), "cholesky"
            (error if not positive definite) or "eigh".
    """

    def __init__(self, mu, cov, device: torch.device | str | None = None, factor: str = "auto"):
        if factor not in ("auto", "cholesky", "eigh"):
            raise ValueError(f"factor must be 'auto', 'cholesky' or 'eigh', got {factor!r}")
        dev = torch.device(device) if device is not None else _device_of(mu, cov)
        self.mu = _f64(mu, dev)
        self._cov = _sym(_f64(cov, dev))
        _check_pair(self.mu, self.cov, "reference statistics")
        self.trace = torch.trace(self.cov)
        self.factor_kind = "eigh"
        if factor != "eigh":
            chol, info = torch.linalg.cholesky_ex(self.cov)
            if int(info) == 0 and bool(torch.isfinite(chol).all()):
                self.factor, self.factor_kind = chol, "cholesky"
            elif factor == "cholesky":
                raise ValueError("reference covariance is not positive definite; use factor='eigh' or 'auto'")
        if self.factor_kind == "eigh":
            self.factor = sqrtm_psd(self.cov)

    @classmethod
    def from_features(cls, features, device: torch.device | str | None = None) -> ReferenceStatistics:
        """Reference statistics of features (n, D); with n <= D the factor is the (D, n) centred features.

        The low-rank cache never forms a D x D eigenproblem; its covariance is formed only on demand.
        """
        x = _f64(features, torch.device(device) if device is not None else _device_of(features))
        if x.ndim == 2 and x.shape[0] > x.shape[1]:
            return cls(x.mean(0), torch.cov(x.mT))
        out = cls.__new__(cls)
        out.mu, out.factor = centred_factor(x)
        out.factor_kind, out._cov = "low-rank", None
        out.trace = out.factor.square().sum()
        return out

    @property
    def cov(self) -> torch.Tensor:
        """float64 (D, D) covariance (formed from the factor on first use when the cache is low-rank)."""
        if self._cov is None:
            self._cov = _sym(self.factor @ self.factor.mT)
        return self._cov

    @property
    def sqrt_cov(self) -> torch.Tensor:
        """The symmetric square root C1^{1/2} (float64, computed on demand when the cache is a Cholesky factor)."""
        return self.factor if self.factor_kind == "eigh" else sqrtm_psd(self.cov)

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    @property
    def device(self) -> torch.device:
        return self.mu.device

    def distance_tensor(self, mu, cov) -> torch.Tensor:
        """Frechet distance to N(mu, cov) as a float64 0-d tensor on the cache's device (no host sync)."""
        mu2 = _f64(mu, self.device)
        cov2 = _sym(_f64(cov, self.device))
        _check_pair(mu2, cov2, "statistics")
        if mu2.shape[0] != self.dim:
            raise ValueError(f"feature dimension mismatch: reference has {self.dim}, statistics have {mu2.shape[0]}")
        f = self.factor
        tr_cross = _sqrt_eig_sum(f.mT @ cov2 @ f)
        diff = self.mu - mu2
        return diff.dot(diff) + self.trace + torch.trace(cov2) - 2.0 * tr_cross

    def distance_tensor_features(self, features) -> torch.Tensor:
        """Frechet distance to the Gaussian fitted to features (m, D) (unbiased covariance), float64 0-d tensor.

        With m <= D the other side stays low-rank: with its centred factor G (D, m), the cross term is the sum
        of square roots of the eigenvalues of the smaller Gram matrix of P = F^T G, so the largest
        eigenproblem is min(rank F, m) square.
        """
        x = _f64(features, self.device)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (m, {self.dim}), got {tuple(x.shape)}")
        if x.shape[0] > self.dim:
            return self.distance_tensor(x.mean(0), torch.cov(x.mT))
        mu2, g = centred_factor(x)
        p = self.factor.mT @ g
        tr_cross = _sqrt_eig_sum(p @ p.mT if p.shape[0] <= p.shape[1] else p.mT @ p)
        diff = self.mu - mu2
        return diff.dot(diff) + self.trace + g.square().sum() - 2.0 * tr_cross

    def distance(self, mu, cov) -> float:
        """Frechet distance to N(mu, cov) as a Python float."""
        return float(self.distance_tensor(mu, cov))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2).

    Args:
        mu1, mu2: (D,) means; cov1, cov2: (D, D) covariances. numpy arrays or torch tensors of any
            float dtype; computed in float64 on the GPU when any input is a CUDA tensor.

    Returns:
        The squared Frechet distance (what FID reports) as a Python float.
    """
    dev = _device_of(mu1, cov1, mu2, cov2)
    return ReferenceStatistics(mu1, cov1, device=dev).distance(mu2, cov2)


def frechet_distance_features(features1, features2) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (n1, D) and (n2, D).

    Equals ``frechet_distance`` of their means and unbiased covariances; a side with n <= D samples is
    kept as its (D, n) centred features, so FID-1k on 2048 dims solves no 2048 x 2048 eigenproblem.
    """
    return float(ReferenceStatistics.from_features(features1).distance_tensor_features(features2))
