"""torchmetrics FID/KID metrics with a custom feature network; KID and IS parity with the reference tools."""

import numpy as np
import pytest
import torch
from torch import nn

from fastsample.fid.kid import inception_score, kernel_inception_distance, poly_mmd2
from fastsample.fid.metric import FrechetInceptionDistance, KernelInceptionDistance
from fastsample.fid.stats import FeatureStatistics


class TinyNet(nn.Module):
    """A digits-classifier-like penultimate layer: (B, 1 or 3, 8, 8) float -> (B, 6)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 36, 6))

    def forward(self, x):
        return self.net(x.float().expand(-1, 3, -1, -1))


def _images(seed, n=64, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 8, 8, generator=g) + shift).clamp(0, 1)


def test_fid_metric_parity_with_torchmetrics():
    tm = pytest.importorskip("torchmetrics.image.fid")
    net = TinyNet()
    ours = FrechetInceptionDistance(feature=net, input_img_size=(3, 8, 8), normalize=True)
    ref = tm.FrechetInceptionDistance(feature=net, input_img_size=(3, 8, 8), normalize=True)
    assert ours.num_features == 6
    for k in range(3):
        for m in (ours, ref):
            m.update(_images(k), real=True)
            m.update(_images(10 + k, shift=0.2), real=False)
    assert float(ours.compute()) == pytest.approx(float(ref.compute().double()), rel=1e-5)
    np.testing.assert_allclose(ours.real_features_cov_sum.numpy(), ref.real_features_cov_sum.numpy(), rtol=1e-10)


def test_fid_metric_reset_and_cached_reference(tmp_path):
    net = TinyNet()
    m = FrechetInceptionDistance(feature=net, reset_real_features=False, num_features=6)
    with pytest.raises(RuntimeError, match="More than one sample"), pytest.warns(UserWarning, match="before"):
        m.compute()
    m.update(_images(0), real=True)
    m.update(_images(1, shift=0.3), real=False)
    first = float(m.compute())
    ref_obj = m._ref_cache
    m.reset()
    assert int(m.fake_features_num_samples) == 0 and int(m.real_features_num_samples) == 64
    m.update(_images(1, shift=0.3), real=False)
    assert float(m.compute()) == pytest.approx(first, rel=1e-12)
    assert m._ref_cache is ref_obj  # the real side was factored once
    real = m.real_statistics()
    real.save(tmp_path / "real.npz")
    fixed = FrechetInceptionDistance(feature=net, num_features=6)
    fixed.set_reference(tmp_path / "real.npz")
    fixed.update(_images(1, shift=0.3), real=False)
    assert float(fixed.compute()) == pytest.approx(first, rel=1e-9)
    with pytest.raises(RuntimeError, match="set_reference"):
        fixed.update(_images(0), real=True)
    other = FeatureStatistics(6, feature_network="inception-pool3", resize_mode="pytorch-fid").update(torch.randn(9, 6))
    with pytest.raises(ValueError, match="feature_network mismatch"):
        fixed.set_reference(other)


def test_fid_metric_rejects_bad_feature():
    with pytest.raises(TypeError, match="nn.Module"):
        FrechetInceptionDistance(feature="inception")


def _feats(seed, n, d=8, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_kid_parity():
    kid = pytest.importorskip("torchmetrics.image.kid")
    x, y = _feats(0, 50), _feats(1, 50, shift=0.3)
    ours = float(poly_mmd2(x, y))
    assert ours == pytest.approx(float(kid.poly_mmd(x, y)), rel=1e-10)
    cleanfid = pytest.importorskip("cleanfid.fid")
    assert ours == pytest.approx(cleanfid.kernel_distance(x.numpy(), y.numpy(), 1, 50), rel=1e-10)
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=50)
    assert mean == pytest.approx(ours, rel=1e-10) and std < 1e-12
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(x, y, subset_size=51)


def test_kid_metric_bounded_features():
    net = TinyNet()
    m = KernelInceptionDistance(feature=net, subsets=5, subset_size=20, max_features=100)
    m.update(_images(0), real=True)
    with pytest.warns(UserWarning, match="max_features"):
        m.update(_images(1), real=True)
    assert sum(f.shape[0] for f in m.real_features) == 100
    m.update(_images(2, shift=0.5), real=False)
    mean, std = m.compute()
    assert mean > 0 and std >= 0


def test_inception_score_parity():
    isc = pytest.importorskip("torch_fidelity.metric_isc")
    logits = _feats(3, 100, d=12) * 3
    ref = isc.isc_features_to_metric(logits, splits=10, shuffle=False)
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-9)
    uniform = torch.zeros(20, 5)
    assert inception_score(uniform, splits=2)[0] == pytest.approx(1.0)


def test_fid_metric_builtin_inception_float_and_uint8_agree():
    m = FrechetInceptionDistance(feature=64, feature_extractor_weights_path="random", normalize=True)
    assert m.identity == {"feature_network": "inception-64", "resize_mode": "pytorch-fid", "dim": 64}
    u8 = (_images(0, n=3) * 255).round().to(torch.uint8)
    m.update(u8, real=True)
    m.update(u8.float() / 255, real=False)  # float in [0, 1]: rounded back to the same uint8 levels
    torch.testing.assert_close(m.real_features_cov_sum, m.fake_features_cov_sum, rtol=0, atol=0)
    assert abs(float(m.compute())) < 1e-6
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update(u8.float(), real=False)
