"""Sweeps you can look at: extra metrics, the floor, sample sheets with shared seeds, one plot per metric."""

import json

import numpy as np
import pytest
from PIL import Image

from fastsample import sweep
from fastsample.sweep import sources
from fastsample.sweep.report import SHEET_SAMPLES

CONFIG = """
[sweep]
name = "looks"
nfe = [2]
num_samples = 10
batch_size = 10
seed = 1

[model]
kind = "demo-ddpm"

[metric]
features = "demo-classifier"
reference = "demo-heldout"
metrics = {metrics}

[[schedulers]]
name = "diffusers.DDIMScheduler"
label = "DDIM"
config = {{ timestep_spacing = "trailing", set_alpha_to_one = true }}

[[schedulers]]
name = "diffusers.DDIMScheduler"
label = "DDIM again"
config = {{ timestep_spacing = "trailing", set_alpha_to_one = true }}
"""


def _config(tmp_path, metrics='["fd", "kid", "prdc"]'):
    path = tmp_path / "looks.toml"
    path.write_text(CONFIG.format(metrics=metrics))
    return sweep.load_config(path, output=str(tmp_path / "out"))


def test_sweep_metrics_floor_sheets_and_plots(tmp_path):
    cfg = _config(tmp_path)
    cells = sweep.run_sweep(cfg, progress=False)
    out = cfg.output
    summary = json.loads((out / "results.json").read_text())
    floor = summary["floor"]
    assert floor["count"] == 10 and floor["fd"] > 0 and floor["source"] == "demo training digits"
    assert "Floor" in (out / "results.md").read_text()
    for c in summary["cells"]:
        assert c["fd"] > 0 and 0 <= c["precision"] <= 1 and 0 <= c["coverage"] <= 1 and c["kid"] is not None
    # two identically configured schedulers: same seeds, so the same numbers and the same sample strips
    assert cells[0]["fd"] == cells[1]["fd"] and cells[0]["precision"] == cells[1]["precision"]
    strips = [np.asarray(Image.open(out / "cells" / c["sheet"])) for c in cells]
    assert strips[0].shape[1] == SHEET_SAMPLES * strips[0].shape[0] and np.array_equal(strips[0], strips[1])
    for name in ("fd_vs_nfe.png", "kid_vs_nfe.png", "precision_vs_nfe.png", "coverage_vs_nfe.png", "samples_nfe2.png"):
        assert (out / name).stat().st_size > 0, name
    again = sweep.run_sweep(cfg, progress=False)  # resumed from the cell files, sheets included
    assert [c["precision"] for c in again] == [c["precision"] for c in cells]


@pytest.mark.parametrize("metrics", ['["kid"]', '["fd", "cmmd"]', '["fd", "fd"]', '"fd"'])
def test_bad_metrics_list(tmp_path, metrics):
    with pytest.raises(ValueError, match="metrics must be distinct names"):
        _config(tmp_path, metrics)


def test_cells_follow_the_reference_images(tmp_path):
    """KID / P/R against a folder of reference images: editing one image recomputes the cells (never a stale number)."""
    from fastsample import demo

    _, held = demo.digits_split()
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, im in enumerate(held.images[:12]):
        arr = ((im[0].numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(arr).save(refs / f"{i:02d}.png")
    path = tmp_path / "looks.toml"
    text = CONFIG.format(metrics='["fd", "kid", "prdc"]').replace(
        'reference = "demo-heldout"', 'reference = "demo-heldout"\nreference_images = "refs"'
    )
    path.write_text(text.replace('reference = "demo-heldout"', 'reference = "ref.npz"'))
    net = sources.FeatureNet({"features": "demo-classifier"}, "cpu")
    from fastsample.fid import FeatureStatistics

    stats = FeatureStatistics()
    stats.update(net((held.images[:64] + 1) / 2))
    stats.save(tmp_path / "ref.npz", metadata=net.identity)
    cfg = sweep.load_config(path, output=str(tmp_path / "out"))
    first = sweep.run_sweep(cfg, progress=False)
    assert sweep.run_sweep(cfg, progress=False) == first  # unchanged inputs: the cells are reused
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(refs / "00.png")  # one reference image edited in place
    again = sweep.run_sweep(cfg, progress=False)  # other inputs, other cell keys: computed afresh
    assert len(list((tmp_path / "out" / "cells").glob("*.json"))) == 2 * len(first)
    assert again[0]["fd"] == first[0]["fd"] and again[0]["kid"] != first[0]["kid"]
