"""Network definitions of the shipped demo models (16x16, one channel, images in [-1, 1]).

- :func:`make_unet`: the small ``diffusers.UNet2DModel`` used by the DDPM (epsilon prediction,
  Ho et al., arXiv 2006.11239) and the rectified-flow model (velocity eps - x0, Liu et al.,
  arXiv 2209.03003), no attention.
- :class:`DigitsClassifier`: a small CNN whose penultimate layer gives the features for a
  Frechet distance on this data (Heusel et al., arXiv 1706.08500, with a domain network in
  place of InceptionV3).
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

__all__ = ["make_unet", "DigitsClassifier", "UNET_CONFIG"]

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)


def make_unet() -> UNet2DModel:
    """A freshly initialised demo UNet (about 0.27 M parameters, 1 MB in float32)."""
    return UNet2DModel(**UNET_CONFIG)


class DigitsClassifier(ModelMixin, ConfigMixin):
    """Three conv blocks (16x16 -> 8x8 -> 4x4), a flattened ``feature_dim`` SiLU layer, and linear logits.

    Input: (B, in_channels, 16, 16) images in [-1, 1], any float dtype.
    ``features(x)``: (B, feature_dim) float32; ``forward(x)``: (B, num_classes) logits.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        sample_size: int = 16,
        channels: tuple[int, ...] = (32, 64, 128),
        feature_dim: int = 64,
        num_classes: int = 10,
        dropout: float = 0.2,
    ):
        super().__init__()
        layers, c_in = [], in_channels
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            if i < len(channels) - 1:
                layers.append(nn.AvgPool2d(2))
            c_in = c
        self.conv = nn.Sequential(*layers)
        side = sample_size // 2 ** (len(channels) - 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, feature_dim), nn.SiLU())
        self.drop = nn.Dropout(dropout)
        self.logits = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) float32 penultimate-layer features."""
        return self.head(self.conv(x.to(self.dtype))).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) logits."""
        return self.logits(self.drop(self.features(x).to(self.dtype)))
