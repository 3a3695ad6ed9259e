"""Tiny trained models shipped with fastsample, on scikit-learn's digits upsampled to 16x16.

- :func:`load_ddpm_pipeline`: a ``DDPMPipeline`` (epsilon prediction, 1000 linear betas).
- :func:`load_flow_pipeline`: a :class:`~fastsample.pipelines.RectifiedFlowPipeline` with
  ``FlowMatchEulerDiscreteScheduler`` (shift 1.0).
- :func:`load_classifier`: a :class:`~fastsample.demo.models.DigitsClassifier` whose
  ``features`` give a Frechet distance on this data.

The weights are safetensors files inside the package (``fastsample/demo/weights``), loaded
offline. A missing or unreadable file raises :class:`DemoWeightsError`, which names the file
and the command that regenerates it (``python -m fastsample.demo.train --which NAME``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import DigitsData, digits_split
from .models import DigitsClassifier

__all__ = [
    "DemoWeightsError",
    "DigitsData",
    "DigitsClassifier",
    "WEIGHTS_DIR",
    "digits_split",
    "load_classifier",
    "load_ddpm_pipeline",
    "load_flow_pipeline",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_PIPELINE_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
)
_REQUIRED = {
    "ddpm": _PIPELINE_FILES,
    "flow": _PIPELINE_FILES + ("rectified_flow.py",),
    "classifier": ("config.json", "diffusion_pytorch_model.safetensors"),
}


class DemoWeightsError(FileNotFoundError, RuntimeError):
    """A shipped demo weight file is missing or cannot be read."""


def _regenerate_hint(name: str) -> str:
    return f"Regenerate it with `python -m fastsample.demo.train --which {name}`."


def _checked_dir(name: str, path) -> Path:
    root = Path(path) if path is not None else WEIGHTS_DIR / name
    for rel in _REQUIRED[name]:
        file = root / rel
        if not file.is_file():
            raise DemoWeightsError(f"Demo {name} weight file {file} is missing. {_regenerate_hint(name)}")
    return root


def _load(name: str, path, loader):
    root = _checked_dir(name, path)
    try:
        return loader(root)
    except DemoWeightsError:
        raise
    except Exception as err:
        raise DemoWeightsError(
            f"Demo {name} weights under {root} could not be loaded ({type(err).__name__}: {err}); "
            f"a file there is corrupted. {_regenerate_hint(name)}"
        ) from err


def load_ddpm_pipeline(device: str | torch.device = "cpu", path=None):
    """The shipped ``DDPMPipeline`` (16x16x1, epsilon prediction), on ``device``, float32."""
    from diffusers import DDPMPipeline

    pipe = _load("ddpm", path, lambda root: DDPMPipeline.from_pretrained(root, local_files_only=True))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_flow_pipeline(device: str | torch.device = "cpu", path=None):
    """The shipped ``RectifiedFlowPipeline`` (16x16x1, velocity eps - x0), on ``device``, float32."""
    from ..pipelines import RectifiedFlowPipeline

    pipe = _load("flow", path, lambda root: RectifiedFlowPipeline.from_pretrained(root, local_files_only=True))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_classifier(device: str | torch.device = "cpu", path=None) -> DigitsClassifier:
    """The shipped digits classifier in eval mode on ``device``; input (B, 1, 16, 16) in [-1, 1]."""
    model = _load("classifier", path, lambda root: DigitsClassifier.from_pretrained(root, local_files_only=True))
    return model.eval().to(device)
