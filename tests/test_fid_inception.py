"""FID InceptionV3: architecture and preprocessing parity with pytorch-fid, torch-fidelity and clean-fid."""

import numpy as np
import pytest
import torch

from fastsample.fid.inception import FIDInceptionV3, find_weights, images_to_uint8, no_tf32, resize_and_normalize


@pytest.fixture(scope="module")
def ours():
    return FIDInceptionV3("random")


@pytest.fixture(scope="module")
def weights_file(ours, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(ours.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, 3, 37, 45), dtype=torch.uint8, generator=g)


def _close(a, b, tol=1e-5):
    scale = b.abs().max().clamp_min(1.0)
    assert (a - b).abs().max() <= tol * scale, float((a - b).abs().max() / scale)


def test_parity_pytorch_fid(ours, images, monkeypatch):
    inception = pytest.importorskip("pytorch_fid.inception")
    state = {k: v for k, v in ours.state_dict().items()}
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: state)
    ref = inception.InceptionV3(output_blocks=[0, 1, 2, 3]).eval()
    with torch.no_grad():
        outs = [o.mean((2, 3)) for o in ref(images.float() / 255)]
    x = ours.preprocess(images)
    assert ours.resize == "pytorch-fid"
    with torch.no_grad():
        for dims, out in zip((64, 192, 768), outs):
            _close(ours.forward_normalized(x, dims), out)
    _close(ours(images), outs[3])


def test_parity_torch_fidelity(ours, images, weights_file):
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    ref = fe.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased", "logits"], feature_extractor_weights_path=str(weights_file)
    )
    with torch.no_grad():
        f2048, lu, lg = ref(images)
    model = FIDInceptionV3(weights_file, resize="torch-fidelity")
    feats, logits = model.features_and_logits(images)
    _close(feats, f2048)
    _close(logits, lg)
    _close(logits - model.fc.bias, lu)


def test_resize_matches_tools():
    pytest.importorskip("torch_fidelity")
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    g = torch.Generator().manual_seed(1)
    u8 = torch.randint(0, 256, (2, 3, 32, 40), dtype=torch.uint8, generator=g)
    tf = interpolate_bilinear_2d_like_tensorflow1x(u8.float(), size=(299, 299), align_corners=False)
    assert torch.equal(resize_and_normalize(u8, "torch-fidelity"), (tf - 128) / 128)
    resize = pytest.importorskip("cleanfid.resize")
    fn = resize.make_resizer("PIL", False, "bicubic", (299, 299))
    ref = np.stack([fn(im.permute(1, 2, 0).numpy()) for im in u8]).transpose(0, 3, 1, 2)
    ours = resize_and_normalize(u8, "clean-fid")
    assert torch.equal(ours, (torch.from_numpy(ref) - 128) / 128)
    pf = torch.nn.functional.interpolate(u8.float() / 255, size=(299, 299), mode="bilinear", align_corners=False)
    assert torch.equal(resize_and_normalize(u8, "pytorch-fid"), 2 * pf - 1)


def test_float_images_rounded_not_truncated():
    x = torch.tensor([0.0, 0.4 / 255, 0.6 / 255, 254.6 / 255, 1.0]).view(1, 1, 1, 5)
    assert images_to_uint8(x)[0, 0, 0].tolist() == [0, 0, 1, 255, 255]
    assert images_to_uint8(x * 2 - 1, input_range=(-1, 1))[0, 0, 0].tolist() == [0, 0, 1, 255, 255]
    gray = images_to_uint8(torch.rand(2, 1, 4, 4))
    assert gray.shape == (2, 3, 4, 4) and torch.equal(gray[:, 0], gray[:, 2])


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 3, 8, 8) * 255, r"\[0, 1\]"),
        (torch.rand(2, 3, 8, 8) * 2 - 1, r"\[0, 1\]"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int64), "dtype"),
        (torch.zeros(2, 4, 8, 8), "shape"),
        (torch.zeros(3, 8, 8), "shape"),
        (np.zeros((2, 3, 8, 8)), "torch.Tensor"),
    ],
)
def test_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        images_to_uint8(bad)


def test_tf32_disabled_and_restored(ours, monkeypatch):
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    seen = []

    def probe(self, x, dims=None):
        seen.append(tuple(b.fp32_precision for b in backends))
        return x.mean((2, 3))

    monkeypatch.setattr(FIDInceptionV3, "forward_normalized", probe)
    before = tuple(b.fp32_precision for b in backends)
    for b in backends:
        b.fp32_precision = "tf32"
    try:
        ours(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
        assert seen == [("ieee", "ieee")]
        assert all(b.fp32_precision == "tf32" for b in backends)
        with pytest.raises(RuntimeError), no_tf32():
            raise RuntimeError
        assert all(b.fp32_precision == "tf32" for b in backends)
    finally:
        for b, value in zip(backends, before):
            b.fp32_precision = value


def test_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth") as e:
        find_weights()
    assert "https://github.com/mseitzer/pytorch-fid/releases" in str(e.value)
    assert str(tmp_path / "checkpoints") in str(e.value)
    with pytest.raises(FileNotFoundError, match="Download"):
        FIDInceptionV3(tmp_path / "nope.pth")
    (tmp_path / "checkpoints").mkdir()
    alt = tmp_path / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    alt.write_bytes(b"")
    assert find_weights() == alt


def test_bad_modes(weights_file):
    with pytest.raises(ValueError, match="resize must be one of"):
        FIDInceptionV3("random", resize="bilinear")
    with pytest.raises(ValueError, match="dims"):
        FIDInceptionV3("random", dims=1000)
    bad = tmp = weights_file.parent / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, tmp)
    with pytest.raises(ValueError, match="not an FID Inception state dict"):
        FIDInceptionV3(bad)
