"""Batch-size independence: the same images in different batch sizes give the same features and metrics.

Stated tolerance: features agree to 1e-5 of their largest magnitude (float32 kernels may pick other
algorithms for other batch shapes), the metrics to 1e-6 relative; the streaming float64 sums and the
seeded subsamples add no batch dependence of their own (see test_fid_more_metrics for the subsample).
"""

import pytest
import torch
from tiny_pipelines import save_tiny_clip_vision

from fastsample.fid import FeatureStatistics, FIDInceptionV3, fid_from_statistics
from fastsample.fid.suite import MetricSuite


def _images(seed, n=5, size=20, lo=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _close(a, b, tol=1e-5):
    assert (a - b).abs().max() <= tol * b.abs().max()


@pytest.mark.slow
def test_inception_features_and_fid_batch_independent():
    net = FIDInceptionV3("random")
    real, fake = _images(0, n=3), _images(1, n=3, lo=60)
    feats, fids = [], []
    for split in ([1, 1, 1], [3]):
        f_real = torch.cat([net(chunk) for chunk in real.split(split)])
        f_fake = torch.cat([net(chunk) for chunk in fake.split(split)])
        a, b = FeatureStatistics(), FeatureStatistics()
        for chunk in f_real.split(split):
            a.update(chunk)
        for chunk in f_fake.split(split):
            b.update(chunk)
        feats.append(f_real)
        fids.append(fid_from_statistics(a, b))
    _close(feats[1], feats[0])
    assert fids[1] == pytest.approx(fids[0], rel=1e-6)


def test_hf_encoders_and_sampled_metrics_batch_independent(tmp_path):
    torch.manual_seed(0)
    save_tiny_clip_vision(tmp_path / "clip")
    real, fake = _images(2, n=12), _images(3, n=12, lo=60)
    results = []
    for split in ([1] * 12, [5, 7], [12]):
        suite = MetricSuite(["cmmd"], clip=str(tmp_path / "clip"), max_samples=8)  # 8 < 12: subsampled
        for chunk in real.split(split):
            suite.update(chunk, real=True)
        for chunk in fake.split(split):
            suite.update(chunk, real=False)
        results.append(suite.compute())
        assert results[-1]["cmmd_samples"] == 8
    for r in results[1:]:
        assert r["cmmd"] == pytest.approx(results[0]["cmmd"], rel=1e-6)
