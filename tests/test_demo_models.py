"""The shipped demo models (fastsample.demo): offline loading, real pipelines end to end, clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    UNet2DModel,
)

from fastsample import demo
from fastsample.demo import WEIGHTS_DIR, DemoWeightsError, DigitsClassifier
from fastsample.pipelines import RectifiedFlowPipeline


@pytest.fixture(scope="module")
def split():
    return demo.digits_split()


@pytest.fixture(scope="module")
def classifier():
    return demo.load_classifier()


@pytest.fixture(scope="module")
def flow_pipe():
    return demo.load_flow_pipeline()


def test_digits_split(split):
    train, heldout = split
    assert train.images.shape == (1497, 1, 16, 16) and heldout.images.shape == (300, 1, 16, 16)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.images.min() >= -1 and train.images.max() <= 1 and train.images.min() == -1
    assert set(heldout.labels.tolist()) == set(range(10))
    again = demo.digits_split()[1]
    assert torch.equal(again.images, heldout.images) and torch.equal(again.labels, heldout.labels)
    assert not torch.equal(demo.digits_split(seed=1)[1].labels, heldout.labels)


def test_ddpm_pipeline_end_to_end():
    pipe = demo.load_ddpm_pipeline()
    assert isinstance(pipe, DDPMPipeline) and isinstance(pipe.unet, UNet2DModel)
    assert isinstance(pipe.scheduler, DDPMScheduler)
    cfg = pipe.scheduler.config
    assert cfg.num_train_timesteps == 1000 and cfg.beta_schedule == "linear" and cfg.prediction_type == "epsilon"
    images = pipe(batch_size=3, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.images.shape == (3, 16, 16, 1) and np.isfinite(images.images).all()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    out = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 1, 16, 16) and torch.isfinite(out.images).all()


def test_flow_pipeline_end_to_end(flow_pipe):
    assert isinstance(flow_pipe, RectifiedFlowPipeline)
    assert isinstance(flow_pipe.scheduler, FlowMatchEulerDiscreteScheduler) and flow_pipe.scheduler.config.shift == 1.0
    gen = torch.Generator().manual_seed(0)
    out = flow_pipe(batch_size=3, num_inference_steps=6, generator=gen, output_type="pt")
    assert out.images.shape == (3, 1, 16, 16) and torch.isfinite(out.images).all()
    assert len(flow_pipe.scheduler.timesteps) == 6
    (pil,) = flow_pipe(batch_size=1, num_inference_steps=2, return_dict=False)
    assert pil[0].size == (16, 16)
    custom = flow_pipe(batch_size=2, sigmas=[1.0, 0.6, 0.3], generator=gen, output_type="np").images
    assert custom.shape == (2, 16, 16, 1) and np.isfinite(custom).all()
    assert torch.allclose(flow_pipe.scheduler.sigmas, torch.tensor([1.0, 0.6, 0.3, 0.0]))


def test_flow_pipeline_denoises_to_digits(flow_pipe, classifier):
    """A short Euler run gives images the classifier reads with confidence: the model is trained."""
    gen = torch.Generator().manual_seed(1)
    images = flow_pipe(batch_size=32, num_inference_steps=20, generator=gen, output_type="pt").images * 2 - 1
    with torch.no_grad():
        confidence = classifier(images).softmax(1).max(1).values
    assert confidence.median() > 0.9


def test_classifier_accuracy_and_features(split, classifier):
    _, heldout = split
    with torch.no_grad():
        logits = classifier(heldout.images)
        features = classifier.features(heldout.images[:7])
    assert logits.shape == (300, 10)
    assert (logits.argmax(1) == heldout.labels).float().mean() >= 0.95
    assert features.shape == (7, classifier.config.feature_dim) and features.dtype == torch.float32
    assert 64 <= classifier.config.feature_dim <= 128


def test_save_load_round_trip(tmp_path, split, classifier, flow_pipe):
    x = split[1].images[:5]
    classifier.save_pretrained(tmp_path / "clf")
    assert (tmp_path / "clf" / "diffusion_pytorch_model.safetensors").is_file()
    again = DigitsClassifier.from_pretrained(tmp_path / "clf").eval()
    with torch.no_grad():
        assert torch.equal(again(x), classifier(x))
    flow_pipe.save_pretrained(tmp_path / "flow")
    loaded = demo.load_flow_pipeline(path=tmp_path / "flow")
    kwargs = dict(batch_size=2, num_inference_steps=3, output_type="pt")
    a = flow_pipe(generator=torch.Generator().manual_seed(3), **kwargs).images
    b = loaded(generator=torch.Generator().manual_seed(3), **kwargs).images
    assert torch.equal(a, b)


def test_flow_model_loads_through_diffusion_pipeline():
    """The shipped flow folder names its class through a module file, as Hub community pipelines do."""
    pipe = DiffusionPipeline.from_pretrained(WEIGHTS_DIR / "flow", trust_remote_code=True)
    assert type(pipe) is RectifiedFlowPipeline
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(WEIGHTS_DIR / "flow")


@pytest.mark.parametrize(
    "name, rel",
    [
        ("ddpm", "unet/diffusion_pytorch_model.safetensors"),
        ("flow", "scheduler/scheduler_config.json"),
        ("classifier", "diffusion_pytorch_model.safetensors"),
    ],
)
def test_missing_weight_file_gives_clear_error(tmp_path, name, rel):
    copy = shutil.copytree(demo.WEIGHTS_DIR / name, tmp_path / name)
    (copy / rel).unlink()
    loader = {"ddpm": demo.load_ddpm_pipeline, "flow": demo.load_flow_pipeline, "classifier": demo.load_classifier}
    with pytest.raises(DemoWeightsError, match=f"python -m fastsample.demo.train --which {name}") as info:
        loader[name](path=copy)
    assert str(copy / rel) in str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
@pytest.mark.parametrize("name", ["ddpm", "classifier"])
def test_corrupted_weight_file_gives_clear_error(tmp_path, name, damage):
    copy = shutil.copytree(demo.WEIGHTS_DIR / name, tmp_path / name)
    rel = "unet/diffusion_pytorch_model.safetensors" if name == "ddpm" else "diffusion_pytorch_model.safetensors"
    data = (copy / rel).read_bytes()
    (copy / rel).write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07not a safetensors file" * 9)
    loader = demo.load_ddpm_pipeline if name == "ddpm" else demo.load_classifier
    with pytest.raises(DemoWeightsError, match=f"corrupted.*--which {name}"):
        loader(path=copy)
    assert (demo.WEIGHTS_DIR / name / rel).read_bytes() != (copy / rel).read_bytes()
