"""The recipes of eval/configs/ run end to end through the real `fastsample sweep` command on tiny random
pipelines of the same classes (saved with save_pretrained), with a tiny reference in place of the real data.

Each test reads the recipe, keeps its structure (model kind, conditions, guidance axis, every scheduler,
dtype where the CPU has it) and swaps what needs weights or data: the model path, the reference, the
feature network (the demo classifier instead of Inception) and the sizes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_pipelines as tiny
from PIL import Image

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "eval" / "configs"
CAPTIONS = ["a red bus", "two cats on a sofa", "a bowl of fruit", "a man riding a horse", "snow on a hill"]


def _reference_folder(path: Path, n: int = 12) -> str:
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path / f"{i:02d}.png")
    return str(path)


def _recipe(name: str, tmp_path: Path, model_path: str, reference, **model) -> Path:
    """The recipe with tiny stand-ins, written as a YAML (JSON) config beside them."""
    cfg = tomllib.loads((RECIPES / name).read_text())
    sweep = cfg["sweep"]
    sweep.update(output=str(tmp_path / "out"), nfe=sweep["nfe"][:1], num_samples=4, batch_size=4)
    if "guidance_scales" in sweep:
        sweep["guidance_scales"] = sweep["guidance_scales"][:2]  # still an axis
    cfg["sweep"].pop("device", None)
    cfg["model"].update(path=model_path, **model)
    cfg["metric"] = {"features": "demo-classifier", "reference": reference}
    path = tmp_path / f"{Path(name).stem}.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _sweep(config: Path, tmp_path: Path) -> tuple[list[dict], str]:
    env = {**os.environ, "FASTSAMPLE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf")
    cmd = [sys.executable, "-m", "fastsample", "sweep", str(config), "--no-progress"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((tmp_path / "out" / "results.json").read_text())["cells"], run.stderr


def _check_grid(cells, config: Path):
    cfg = json.loads(config.read_text())
    nfe, guidance = cfg["sweep"]["nfe"], cfg["sweep"].get("guidance_scales", [1.0])
    grid = {(s["label"], n, float(g)) for s in cfg["schedulers"] for n in nfe for g in guidance}
    assert {(c["scheduler"], c["nfe"], c["guidance"]) for c in cells} == grid
    computed = [c for c in cells if c["fd"] is not None]
    assert computed and all(np.isfinite(c["fd"]) and c["fd"] > 0 for c in computed)
    return computed


@pytest.mark.slow
def test_cifar10_recipe_unet(tmp_path):
    model = tmp_path / "ddpm"
    tiny.ddpm_pipeline(sample_size=16).save_pretrained(model)
    config = _recipe("cifar10_fid50k.toml", tmp_path, str(model), _reference_folder(tmp_path / "ref"))
    cells, err = _sweep(config, tmp_path)
    _check_grid(cells, config)
    assert "computing the reference statistics" in err
    again, err = _sweep(config, tmp_path)  # a later sweep: every cell and the reference statistics reused
    assert "computing the reference statistics" not in err
    assert [c["fd"] for c in again] == [c["fd"] for c in cells]


@pytest.mark.slow
def test_imagenet_dit_recipe_class_labels_and_guidance(tmp_path):
    model = tmp_path / "dit"
    tiny.dit_pipeline().save_pretrained(model)
    config = _recipe("imagenet256_dit_fid50k.toml", tmp_path, str(model), _reference_folder(tmp_path / "ref"))
    assert json.loads(config.read_text())["model"]["torch_dtype"] == "bfloat16"  # the recipe's dtype, on the CPU
    cells, _ = _sweep(config, tmp_path)
    computed = _check_grid(cells, config)
    by_guidance = {}
    for c in computed:
        by_guidance.setdefault((c["scheduler"], c["nfe"]), set()).add(c["fd"])
    assert all(len(v) == 2 for v in by_guidance.values())  # guidance 1.5 and 4 give other samples


def _sd_recipe(name, pipeline, tmp_path, edit_captions=False, **model):
    path = tmp_path / "sd"
    pipeline().save_pretrained(path)
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\n")
    reference = _reference_folder(tmp_path / "ref")
    config = _recipe(name, tmp_path, str(path), reference, prompts_file=str(captions), **model)
    cells, _ = _sweep(config, tmp_path)
    _check_grid(cells, config)
    if not edit_captions:
        return
    n_cells = len(list((tmp_path / "out" / "cells").glob("*.json")))
    captions.write_text("\n".join(reversed(CAPTIONS)) + "\n")  # other captions: no cell may be reused
    again, _ = _sweep(config, tmp_path)
    assert len(list((tmp_path / "out" / "cells").glob("*.json"))) == 2 * n_cells
    assert [c["fd"] for c in again] != [c["fd"] for c in cells]


@pytest.mark.slow
def test_coco_sd15_recipe_prompts_file_and_guidance(tmp_path):
    """The recipe's float16 is GPU only: float32 here. Edited captions: every cell is computed afresh."""
    assert tomllib.loads((RECIPES / "coco30k_sd15.toml").read_text())["model"]["torch_dtype"] == "float16"
    _sd_recipe("coco30k_sd15.toml", tiny.sd_pipeline, tmp_path, edit_captions=True, torch_dtype="float32")


@pytest.mark.slow
def test_coco_sd3_recipe_prompts_file_and_guidance(tmp_path):
    kwargs = {"height": 16, "width": 16, "max_sequence_length": tiny.TEXT_LEN}
    _sd_recipe("coco30k_sd3.toml", tiny.sd3_pipeline, tmp_path, call_kwargs=kwargs)


def test_float16_on_the_cpu_is_one_clear_line(tmp_path):
    model = tmp_path / "ddpm"
    tiny.ddpm_pipeline(sample_size=16).save_pretrained(model)
    config = _recipe("cifar10_fid50k.toml", tmp_path, str(model), "demo-heldout", torch_dtype="float16")
    cmd = [sys.executable, "-m", "fastsample", "sweep", str(config), "--no-progress"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "model.torch_dtype 'float16' runs on a GPU only" in run.stderr
