"""Hugging Face image encoders for FD-DINOv2 and CMMD, loaded with ``from_pretrained``.

- :class:`DINOv2Encoder` (Oquab et al., arXiv 2304.07193) with the conventions of dgm-eval (Stein et al.,
  arXiv 2306.04675), which FD-DINOv2 (EDM2's second metric) uses: each image resized to 224 x 224 by
  PIL bicubic on the uint8 RGB image, scaled to [0, 1], normalised with the ImageNet mean and std;
  the feature is the final-layer-normed CLS token (``Dinov2Model``'s ``pooler_output``; 1024 dims for
  ViT-L/14, dgm-eval's default ``facebook/dinov2-large``).
- :class:`CLIPEncoder` for CMMD (Jayasumana et al., arXiv 2401.09603): each image resized to the
  model's ``image_size`` (336 for the paper's ViT-L/14@336, ``openai/clip-vit-large-patch14-336``)
  by PIL bicubic on the float image (no quantisation; the paper's code resizes floats with a Keys
  cubic kernel, as PIL does), scaled to [0, 1], normalised with CLIP's mean and std; the feature is
  the projected image embedding (``CLIPVisionModelWithProjection``'s ``image_embeds``) divided by its
  norm. Both accept what :func:`images_to_uint8` accepts and return float32 (B, F).

``model`` is a local folder (``save_pretrained`` output) or a hub id found in the Hugging Face cache;
nothing is downloaded unless ``download=True``, which lets ``from_pretrained`` fetch the hub id into the
Hugging Face cache (``HF_HOME``; the hub at ``HF_ENDPOINT``). These models are published as Hugging Face
repositories (config plus safetensors), not as hash-named torch hub files, so the hub client is the real
loading path; the hub does not hash-check what it downloads, so :attr:`weights_digest` (SHA-256 of the
loaded folder's files) is what results made with these encoders are keyed by. Both networks never leave
eval mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._io import tree_digest
from .inception import _pil_bicubic, images_to_uint8, no_tf32

__all__ = ["CLIPEncoder", "DINOv2Encoder"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _pil_bicubic_uint8(u8: torch.Tensor, size: int) -> torch.Tensor:
    """PIL bicubic resize of uint8 RGB images (B, 3, H, W) -> uint8 (B, 3, size, size), as torchvision on PIL."""
    from PIL import Image

    arr = u8.cpu().permute(0, 2, 3, 1).numpy()
    out = np.stack([np.asarray(Image.fromarray(a).resize((size, size), resample=Image.BICUBIC)) for a in arr])
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def _load(cls, model: str | os.PathLike, download: bool):
    try:
        return cls.from_pretrained(str(model), local_files_only=not download)
    except OSError as e:
        if download:
            reason = " ".join(str(e).split())[:300]
            raise FileNotFoundError(f"cannot download {cls.__name__} {str(model)!r}: {reason}") from e
        raise FileNotFoundError(
            f"{cls.__name__} weights {str(model)!r} not found: pass a folder written by save_pretrained, a hub id "
            f"already in the Hugging Face cache, or download=True (--download) to fetch it into that cache"
        ) from e


class _HFEncoder(nn.Module):
    mean: tuple
    std: tuple
    prefix: str

    def __init__(self, network: nn.Module, size: int, source: str | os.PathLike):
        super().__init__()
        self.network, self.size, self.source = network.eval().requires_grad_(False), int(size), str(source)
        self.name = f"{self.prefix}:{os.path.basename(self.source.rstrip('/'))}"
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        """Stay in eval mode (an evaluation network)."""
        return super().train(False)

    @property
    def weights_digest(self) -> str:
        """SHA-256 over the model folder's files (config and weights): the local folder or the cached snapshot."""
        folder = Path(self.source)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(self.source, local_files_only=True))
        return tree_digest(folder)

    @property
    def identity(self) -> dict:
        """Metadata recorded with statistics (network name, preprocessing, dimension)."""
        return {"feature_network": self.name, "resize_mode": f"pil-bicubic-{self.size}", "dim": self.num_features}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> normalised (B, 3, size, size) network input on the network's device and dtype."""
        x = self._resized(images_to_uint8(images)) / 255.0
        return ((x.to(self._mean.device) - self._mean) / self._std).to(next(self.network.parameters()).dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> float32 features (B, F)."""
        with torch.no_grad(), no_tf32():
            return self.embed(self.preprocess(images)).float()


class DINOv2Encoder(_HFEncoder):
    """DINOv2 CLS-token features with dgm-eval's preprocessing (see the module docstring).

    Args:
        model: ``save_pretrained`` folder or hub id of a ``Dinov2Model`` (default ``facebook/dinov2-large``).
        download: allow ``from_pretrained`` to download into the Hugging Face cache.
    """

    mean, std, prefix = IMAGENET_MEAN, IMAGENET_STD, "dinov2"

    def __init__(self, model: str | os.PathLike = "facebook/dinov2-large", download: bool = False):
        from transformers import Dinov2Model

        net = _load(Dinov2Model, model, download)
        super().__init__(net, 224, model)
        self.num_features = net.config.hidden_size

    def _resized(self, u8: torch.Tensor) -> torch.Tensor:
        return _pil_bicubic_uint8(u8, self.size).float()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(pixel_values=x).pooler_output


class CLIPEncoder(_HFEncoder):
    """Unit-norm CLIP image embeddings with CMMD's preprocessing (see the module docstring).

    Args:
        model: ``save_pretrained`` folder or hub id of a ``CLIPVisionModelWithProjection`` (default the
            paper's ``openai/clip-vit-large-patch14-336``).
        download: allow ``from_pretrained`` to download into the Hugging Face cache.
    """

    mean, std, prefix = CLIP_MEAN, CLIP_STD, "clip"

    def __init__(self, model: str | os.PathLike = "openai/clip-vit-large-patch14-336", download: bool = False):
        from transformers import CLIPVisionModelWithProjection

        net = _load(CLIPVisionModelWithProjection, model, download)
        super().__init__(net, net.config.image_size, model)
        self.num_features = net.config.projection_dim

    def _resized(self, u8: torch.Tensor) -> torch.Tensor:
        return _pil_bicubic(u8.float(), self.size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        e = self.network(pixel_values=x).image_embeds
        return e / e.norm(dim=-1, keepdim=True)
