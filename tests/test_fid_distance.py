"""Frechet distance: parity with pytorch-fid and torchmetrics, rank-deficient covariances, caching."""

import numpy as np
import pytest
import torch

from fastsample.fid import ReferenceStatistics, frechet_distance, frechet_distance_features

pytorch_fid_score = pytest.importorskip("pytorch_fid.fid_score")


def _stats(rng, n, d, scale=1.0, shift=0.0):
    x = rng.normal(size=(n, d)) * scale + shift
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("n", [500, 40])  # n < d: rank-deficient covariances
def test_parity_pytorch_fid(n):
    rng = np.random.default_rng(0)
    m1, c1 = _stats(rng, n, 64)
    m2, c2 = _stats(rng, n, 64, 1.3, 0.2)
    ref = pytorch_fid_score.calculate_frechet_distance(m1, c1, m2, c2)
    ours = frechet_distance(m1, c1, m2, c2)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(torch.tensor(m1), torch.tensor(c1).float(), m2, c2) == pytest.approx(ref, rel=1e-5)


def test_parity_torchmetrics_compute():
    tm_fid = pytest.importorskip("torchmetrics.image.fid")
    rng = np.random.default_rng(1)
    m1, c1 = _stats(rng, 300, 32)
    m2, c2 = _stats(rng, 20, 32, 0.7)
    ref = float(tm_fid._compute_fid(*(torch.tensor(a) for a in (m1, c1, m2, c2))))
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-6)


def test_identical_and_singular():
    rng = np.random.default_rng(2)
    m, c = _stats(rng, 5, 16)  # rank 4
    assert abs(frechet_distance(m, c, m, c)) < 1e-10 * np.trace(c)
    z = np.zeros((16, 16))
    assert frechet_distance(m, z, m + 1.0, z) == pytest.approx(16.0)
    assert frechet_distance(m, z, m, c) == pytest.approx(np.trace(c))


@pytest.mark.parametrize("n1", [300, 10])  # positive definite (Cholesky factor) and singular (eigh fallback)
def test_factor_paths_agree(n1):
    rng = np.random.default_rng(4)
    m1, c1 = _stats(rng, n1, 24)
    m2, c2 = _stats(rng, 100, 24, 1.2)
    auto = ReferenceStatistics(m1, c1)
    assert auto.factor_kind == ("cholesky" if n1 > 24 else "eigh")
    eigh = ReferenceStatistics(m1, c1, factor="eigh")
    assert auto.distance(m2, c2) == pytest.approx(eigh.distance(m2, c2), rel=1e-9)
    assert auto.distance(m2, c2) == pytest.approx(
        pytorch_fid_score.calculate_frechet_distance(m1, c1, m2, c2), rel=1e-6
    )
    torch.testing.assert_close(auto.sqrt_cov @ auto.sqrt_cov, auto.cov, rtol=1e-8, atol=1e-10)
    if n1 <= 24:
        with pytest.raises(ValueError, match="not positive definite"):
            ReferenceStatistics(m1, c1, factor="cholesky")


def test_reference_cache_reuse():
    rng = np.random.default_rng(3)
    m1, c1 = _stats(rng, 200, 24)
    ref = ReferenceStatistics(m1, c1)
    for k in range(3):
        m2, c2 = _stats(rng, 100, 24, 1.0 + 0.1 * k)
        assert ref.distance(m2, c2) == pytest.approx(frechet_distance(m1, c1, m2, c2), rel=1e-12)


def test_bad_shapes():
    with pytest.raises(ValueError, match="factor must be"):
        ReferenceStatistics(np.zeros(3), np.eye(3), factor="svd")
    with pytest.raises(ValueError, match="dimension mismatch"):
        ReferenceStatistics(np.zeros(3), np.eye(3)).distance(np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="expected mean"):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full(3, np.nan), np.eye(3), np.zeros(3), np.eye(3))


def _relu_features(rng, n, d, shift=0.0):
    w = np.random.default_rng(99).normal(size=(d, d)) / d**0.5
    return np.maximum(rng.normal(size=(n, d)) @ w + shift, 0)


def _scipy_oracle(x1, x2):
    """Frechet distance in scipy: eigh square root of C1, eigenvalues of S C2 S, round-off eigenvalues set to 0."""
    import scipy.linalg as sl

    def clip(w):
        return np.where(w > len(w) * np.finfo(float).eps * np.abs(w).max(), w, 0.0)

    c1, c2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    w, v = sl.eigh(c1)
    s = (v * np.sqrt(clip(w))) @ v.T
    cross = np.sqrt(clip(sl.eigvalsh(s @ c2 @ s))).sum()
    return ((x1.mean(0) - x2.mean(0)) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * cross


@pytest.mark.parametrize(("n1", "n2"), [(20, 30), (30, 20), (200, 20), (20, 200), (100, 100)])
def test_low_rank_exact(n1, n2):
    rng = np.random.default_rng(5)
    x1, x2 = _relu_features(rng, n1, 64), _relu_features(rng, n2, 64, 0.1)
    ref = ReferenceStatistics.from_features(x1)
    assert ref.factor_kind == ("low-rank" if n1 <= 64 else "cholesky")
    ours = frechet_distance_features(x1, x2)
    assert ours == pytest.approx(_scipy_oracle(x1, x2), rel=1e-9)
    full = frechet_distance(x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False))
    assert ours == pytest.approx(full, rel=1e-9)
    assert float(ref.distance_tensor(x2.mean(0), np.cov(x2, rowvar=False))) == pytest.approx(ours, rel=1e-9)
    # pytorch-fid's scipy sqrtm of C1 C2 adds square roots of round-off eigenvalues: agreement to ~1e-7 only
    c1, c2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    assert ours == pytest.approx(pytorch_fid_score.calculate_frechet_distance(x1.mean(0), c1, x2.mean(0), c2), rel=1e-6)
    torch.testing.assert_close(ref.cov, torch.from_numpy(c1), rtol=1e-12, atol=1e-12)


def test_low_rank_statistics_path():
    from fastsample.fid import FeatureStatistics, fid_from_statistics

    rng = np.random.default_rng(6)
    x1, x2 = _relu_features(rng, 40, 64), _relu_features(rng, 20, 64, 0.2)
    a, b = FeatureStatistics(), FeatureStatistics()
    for k in range(0, 40, 16):
        a.update(torch.from_numpy(x1[k : k + 16]))
    b.update(torch.from_numpy(x2))
    assert a.features.shape == (40, 64) and a.reference().factor_kind == "low-rank"
    assert fid_from_statistics(a, b) == pytest.approx(_scipy_oracle(x1, x2), rel=1e-9)
    a.merge(b)
    assert a.features.shape == (60, 64)
    a.update(torch.from_numpy(x1))  # 100 > 64 rows: the features are dropped, the sums go on
    assert a.features is None and a.reference().factor_kind != "low-rank"
    with pytest.raises(ValueError, match="n >= 2"):
        frechet_distance_features(x1[:1], x2)
