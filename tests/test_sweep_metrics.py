"""Sweep configs take every metric the MetricSuite offers, encoders included (tiny random DINOv2 / CLIP saved to
disk and loaded with from_pretrained), and can save each cell's images, resumably and without overwriting a
user's folder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipelines import save_tiny_clip_vision, save_tiny_dinov2

from fastsample import sweep
from fastsample._io import UserError
from fastsample.fid import frechet_distance_features
from fastsample.fid.encoders import CLIPEncoder, DINOv2Encoder
from fastsample.fid.kid import rbf_mmd2
from fastsample.sweep import sources

CONFIG = """
[sweep]
name = "enc"
nfe = [2]
num_samples = 6
batch_size = 4
seed = 2
{sweep_extra}

[model]
kind = "demo-ddpm"

[metric]
features = "demo-classifier"
reference = "demo-heldout"
metrics = {metrics}
{metric_extra}

[[schedulers]]
name = "diffusers.DDIMScheduler"
label = "DDIM"
config = {{ timestep_spacing = "trailing", set_alpha_to_one = true }}
"""

ALL = '["fd", "kid", "prdc", "fd_dinov2", "cmmd"]'
ENCODERS = 'dinov2 = "enc/dinov2"\nclip = "enc/clip"'


@pytest.fixture
def encoders(tmp_path):
    torch.manual_seed(0)
    save_tiny_dinov2(tmp_path / "enc" / "dinov2")
    save_tiny_clip_vision(tmp_path / "enc" / "clip")
    return tmp_path / "enc"


def _config(tmp_path, metrics=ALL, metric_extra=ENCODERS, sweep_extra="", out="out"):
    path = tmp_path / "enc.toml"
    path.write_text(CONFIG.format(metrics=metrics, metric_extra=metric_extra, sweep_extra=sweep_extra))
    return sweep.load_config(path, output=str(tmp_path / out))


def _held_images():
    from fastsample import demo

    _, held = demo.digits_split()
    return (held.images + 1) / 2


@pytest.mark.slow
def test_every_metric_end_to_end(tmp_path, encoders):
    cfg = _config(tmp_path, sweep_extra="save_images = true")
    [cell] = sweep.run_sweep(cfg, progress=False)
    for key in ("fd", "kid", "precision", "coverage", "fd_dinov2", "cmmd"):
        assert isinstance(cell[key], float) and np.isfinite(cell[key]), key
    assert cell["cmmd_samples"] == 6
    header = (cfg.output / "results.csv").read_text().splitlines()[0].split(",")
    assert {"fd_dinov2", "cmmd"} <= set(header)
    for name in ("fd_dinov2_vs_nfe.png", "cmmd_vs_nfe.png"):
        assert (cfg.output / name).stat().st_size > 0
    # independently: the saved PNGs are the generated images quantised as the encoders quantise them
    [folder] = [p for p in (cfg.output / "images").iterdir() if p.is_dir()]
    fake = torch.stack([torch.from_numpy(np.array(Image.open(f))) for f in sorted(folder.glob("*.png"))])
    assert fake.shape[0] == 6
    fake = fake[:, None].float() / 255  # gray digits
    real = _held_images()
    dino, clip = DINOv2Encoder(encoders / "dinov2"), CLIPEncoder(encoders / "clip")
    expected_fd = frechet_distance_features(dino(real).double(), dino(fake).double())
    assert cell["fd_dinov2"] == pytest.approx(expected_fd, rel=1e-8)
    assert cell["cmmd"] == pytest.approx(float(rbf_mmd2(clip(real).double(), clip(fake).double())), rel=1e-8)
    key = json.loads(next((cfg.output / "cells").glob("*.json")).read_text())["key"]["metrics"]
    assert key["encoders"]["dinov2"]["weights_sha256"] == dino.weights_digest
    assert key["settings"]["cmmd"] == {"sigma": 10.0, "scale": 1000.0, "unbiased": True}


@pytest.mark.slow
def test_edited_encoder_recomputes(tmp_path, encoders, monkeypatch):
    cfg = _config(tmp_path, metrics='["fd", "fd_dinov2"]', metric_extra='dinov2 = "enc/dinov2"')
    calls = []
    original = sources.UNetSource.generate
    monkeypatch.setattr(sources.UNetSource, "generate", lambda self, *a: calls.append(1) or original(self, *a))
    [first] = sweep.run_sweep(cfg, progress=False)
    n = len(calls)
    assert sweep.run_sweep(cfg, progress=False) == [first] and len(calls) == n  # reused
    torch.manual_seed(1)
    save_tiny_dinov2(encoders / "dinov2")  # other weights in the same folder
    [again] = sweep.run_sweep(cfg, progress=False)
    assert len(calls) > n and again["fd"] == first["fd"] and again["fd_dinov2"] != first["fd_dinov2"]


def test_unknown_metric_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError) as e:
        _config(tmp_path, metrics='["fd", "fid_dinov2"]', metric_extra="")
    msg = str(e.value)
    assert "\n" not in msg and "'fid_dinov2'" in msg
    assert all(m in msg for m in ("fd", "kid", "prdc", "fd_dinov2", "cmmd"))


@pytest.mark.parametrize(
    "metrics, extra, match",
    [
        ('["fd"]', 'dinov2 = "enc/dinov2"', "metric.dinov2 applies to"),
        ('["fd", "kid"]', 'clip = "enc/clip"', "metric.clip applies to"),
        ('["fd", "cmmd"]', 'clip = "nobody/no-such-model"', "not in the Hugging Face cache"),
        ('["fd", "cmmd"]', 'clip = "enc/clip"\ndownload = "yes"', "download must be true or false"),
    ],
)
def test_bad_encoder_options(tmp_path, encoders, metrics, extra, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, metrics=metrics, metric_extra=extra)


class Interrupted(Exception):
    """Stands for a killed run."""


def _pngs(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


@pytest.mark.slow
def test_saved_images_resume_bit_identical(tmp_path, monkeypatch):
    whole = _config(tmp_path, metrics='["fd"]', metric_extra="", sweep_extra='save_images = "imgs"', out="a")
    sweep.run_sweep(whole, progress=False)
    reference = _pngs(tmp_path / "imgs")
    assert len(reference) == 6 and (tmp_path / "imgs" / ".fastsample-images").is_file()

    cfg = _config(tmp_path, metrics='["fd"]', metric_extra="", sweep_extra='save_images = "imgs2"', out="b")
    original = sources.UNetSource.generate
    calls = []

    def dies_on_second_batch(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return original(self, *args)

    monkeypatch.setattr(sources.UNetSource, "generate", dies_on_second_batch)
    with pytest.raises(Interrupted):
        sweep.run_sweep(cfg, progress=False)
    assert len(_pngs(tmp_path / "imgs2")) == 4  # the first batch landed, nothing partial
    assert not list((tmp_path / "imgs2").rglob("*.tmp"))
    [cell] = sweep.run_sweep(cfg, progress=False)  # the cell had no result: it runs again and completes
    assert _pngs(tmp_path / "imgs2") == reference
    # a finished cell whose images were removed is recomputed (same values), not silently left without them
    for p in (tmp_path / "imgs2").rglob("000003.png"):
        p.unlink()
    [again] = sweep.run_sweep(cfg, progress=False)
    assert again["fd"] == cell["fd"] and again["seconds"] != cell["seconds"]  # computed again, same value
    assert _pngs(tmp_path / "imgs2") == reference


def test_saved_images_never_overwrite_a_user_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.png").write_bytes(b"not ours")
    cfg = _config(tmp_path, metrics='["fd"]', metric_extra="", sweep_extra='save_images = "mine"')
    with pytest.raises(UserError, match="--force"):
        sweep.run_sweep(cfg, progress=False)
    assert not (tmp_path / "out" / "cells").exists() or not list((tmp_path / "out" / "cells").glob("*.json"))
    sweep.run_sweep(cfg, progress=False, force=True)
    assert (tmp_path / "mine" / "holiday.png").read_bytes() == b"not ours"
    assert len(list((tmp_path / "mine").rglob("*.png"))) == 7
