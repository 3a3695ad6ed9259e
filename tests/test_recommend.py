"""fastsample.recommend: the results file's held-out winners for the demo models, the general default for others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastsample import demo, recommend
from fastsample._io import file_digest
from fastsample.pipelines.recommend import DATA_DIR

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "recommend.json"
DATA = json.loads((DATA_DIR / "recommendations.json").read_text())
PIPES = {"ddpm": demo.load_ddpm_pipeline, "flow": demo.load_flow_pipeline}


def _calls(net):
    count = {"n": 0}

    def hook(*_):
        count["n"] += 1

    return count, net.register_forward_hook(hook)


def _same_choice(scheduler, choice: dict):
    """The scheduler is the choice: its class, and every config value (files by content; a flow shift is the
    model's own, checked separately)."""
    assert type(scheduler).__name__ == choice["class"]
    for k, v in choice["config"].items():
        if k == "flow_shift":
            continue
        got = scheduler.config[k]
        if k.endswith(("_file", "_path")):
            want = Path(v) if Path(v).is_absolute() else Path(__file__).resolve().parents[1] / v
            assert file_digest(got) == file_digest(want), k
        else:
            assert got == v, k


@pytest.mark.parametrize("which", ["ddpm", "flow"])
def test_demo_models_get_the_results_files_heldout_winner_and_it_runs_in_the_pipeline(which):
    results = json.loads(RESULTS.read_text())["models"][which]
    pipe = PIPES[which]()
    for row in results["rows"]:
        _same_choice(recommend(pipe, row["nfe"]), row["ours"])
    nfe = 5
    pipe.scheduler = recommend(pipe, nfe)
    count, handle = _calls(pipe.unet)
    images = pipe(batch_size=2, num_inference_steps=nfe, generator=torch.Generator().manual_seed(0), output_type="np")
    handle.remove()
    images = images.images if hasattr(images, "images") else images[0]
    assert count["n"] == nfe and images.shape[0] == 2 and torch.isfinite(torch.as_tensor(images)).all()


@pytest.mark.parametrize("which", ["ddpm", "flow"])
def test_the_recommended_scheduler_runs_the_timesteps_the_benchmark_measured(which):
    """Each choice (the demo model's and the general default), as recommend() builds it, takes the steps the
    benchmark ran with num_inference_steps = nfe (a choice on a fixed grid: through its step schedule file)."""
    results = json.loads(RESULTS.read_text())["models"][which]
    pipe = PIPES[which]()
    for row in results["rows"]:
        for key, obj in (("ours", pipe), ("ours-general", dict(pipe.scheduler.config))):
            choice, nfe = row[key], row["nfe"]
            scheduler = recommend(obj, nfe)
            scheduler.set_timesteps(nfe)
            assert choice["num_inference_steps"] == nfe
            assert [float(v) for v in scheduler.timesteps] == pytest.approx(choice["timesteps"], abs=1e-6), (key, nfe)


def test_a_model_is_recognised_by_its_weights_not_its_config_or_name():
    pipe = demo.load_ddpm_pipeline()
    general = DATA["general"]["vp"]["5"]
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1e-3)  # the same config and name, other weights
    s = recommend(pipe, 5)
    assert type(s).__name__ == general["class"]
    assert s.config.get("step_schedule_file") is None and s.config.get("ems_path") is None


def test_other_models_and_bare_configs_get_the_general_default():
    from tiny_pipelines import ddpm_pipeline, sd3_pipeline

    for obj, kind in [
        (ddpm_pipeline(), "vp"),
        (sd3_pipeline(), "flow"),
        (dict(demo.load_ddpm_pipeline().scheduler.config), "vp"),
        (demo.load_flow_pipeline().scheduler, "flow"),
    ]:
        for nfe, key in [(4, "4"), (10, "10"), (3, "4"), (25, "10")]:
            _same_choice(recommend(obj, nfe), DATA["general"][kind][key])
    pipe = sd3_pipeline()
    pipe.scheduler = recommend(pipe, 4)
    shift = pipe.scheduler.config.get("flow_shift", pipe.scheduler.config.get("shift"))
    assert shift == sd3_pipeline().scheduler.config.shift != 1.0  # SD3's shift, not the demo flow model's
    out = pipe("a cat", num_inference_steps=4, guidance_scale=1.0, output_type="latent").images
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("nfe", [0, -3, 4.5, True, "5", None])
def test_bad_nfe_is_one_clear_error(nfe):
    with pytest.raises(ValueError, match="nfe must be a positive integer"):
        recommend(demo.load_ddpm_pipeline(), nfe)


def test_bad_input_is_one_clear_error():
    with pytest.raises(TypeError, match="takes a Diffusers pipeline, a scheduler or a scheduler config"):
        recommend(42, 5)
