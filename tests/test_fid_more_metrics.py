"""P/R, D/C, CMMD, FD-DINOv2: formula parity (prdc package, direct definitions), the Hugging Face encoders
built from tiny random configs saved to disk and loaded with from_pretrained, the one-pass suite, the CLI,
and the opt-in hash-checked Inception download from a file:// URL."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipelines import save_tiny_clip_vision, save_tiny_dinov2

from fastsample.fid import cli
from fastsample.fid.inception import FIDInceptionV3, find_weights
from fastsample.fid.kid import rbf_mmd2
from fastsample.fid.manifold import Reservoir, precision_recall_density_coverage
from fastsample.fid.metric import CLIPMaximumMeanDiscrepancy, FrechetDINOv2Distance, PrecisionRecallDensityCoverage
from fastsample.fid.suite import MetricSuite, parse_metrics


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    return {"dinov2": save_tiny_dinov2(root / "dinov2"), "clip": save_tiny_clip_vision(root / "clip")}


def _u8(seed, n=6, size=24, lo=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _feats(seed, n, d=8, shift=0.0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)) + shift)


def test_prdc_parity_with_prdc_package():
    prdc = pytest.importorskip("prdc")
    real, fake = _feats(0, 300), _feats(1, 200, shift=0.4)
    ours = precision_recall_density_coverage(real, fake, k=5)
    ref = prdc.compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    for key in ("precision", "recall", "density", "coverage"):
        assert ours[key] == pytest.approx(float(ref[key]), abs=1e-12), key
    assert 0 < ours["precision"] < 1 and 0 < ours["coverage"] < 1


def test_prdc_hand_case():
    real = torch.tensor([[0.0], [1.0], [3.0]])  # k = 1 radii: 1, 1, 2
    fake = torch.tensor([[0.5], [2.9], [10.0]])
    out = precision_recall_density_coverage(real, fake, k=1)
    # 0.5 is in the balls of 0 and 1; 2.9 in the ball of 3; 10 in none
    assert out["precision"] == pytest.approx(2 / 3) and out["density"] == pytest.approx(3 / 3)
    assert out["coverage"] == pytest.approx(1.0)
    # fake radii (k = 1): 2.4, 2.4, 7.1 -> real 0, 1 and 3 are all within a fake ball
    assert out["recall"] == pytest.approx(1.0)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("sigma", [10.0, 1.0])
def test_rbf_mmd_matches_definition(unbiased, sigma):
    x, y = _feats(2, 30).numpy(), _feats(3, 20, shift=0.5).numpy()

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    def mean_k(a, b, skip_diag):
        vals = [k(p, q) for i, p in enumerate(a) for j, q in enumerate(b) if not (skip_diag and i == j)]
        return np.mean(vals)

    ref = 1000 * (mean_k(x, x, unbiased) + mean_k(y, y, unbiased) - 2 * mean_k(x, y, False))
    assert float(rbf_mmd2(torch.from_numpy(x), torch.from_numpy(y), sigma=sigma, unbiased=unbiased)) == pytest.approx(
        ref, rel=1e-10
    )


def test_reservoir_batch_independent_and_seeded():
    rows = _feats(4, 500)
    samples = []
    for bs in (1, 7, 500):
        r = Reservoir(64, seed=3)
        for i in range(0, 500, bs):
            r.add(rows[i : i + bs])
        samples.append(r.rows)
        assert r.subsampled and r.seen == 500
    torch.testing.assert_close(samples[0], samples[1], rtol=0, atol=0)
    torch.testing.assert_close(samples[0], samples[2], rtol=0, atol=0)
    small = Reservoir(1000)
    small.add(rows[:10])
    small.add(rows[10:30])
    torch.testing.assert_close(small.rows, rows[:30], rtol=0, atol=0)  # under capacity: everything, in order
    # uniform: over many seeds each row is kept with probability capacity / n
    kept = torch.zeros(100)
    for seed in range(300):
        r = Reservoir(10, seed=seed)
        r.add(torch.arange(100.0)[:, None])
        kept[r.rows[:, 0].long()] += 1
    assert kept.sum() == 3000 and (kept / 300).mean() == pytest.approx(0.1) and kept.std() / kept.mean() < 0.4


def test_dinov2_encoder_matches_dgm_eval_pipeline(hf_models):
    tv = pytest.importorskip("torchvision.transforms")
    from transformers import Dinov2Model

    from fastsample.fid.encoders import DINOv2Encoder

    enc = DINOv2Encoder(hf_models["dinov2"])
    imgs = _u8(5, n=2, size=40)
    pipeline = tv.Compose(
        [
            tv.Resize((224, 224), tv.InterpolationMode.BICUBIC),
            tv.ToTensor(),
            tv.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    x = torch.stack([pipeline(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in imgs])
    torch.testing.assert_close(enc.preprocess(imgs), x, rtol=0, atol=1e-6)
    net = Dinov2Model.from_pretrained(hf_models["dinov2"]).eval()
    with torch.no_grad():
        out = net(pixel_values=x, output_hidden_states=True)
        cls = net.layernorm(out.hidden_states[-1])[:, 0]  # dgm-eval: the final-layer-normed CLS token
    torch.testing.assert_close(enc(imgs), cls, rtol=1e-5, atol=1e-5)
    enc.train()
    assert not enc.training and enc.num_features == 32
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        DINOv2Encoder(str(hf_models["dinov2"]) + "-missing")


def test_clip_encoder_preprocessing_and_embedding(hf_models):
    tv = pytest.importorskip("torchvision.transforms")
    from transformers import CLIPVisionModelWithProjection

    from fastsample.fid.encoders import CLIP_MEAN, CLIP_STD, CLIPEncoder

    enc = CLIPEncoder(hf_models["clip"])
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    smooth = torch.stack([xx, yy, (xx + yy) / 2])  # no bicubic overshoot for PIL's 8-bit passes to clip
    imgs = torch.stack([(smooth * (40 + 60 * k) + 20 * k).round().to(torch.uint8) for k in range(3)])
    pipeline = tv.Compose(
        [tv.Resize((32, 32), tv.InterpolationMode.BICUBIC), tv.ToTensor(), tv.Normalize(CLIP_MEAN, CLIP_STD)]
    )
    x = torch.stack([pipeline(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in imgs])
    # PIL's 8-bit bicubic rounds each of its two passes to levels; ours resizes the float image
    assert (enc.preprocess(imgs) - x).abs().max() <= 1.0001 / 255 / min(CLIP_STD)
    net = CLIPVisionModelWithProjection.from_pretrained(hf_models["clip"]).eval()
    with torch.no_grad():
        e = net(pixel_values=enc.preprocess(imgs)).image_embeds
    ours = enc(imgs)
    torch.testing.assert_close(ours, e / e.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(3), rtol=1e-6, atol=1e-6)


def test_metric_classes(hf_models):
    real, fake = _u8(7, n=8), _u8(8, n=8, lo=100)
    fd = FrechetDINOv2Distance(hf_models["dinov2"])
    assert fd.identity["feature_network"] == "dinov2:dinov2" and fd.num_features == 32
    fd.update(real, real=True)
    fd.update(real, real=False)
    assert abs(float(fd.compute())) < 1e-8
    cmmd = CLIPMaximumMeanDiscrepancy(hf_models["clip"], max_samples=5)
    for lo_batch in (real[:3], real[3:]):
        cmmd.update(lo_batch, real=True)
    cmmd.update(fake, real=False)
    assert cmmd.subsampled and cmmd.real_features[0].shape == (5, 16)
    enc = cmmd.inception
    r = Reservoir(5, 0)
    r.add(enc(real))
    f = Reservoir(5, 1)
    f.add(enc(fake))
    assert float(cmmd.compute()) == pytest.approx(float(rbf_mmd2(r.rows, f.rows)), rel=1e-12)
    cmmd.reset()
    assert cmmd.real_features == [] and cmmd._reservoirs["real"].seen == 0


def test_prdc_metric_custom_feature():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 4))
    m = PrecisionRecallDensityCoverage(feature=lambda_net(net), k=2)
    real, fake = _u8(9, n=10), _u8(10, n=10)
    m.update(real, real=True)
    m.update(fake, real=False)
    with torch.no_grad():
        ref = precision_recall_density_coverage(net(real.float() / 255), net(fake.float() / 255), k=2)
    assert {k: float(v) for k, v in m.compute().items()} == pytest.approx(ref, abs=1e-6)


def lambda_net(net):
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x.float() / 255)

    return Wrap()


@pytest.mark.slow
def test_suite_runs_each_encoder_once(hf_models):
    suite = MetricSuite(
        ["fid", "prdc", "kid", "fd_dinov2", "cmmd"],
        inception_weights="random",
        dinov2=hf_models["dinov2"],
        clip=hf_models["clip"],
        max_samples=100,
        k=2,
    )
    calls = {name: 0 for name in suite.encoders}
    for name, net in suite.encoders.items():
        net.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
    real, fake = _u8(11, n=5, size=16), _u8(12, n=5, size=16, lo=80)
    suite.update(real, real=True)
    suite.update(fake, real=False)
    assert calls == {"inception": 2, "dinov2": 2, "clip": 2}
    out = suite.compute()
    assert set(out) >= {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "fd_dinov2", "cmmd"}
    assert out["fid_samples"] == 5 and out["cmmd_samples"] == 5
    clip = suite.encoders["clip"]
    assert out["cmmd"] == pytest.approx(float(rbf_mmd2(clip(real), clip(fake))), rel=1e-10)
    dino = suite.encoders["dinov2"]
    from fastsample.fid import frechet_distance_features

    assert out["fd_dinov2"] == pytest.approx(frechet_distance_features(dino(real), dino(fake)), rel=1e-9)
    with pytest.raises(ValueError, match="metrics must be"):
        parse_metrics("fid,fid")
    with pytest.raises(ValueError, match="metrics must be"):
        parse_metrics("fid,bogus")


def test_cli_metrics(tmp_path, capsys, hf_models):
    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).mkdir()
        rng = np.random.default_rng(seed)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    common = ["--device", "cpu", "--num-workers", "0", "--clip", hf_models["clip"], "--dinov2", hf_models["dinov2"]]
    assert cli.main([str(tmp_path / "a"), str(tmp_path / "b"), "--metrics", "cmmd,fd_dinov2", *common]) == 0
    lines = dict(line.split(": ") for line in capsys.readouterr().out.strip().splitlines())
    assert set(lines) == {"cmmd", "cmmd_samples", "fd_dinov2", "fd_dinov2_samples"} and float(lines["cmmd"]) != 0
    assert cli.main([str(tmp_path / "a"), str(tmp_path / "b"), "--metrics", "cmmd,nope", *common]) == 1
    assert "metrics must be" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "a"), str(tmp_path / "b"), "--metrics", "cmmd", "--dims", "64", *common]) == 1
    assert "--dims" in capsys.readouterr().err


def test_inception_download_file_url(tmp_path, monkeypatch):
    src = tmp_path / "src.pth"
    torch.save(FIDInceptionV3("random").state_dict(), src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(FileNotFoundError, match="download=True"):
        find_weights()
    import fastsample.fid.inception as inception

    monkeypatch.setattr(inception, "WEIGHTS_URL", src.as_uri())
    monkeypatch.setattr(inception, "WEIGHTS_SHA256", digest[:8] + "0" * 56)  # right name prefix, wrong file
    with pytest.raises(RuntimeError, match="invalid hash"):
        find_weights(download=True)
    assert not any(hub.rglob("*.pth")), "a file with the wrong hash must not be left in the cache"
    monkeypatch.setattr(inception, "WEIGHTS_SHA256", digest)
    path = find_weights(download=True)
    assert path == hub / "checkpoints" / inception.WEIGHTS_FILENAME and path.read_bytes() == src.read_bytes()
    net = FIDInceptionV3(dims=64)  # found in the cache now, no download needed
    torch.testing.assert_close(net.fc.weight, FIDInceptionV3("random").fc.weight)
    assert net.weights_digest == digest and FIDInceptionV3("random").weights_digest == "random-seed0"


def test_inception_hash_is_the_full_digest_of_the_named_file():
    from fastsample.fid import inception

    # torch hub's convention: the name's hash part is the start of the file's SHA-256
    prefix = torch.hub.HASH_REGEX.search(inception.WEIGHTS_FILENAME).group(1)
    assert len(inception.WEIGHTS_SHA256) == 64 and inception.WEIGHTS_SHA256.startswith(prefix)
    assert inception.WEIGHTS_URL.endswith(inception.WEIGHTS_FILENAME)
