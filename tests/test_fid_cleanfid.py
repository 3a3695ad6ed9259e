"""clean-fid "clean" mode parity (Parmar et al., arXiv 2104.11222): our ``resize="clean-fid"`` against clean-fid
0.1.x itself, on image folders of mixed sizes read by each tool from disk.

clean-fid's clean mode runs NVIDIA's TorchScript Inception (``inception-2015-12-05.pt``, downloaded on first use),
which cannot be built offline. So its feature extractor here is clean-fid's own PyTorch FID Inception
(``cleanfid.inception_pytorch``, the same network as ported by pytorch-fid) holding our random weights, fed as
clean-fid's TorchScript wrapper feeds its network: the 299 x 299 float image from clean-fid's resizer, then
(x - 128) / 128. Everything else is clean-fid's code: file reading, ``make_resizer("PIL", False, "bicubic",
(299, 299))``, batching, and ``compute_fid`` (scipy ``sqrtm``). Not covered: that the TorchScript graph with
the real weights equals this architecture (it is the TF graph that both ports convert).

Tolerances: resized pixels bit-identical; features to 1e-5 of their largest magnitude (two float32
implementations of the same network); our command line's FID to 1e-6 relative of the exact
Frechet distance of clean-fid's features, and to 1e-4 relative of clean-fid's own value (its scipy ``sqrtm`` of a
singular 2048 x 2048 product, inexact by design, against our exact low-rank form).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastsample.fid import FIDInceptionV3, frechet_distance_features
from fastsample.fid import cli as fid_cli
from fastsample.fid.inception import resize_and_normalize

cleanfid_fid = pytest.importorskip("cleanfid.fid")
cleanfid_inception = pytest.importorskip("cleanfid.inception_pytorch")
from cleanfid.utils import ResizeDataset  # noqa: E402

SIZES = ((20, 24), (45, 37), (299, 299), (17, 301))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cleanfid")
    ours = FIDInceptionV3("random")
    weights = root / "w.pth"
    torch.save(ours.state_dict(), weights)
    folders = []
    for name, seed, lo in (("a", 0, 0), ("b", 1, 60)):
        folder = root / name
        folder.mkdir()
        rng = np.random.default_rng(seed)
        for i, (h, w) in enumerate(SIZES):
            Image.fromarray(rng.integers(lo, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        folders.append(folder)
    return FIDInceptionV3(weights, resize="clean-fid"), weights, folders


@pytest.fixture(scope="module")
def cleanfid_features(setup):
    """clean-fid's clean-mode feature extractor with the PyTorch FID Inception holding our weights."""
    _, weights, _ = setup
    state = torch.load(weights, weights_only=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cleanfid_inception, "load_state_dict_from_url", lambda *a, **k: state)
        net = cleanfid_inception.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False).eval()

    def features(x):  # as cleanfid.inception_torchscript.InceptionV3W.forward with resize_inside=False
        assert x.shape[2:] == (299, 299)
        return net((x - 128) / 128)[0].flatten(1)

    return features


def _files(folder: Path):
    return sorted(folder.iterdir())


def test_clean_resize_bit_identical(setup):
    _, _, folders = setup
    files = _files(folders[0])
    ref = ResizeDataset([str(f) for f in files], mode="clean")
    for i, f in enumerate(files):
        ours = resize_and_normalize(fid_cli.read_image(f)[None], "clean-fid")[0]
        assert torch.equal(ours, (ref[i] - 128) / 128), f.name


@pytest.fixture(scope="module")
def reference_features(setup, cleanfid_features):
    """clean-fid's features of both folders through its own folder pipeline (reading, resizing, batching)."""
    kw = dict(mode="clean", num_workers=0, batch_size=4, device=torch.device("cpu"), verbose=False)
    with torch.no_grad():
        return [cleanfid_fid.get_folder_features(str(d), cleanfid_features, **kw) for d in setup[2]]


@pytest.mark.slow
def test_clean_features_and_cli_fid(setup, reference_features, capsys):
    model, weights, folders = setup
    for folder, ref in zip(folders, reference_features):
        ours = torch.cat([model(fid_cli.read_image(f)[None]) for f in _files(folder)])
        assert (ours - torch.from_numpy(ref)).abs().max() <= 1e-5 * np.abs(ref).max()
    args = [str(folders[0]), str(folders[1]), "--resize", "clean-fid", "--weights", str(weights)]
    assert fid_cli.main([*args, "--device", "cpu", "--num-workers", "0"]) == 0
    ours_fid = float(capsys.readouterr().out.split()[-1])
    exact = frechet_distance_features(*(torch.from_numpy(r).double() for r in reference_features))
    assert ours_fid == pytest.approx(exact, rel=1e-6)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_clean_fid_value_matches_cleanfid(setup, reference_features, capsys):
    """clean-fid's own FID of its features (``fid_from_feats``: numpy mean / cov, scipy sqrtm; about a minute on
    two loaded cores for the 2048 x 2048 square root) against our command line on the same folders."""
    _, weights, folders = setup
    args = [str(folders[0]), str(folders[1]), "--resize", "clean-fid", "--weights", str(weights)]
    assert fid_cli.main([*args, "--device", "cpu", "--num-workers", "0"]) == 0
    ours_fid = float(capsys.readouterr().out.split()[-1])
    ref_fid = cleanfid_fid.fid_from_feats(*reference_features)
    assert ours_fid == pytest.approx(ref_fid, rel=1e-4), abs(ours_fid / ref_fid - 1)
