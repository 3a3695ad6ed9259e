"""torchmetrics drop-in: the cases of torchmetrics' own FID tests, run on fastsample's metric.

Mirrors Lightning-AI/torchmetrics tests/unittests/image/test_fid.py (eval mode, pickling, error messages,
same input, reset, normalize, too few samples, set_dtype, antialias) plus plot() and value parity with
torchmetrics' metric on the same random-weight Inception. Feature 64 (the Inception stem) keeps them fast.
"""

import pickle

import pytest
import torch
from torch import nn

from fastsample.fid.inception import FIDInceptionV3
from fastsample.fid.metric import FrechetInceptionDistance, KernelInceptionDistance

W = "random"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "inception.pth"
    torch.save(FIDInceptionV3("random").state_dict(), path)
    return path


def _u8(seed, n=3, lo=0, hi=255, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (n, 3, size, size), dtype=torch.uint8, generator=g)


class _Flat(nn.Module):
    """torchmetrics' dummy extractor: a linear map of the flattened uint8 image."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3 * 16 * 16, 8)

    def forward(self, img):
        return self.lin((img / 125.5).float().flatten(1))


def _fid(metric, real, fake):
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def test_no_train_keeps_values():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.metric = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=W)

    model = Model()
    before = _fid(model.metric, _u8(0), _u8(1, lo=50))
    model.metric.reset()
    model.train()
    assert model.training and model.metric.training
    assert not model.metric.inception.training, "the feature network must stay in eval mode"
    assert _fid(model.metric, _u8(0), _u8(1, lo=50)) == pytest.approx(before, rel=1e-12)


def test_pickle_round_trip():
    m = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=W)
    m.update(_u8(0), real=True)
    m.update(_u8(1), real=False)
    m2 = pickle.loads(pickle.dumps(m))
    assert float(m2.compute()) == float(m.compute())


def test_errors_match_torchmetrics():
    with pytest.raises(ValueError, match="Integer input to argument `feature` must be one of"):
        FrechetInceptionDistance(feature=2, feature_extractor_weights_path=W)
    with pytest.raises(TypeError, match="Got unknown input to argument `feature`"):
        FrechetInceptionDistance(feature=[1, 2])
    with pytest.raises(ValueError, match="Argument `normalize` expected to be a bool"):
        FrechetInceptionDistance(feature=64, normalize=1, feature_extractor_weights_path=W)
    with pytest.raises(ValueError, match="Argument `reset_real_features` expected to be a bool"):
        FrechetInceptionDistance(feature=64, reset_real_features=1, feature_extractor_weights_path=W)
    with pytest.raises(ValueError, match="conflicts with resize='pytorch-fid'"):
        FrechetInceptionDistance(feature=64, antialias=True, resize="pytorch-fid", feature_extractor_weights_path=W)
    with pytest.raises(ValueError, match="custom `feature` module"):
        FrechetInceptionDistance(feature=_Flat(), antialias=True, num_features=8)
    with pytest.raises(FileNotFoundError, match="FID Inception weights not found"):
        FrechetInceptionDistance(feature=64, feature_extractor_weights_path="/nonexistent/w.pth")


@pytest.mark.parametrize("feature", [64, "custom"])
def test_same_input_gives_zero(feature):
    if feature == "custom":  # feature dimension found by probing, as torchmetrics does
        m = FrechetInceptionDistance(feature=_Flat(), input_img_size=(3, 16, 16))
        assert m.num_features == 8
    else:
        m = FrechetInceptionDistance(feature=feature, feature_extractor_weights_path=W)
    for k in range(2):
        img = _u8(k, n=6, size=16)
        m.update(img, real=True)
        m.update(img, real=False)
    torch.testing.assert_close(m.real_features_sum, m.fake_features_sum, rtol=0, atol=0)
    torch.testing.assert_close(m.real_features_cov_sum, m.fake_features_cov_sum, rtol=0, atol=0)
    assert int(m.real_features_num_samples) == int(m.fake_features_num_samples) == 12
    assert abs(float(m.compute())) < 1e-6


@pytest.mark.parametrize("reset_real_features", [True, False])
def test_reset_real_features(reset_real_features):
    m = FrechetInceptionDistance(feature=64, reset_real_features=reset_real_features, feature_extractor_weights_path=W)
    m.update(_u8(0, n=2), real=True)
    m.update(_u8(1, n=2), real=False)
    assert m.real_features_sum.shape == (64,) and m.real_features_cov_sum.shape == (64, 64)
    m.reset()
    assert int(m.fake_features_num_samples) == 0
    assert int(m.real_features_num_samples) == (0 if reset_real_features else 2)


@pytest.mark.parametrize("normalize", [True, False])
def test_normalize(normalize):
    m = FrechetInceptionDistance(feature=64, normalize=normalize, feature_extractor_weights_path=W)
    img = torch.rand(2, 3, 32, 32)
    if normalize:
        m.update(img, real=True)
        assert int(m.real_features_num_samples) == 2
    else:
        with pytest.raises(ValueError, match="Expecting image as torch.Tensor with dtype=torch.uint8"):
            m.update(img, real=True)
    m.update(_u8(0, n=2), real=False)  # uint8 is accepted either way


def test_not_enough_samples():
    m = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=W)
    m.update(_u8(0, n=1), real=True)
    m.update(_u8(0, n=1), real=False)
    with pytest.raises(RuntimeError, match="More than one sample is required for both the real and fake"):
        m.compute()


def test_set_dtype_then_update():
    m = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=W)
    ref = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=W)
    assert m.set_dtype(torch.float64) is m
    assert m.inception(_u8(0, n=1)).dtype == torch.float64
    value = _fid(m, _u8(0), _u8(1, lo=50))
    assert m.real_features_sum.dtype == torch.float64
    assert value == pytest.approx(_fid(ref, _u8(0), _u8(1, lo=50)), rel=1e-4)
    m.set_dtype(torch.half)  # casts the network only: the float64 sums are not rounded
    assert m.real_features_cov_sum.dtype == torch.float64 and float(m.compute()) == value
    with pytest.raises(ValueError, match="floating dtype"):
        m.set_dtype(torch.long)


@pytest.mark.parametrize("antialias", [True, False])
def test_antialias_matches_torchmetrics(antialias, weights_file):
    tm = pytest.importorskip("torchmetrics.image.fid")
    pytest.importorskip("torch_fidelity")
    ours = FrechetInceptionDistance(feature=64, antialias=antialias, feature_extractor_weights_path=weights_file)
    assert ours.identity["resize_mode"] == ("torchmetrics" if antialias else "torch-fidelity")
    theirs = tm.FrechetInceptionDistance(feature=64, antialias=antialias, feature_extractor_weights_path=weights_file)
    real, fake = _u8(0, n=6, size=40), _u8(1, n=6, lo=60, size=40)
    torch.testing.assert_close(ours.inception(real), theirs.inception(real), rtol=1e-5, atol=1e-5)
    assert _fid(ours, real, fake) == pytest.approx(_fid(theirs, real, fake), rel=1e-5)


def test_plot():
    pytest.importorskip("matplotlib")
    m = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=W)
    values = []
    for k in range(2):
        values.append(_fid(m, _u8(k), _u8(10 + k, lo=50)))
        m.reset()
    fig, ax = m.plot([torch.tensor(v) for v in values])
    assert len(ax.lines) == 1 and list(ax.lines[0].get_ydata()) == pytest.approx(values)
    m.update(_u8(0), real=True)
    m.update(_u8(1), real=False)
    fig, ax = m.plot()
    assert fig is not None
    kid = KernelInceptionDistance(feature=64, subsets=2, subset_size=3, feature_extractor_weights_path=W)
    kid.update(_u8(0), real=True)
    kid.update(_u8(1, lo=50), real=False)
    fig, ax = kid.plot()
    assert fig is not None
