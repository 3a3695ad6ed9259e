"""Streaming float64 feature statistics (count, sum, sum of outer products) and their ``.npz`` files.

The mean and the unbiased covariance (``np.cov`` convention, divisor n - 1) follow from the three
sums, which add exactly across batches and processes: merging or an all-reduce of the sums gives
the statistics of the union to float64 round-off, without gathering features.

Files: ``mu`` and ``sigma`` (the keys pytorch-fid and clean-fid write and read, so their tools read
ours) plus metadata: ``format_version``, ``feature_network``, ``resize_mode``, ``dim``, ``count``.
Plain pytorch-fid / clean-fid files (``mu``, ``sigma`` only) load with unknown count and mode.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path
from .distance import ReferenceStatistics

__all__ = ["FORMAT_VERSION", "FeatureStatistics", "UNKNOWN", "accumulate_", "check_moments", "fid_from_statistics"]

FORMAT_VERSION = 1
UNKNOWN = "unknown"


def accumulate_(count: torch.Tensor, total: torch.Tensor, outer: torch.Tensor, features: torch.Tensor) -> None:
    """Add a batch of features (B, D) to the float64 sums in place: count (), total (D,), outer (D, D)."""
    if features.ndim != 2 or features.shape[1] != total.shape[0]:
        raise ValueError(f"features must have shape (B, {total.shape[0]}), got {tuple(features.shape)}")
    f = features.detach().to(device=total.device, dtype=torch.float64)
    count.add_(f.shape[0])
    total.add_(f.sum(0))
    outer.addmm_(f.mT, f)


class FeatureStatistics:
    """Running float64 statistics of (B, D) feature batches, kept on the features' device.

    Args:
        dim: feature dimension D; ``None`` to take it (and the device, unless given) from the first batch.
        device: device of the sums (default: the first batch's device, else the CPU).
        feature_network: name of the network that made the features (recorded in files, checked
            before two statistics are compared).
        resize_mode: image preprocessing used ("pytorch-fid", "clean-fid", "torch-fidelity", or any
            string for other networks); recorded and checked like ``feature_network``.

    Attributes ``count`` (0-d), ``sum`` (D,) and ``sum_outer`` (D, D) are float64 tensors. While at most D
    features have been added, they are also kept (float64, no more memory than ``sum_outer``) so that the
    Frechet distance takes the low-rank path (:meth:`ReferenceStatistics.from_features`); they are dropped
    once the count exceeds D, and by ``all_reduce`` and loading.
    """

    def __init__(
        self,
        dim: int | None = None,
        device: torch.device | str | None = None,
        feature_network: str = UNKNOWN,
        resize_mode: str = UNKNOWN,
    ):
        self.dim = None if dim is None else int(dim)
        self._device = torch.device(device) if device is not None else None
        self.count = self.sum = self.sum_outer = None
        if self.dim is not None:
            self._allocate(self.dim, self._device or torch.device("cpu"))
        self.feature_network = feature_network
        self.resize_mode = resize_mode
        self._count_known = True
        self._moments = None  # exact (mean, cov) of loaded files, used until the sums change
        self._reference = None
        self._kept, self._kept_rows = [], 0  # the features while there are at most dim of them, else None

    def _allocate(self, dim: int, device: torch.device) -> None:
        self.dim = dim
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @property
    def device(self) -> torch.device | None:
        return self.sum.device if self.sum is not None else self._device

    @property
    def n(self) -> int:
        """Number of features accumulated (a host sync)."""
        return 0 if self.count is None else int(self.count)

    def update(self, features: torch.Tensor) -> FeatureStatistics:
        """Accumulate features (B, D) of any float dtype (moved to the statistics' device)."""
        self._require_sums("update")
        if self.sum is None:
            if features.ndim != 2:
                raise ValueError(f"features must have shape (B, D), got {tuple(features.shape)}")
            self._allocate(features.shape[1], self._device or features.device)
        accumulate_(self.count, self.sum, self.sum_outer, features)
        self._keep([features])
        self._moments = self._reference = None
        return self

    def _keep(self, batches: list[torch.Tensor]) -> None:
        rows = self._kept_rows + sum(b.shape[0] for b in batches)
        if self._kept is None or rows > self.dim:
            self._kept = None
            return
        self._kept += [b.detach().to(device=self.device, dtype=torch.float64) for b in batches]
        self._kept_rows = rows

    @property
    def features(self) -> torch.Tensor | None:
        """The float64 (n, D) features while n <= D (see the class docstring), else None."""
        return torch.cat(self._kept) if self._kept else None

    def distance_to(self, reference: ReferenceStatistics) -> torch.Tensor:
        """Frechet distance from ``reference`` to these statistics (float64 0-d tensor; low-rank when n <= D)."""
        x = self.features
        if x is not None and x.shape[0] >= 2:
            return reference.distance_tensor_features(x)
        return reference.distance_tensor(self.mean, self.cov)

    def check_compatible(self, other: FeatureStatistics | dict) -> None:
        """Raise ValueError if ``other`` has another dimension, feature network or resize mode.

        ``other`` may be a metadata dict (see :meth:`metadata`). An unknown network or mode (a plain
        pytorch-fid / clean-fid file) matches anything, with a warning.
        """
        theirs = other.metadata() if isinstance(other, FeatureStatistics) else _canonical(other)
        dim = theirs.get("dim")
        if self.dim is not None and dim is not None and self.dim != dim:
            raise ValueError(f"feature dimension mismatch: {self.dim} vs {dim}")
        for field in ("feature_network", "resize_mode"):
            a, b = getattr(self, field), theirs.get(field, UNKNOWN)
            if a == UNKNOWN or b == UNKNOWN:
                if a != b:
                    warnings.warn(
                        f"comparing statistics whose {field} is unknown on one side ({a!r} vs {b!r}); "
                        "make sure both were computed the same way",
                        stacklevel=3,
                    )
            elif a != b:
                raise ValueError(
                    f"{field} mismatch: {a!r} vs {b!r}. Statistics made one way cannot be compared with "
                    f"features made another way; recompute one side with the same {field}."
                )

    def metadata(self) -> dict:
        """{"feature_network", "resize_mode", "dim"}: what must agree before two statistics are compared."""
        return {"feature_network": self.feature_network, "resize_mode": self.resize_mode, "dim": self.dim}

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Add another statistics object's sums into this one (same dimension, network and mode).

        Empty statistics with unknown network / mode take ``other``'s.
        """
        if self.sum is None:
            for field in ("feature_network", "resize_mode"):
                if getattr(self, field) == UNKNOWN:
                    setattr(self, field, getattr(other, field))
        self.check_compatible(other)
        self._require_sums("merge")
        other._require_sums("merge")
        if other.sum is None:
            return self
        if self.sum is None:
            self._allocate(other.dim, self._device or other.device)
        if other._kept is None:
            self._kept = None
        else:
            self._keep(other._kept)
        self.count += other.count.to(self.device)
        self.sum += other.sum.to(self.device)
        self.sum_outer += other.sum_outer.to(self.device)
        self._moments = self._reference = None
        return self

    def all_reduce(self, group=None) -> FeatureStatistics:
        """Sum the statistics over all processes (``torch.distributed``), in place; no-op when not initialised."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._require_sums("all_reduce")
            if self.sum is None:
                raise ValueError("all_reduce needs the feature dimension: pass dim= when a process may see no features")
            flat = torch.cat([self.count.view(1), self.sum, self.sum_outer.view(-1)])
            torch.distributed.all_reduce(flat, group=group)
            self.count.copy_(flat[0])
            self.sum.copy_(flat[1 : 1 + self.dim])
            self.sum_outer.copy_(flat[1 + self.dim :].view(self.dim, self.dim))
            self._moments = self._reference = self._kept = None
        return self

    @property
    def mean(self) -> torch.Tensor:
        """float64 (D,) mean."""
        if self._moments is not None:
            return self._moments[0]
        if self.sum is None or float(self.count) < 1:
            raise ValueError("no features accumulated")
        return self.sum / self.count

    @property
    def cov(self) -> torch.Tensor:
        """float64 (D, D) unbiased covariance (divisor n - 1, like ``np.cov``); needs at least 2 features."""
        if self._moments is not None:
            return self._moments[1]
        if self.count is None or float(self.count) < 2:
            raise ValueError(f"the covariance needs at least 2 features, got {float(self.count):g}")
        mu = self.mean
        c = (self.sum_outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return 0.5 * (c + c.mT)

    def reference(self) -> ReferenceStatistics:
        """The cached :class:`ReferenceStatistics` of these statistics (recomputed after updates)."""
        if self._reference is None:
            x = self.features
            if x is not None and x.shape[0] >= 2:
                self._reference = ReferenceStatistics.from_features(x)
            else:
                self._reference = ReferenceStatistics(self.mean, self.cov)
        return self._reference

    def to(self, device: torch.device | str) -> FeatureStatistics:
        """Move the sums to ``device`` (in place)."""
        self._device = torch.device(device)
        if self.sum is not None:
            self.count, self.sum, self.sum_outer = (t.to(device) for t in (self.count, self.sum, self.sum_outer))
        if self._kept:
            self._kept = [t.to(device) for t in self._kept]
        if self._moments is not None:
            self._moments = tuple(t.to(device) for t in self._moments)
        self._reference = None
        return self

    @classmethod
    def from_moments(cls, mu, sigma, count: int | None = None, **meta) -> FeatureStatistics:
        """Statistics with the given mean (D,) and unbiased covariance (D, D); ``count`` None means unknown.

        ``mean``/``cov`` return these exactly until an update or merge; with an unknown count,
        update/merge raise.
        """
        mu = torch.as_tensor(np.asarray(mu, dtype=np.float64))
        sigma = torch.as_tensor(np.asarray(sigma, dtype=np.float64))
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"expected mu (D,) and sigma (D, D), got {tuple(mu.shape)} and {tuple(sigma.shape)}")
        out = cls(mu.shape[0], **meta)
        n = 2.0 if count is None else float(count)
        out.count.fill_(n)
        out.sum.copy_(n * mu)
        out.sum_outer.copy_((n - 1) * sigma + n * torch.outer(mu, mu))
        out._count_known = count is not None
        out._moments = (mu, 0.5 * (sigma + sigma.mT))
        out._kept = None
        return out

    def _require_sums(self, what: str) -> None:
        if not self._count_known:
            raise ValueError(f"cannot {what}: these statistics were loaded without a sample count (mu/sigma only)")

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write ``mu``, ``sigma`` and metadata to an ``.npz`` file readable by pytorch-fid and clean-fid.

        ``metadata`` may set ``feature_network`` (alias ``features``) and ``resize_mode`` (alias ``resize``).
        Like ``np.savez``, adds '.npz' to a name without it; writes atomically; returns the path written.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        if metadata:
            meta = _canonical(metadata)
            self.feature_network = meta.get("feature_network", self.feature_network)
            self.resize_mode = meta.get("resize_mode", self.resize_mode)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            self._savez(f)
        return path

    def _savez(self, f) -> None:
        np.savez(
            f,
            mu=self.mean.cpu().numpy(),
            sigma=self.cov.cpu().numpy(),
            count=np.int64(self.n) if self._count_known else np.int64(-1),
            dim=np.int64(self.dim),
            feature_network=np.str_(self.feature_network),
            resize_mode=np.str_(self.resize_mode),
            format_version=np.int64(FORMAT_VERSION),
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: torch.device | str | None = None,
        feature_network: str | None = None,
        resize_mode: str | None = None,
    ) -> FeatureStatistics:
        """Read an ``.npz`` written by :meth:`save`, pytorch-fid or clean-fid.

        ``feature_network`` / ``resize_mode`` declare what a plain (metadata-free) file was made with;
        for our own files they must agree with the recorded values.

        Raises:
            ValueError: unreadable, truncated or corrupt file, missing keys, inconsistent shapes, or a
                declared mode that differs from the recorded one.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = set(data.files)
                if not {"mu", "sigma"} <= keys:
                    raise ValueError(f"{path}: not a statistics file (keys {sorted(keys)}; need 'mu' and 'sigma')")
                arrays = {k: np.array(data[k]) for k in keys}
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise ValueError(f"{path}: cannot read statistics file (truncated or corrupt?): {e}") from e
        except ValueError as e:
            if str(path) in str(e):
                raise
            raise ValueError(f"{path}: cannot read statistics file (truncated or corrupt?): {e}") from e
        mu, sigma = arrays["mu"], arrays["sigma"]
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path}: inconsistent shapes mu {mu.shape}, sigma {sigma.shape}")
        check_moments(mu, sigma, str(path))
        meta = {"feature_network": UNKNOWN, "resize_mode": UNKNOWN}
        count = None
        if "format_version" in arrays:
            version = int(arrays["format_version"])
            if version > FORMAT_VERSION:
                raise ValueError(
                    f"{path}: statistics format version {version} is newer than supported {FORMAT_VERSION}"
                )
            if int(arrays["dim"]) != mu.shape[0]:
                raise ValueError(f"{path}: recorded dim {int(arrays['dim'])} does not match mu {mu.shape}")
            meta = {k: str(arrays[k]) for k in meta}
            count = int(arrays["count"]) if int(arrays["count"]) >= 0 else None
        for field, declared in (("feature_network", feature_network), ("resize_mode", resize_mode)):
            if declared is None:
                continue
            if meta[field] not in (UNKNOWN, declared):
                raise ValueError(f"{path}: {field} is {meta[field]!r}, not the declared {declared!r}")
            meta[field] = declared
        out = cls.from_moments(mu, sigma, count=count, **meta)
        return out.to(device) if device is not None else out

    def __repr__(self) -> str:
        n = self.n if self._count_known else "unknown"
        return (
            f"FeatureStatistics(dim={self.dim}, count={n}, feature_network={self.feature_network!r}, "
            f"resize_mode={self.resize_mode!r}, device={self.device})"
        )


def check_moments(mu: np.ndarray, sigma: np.ndarray, name: str, tol: float = 1e-5) -> None:
    """Raise ValueError unless mu (D,) and sigma (D, D) are finite and sigma is a covariance.

    Symmetric: max |sigma - sigma^T| <= tol * max |sigma|; positive semi-definite: the smallest
    eigenvalue >= -tol * the largest (round-off of a float32-stored covariance passes).
    """
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mu or sigma contains NaN or inf")
    scale = float(np.abs(sigma).max()) if sigma.size else 0.0
    asym = float(np.abs(sigma - sigma.T).max()) if sigma.size else 0.0
    if asym > tol * scale:
        raise ValueError(f"{name}: sigma is not symmetric (max |sigma - sigma^T| = {asym:.3g}); not a covariance")
    if sigma.size:
        eig = np.linalg.eigvalsh(0.5 * (sigma + sigma.T))
        if eig[0] < -tol * max(eig[-1], 0.0) or (eig[-1] <= 0 and eig[0] < 0):
            raise ValueError(
                f"{name}: sigma is not positive semi-definite (smallest eigenvalue {eig[0]:.3g}, "
                f"largest {eig[-1]:.3g}); not a covariance"
            )


_ALIASES = {"features": "feature_network", "resize": "resize_mode"}


def _canonical(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        key = _ALIASES.get(k, k)
        if key not in ("feature_network", "resize_mode", "dim"):
            known = "feature_network (alias features), resize_mode (alias resize), dim"
            raise ValueError(f"unknown statistics metadata key {k!r}; known: {known}")
        out[key] = v if key == "dim" or v is None else str(v)
    return out


def fid_from_statistics(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """Frechet distance between two compatible statistics (``a``'s reference factor is cached on ``a``).

    Statistics read from files were checked by :func:`check_moments` on loading; here both must be finite.
    """
    a.check_compatible(b)
    for name, s in (("first", a), ("second", b)):
        if not (torch.isfinite(s.mean).all() and torch.isfinite(s.cov).all()):
            raise ValueError(f"the {name} statistics contain NaN or inf (non-finite features?)")
    return float(b.distance_to(a.reference()))
