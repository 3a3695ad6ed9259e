"""Several image metrics in one pass: each encoder runs once per batch and feeds every metric that uses it.

Metrics (``METRICS``) and what they keep:

- ``fid``: Frechet distance of Inception pool3 features (float64 streaming sums, :class:`FeatureStatistics`).
- ``kid``: KID on Inception features (seeded subsample, 100 subsets of min(1000, n)).
- ``prdc``: precision, recall, density, coverage on Inception features (k = 5, seeded subsample).
- ``fd_dinov2``: Frechet distance of DINOv2 CLS features (streaming float64 sums).
- ``cmmd``: CMMD on unit-norm CLIP embeddings (seeded subsample; unbiased estimate).

Metrics that need the features themselves keep a seeded uniform subsample of at most ``max_samples``
per side (:class:`~fastsample.fid.manifold.Reservoir`); :meth:`MetricSuite.compute` reports, per metric,
on how many features it was computed.
"""

from __future__ import annotations

import os

import torch

from .inception import FIDInceptionV3
from .kid import kernel_inception_distance, rbf_mmd2
from .manifold import Reservoir, precision_recall_density_coverage
from .stats import FeatureStatistics

__all__ = ["METRICS", "MetricSuite"]

METRICS = {"fid": "inception", "kid": "inception", "prdc": "inception", "fd_dinov2": "dinov2", "cmmd": "clip"}
_SAMPLED = ("kid", "prdc", "cmmd")
_STREAMED = ("fid", "fd_dinov2")


def parse_metrics(spec: str | list[str]) -> list[str]:
    """``"fid,cmmd"`` or a list -> validated metric names (order kept, duplicates refused)."""
    names = [m.strip() for m in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"metrics must be distinct names from {sorted(METRICS)}, got {names}")
    return names


class MetricSuite:
    """Real-vs-generated metrics over streamed image batches, every encoder run once per batch.

    Args:
        metrics: names from :data:`METRICS`.
        device: where the encoders run and the statistics live.
        inception_weights: Inception weights file (None: torch hub cache; "random": untrained, for tests).
        resize: Inception resize mode (see ``RESIZE_MODES``).
        dinov2, clip: ``save_pretrained`` folders or hub ids of the DINOv2 / CLIP models.
        download: let missing weights be downloaded (Inception from its release URL with a hash check,
            the Hugging Face models into their cache).
        max_samples: features kept per side for kid / prdc / cmmd (seeded uniform subsample beyond).
        seed: seed of the subsamples and of KID's subsets.
        k: neighbours for prdc.
    """

    def __init__(
        self,
        metrics: list[str],
        device: torch.device | str = "cpu",
        inception_weights: str | os.PathLike | None = None,
        resize: str = "pytorch-fid",
        dinov2: str | os.PathLike = "facebook/dinov2-large",
        clip: str | os.PathLike = "openai/clip-vit-large-patch14-336",
        download: bool = False,
        max_samples: int = 10_000,
        seed: int = 0,
        k: int = 5,
    ):
        self.metrics = parse_metrics(metrics)
        self.device, self.seed, self.k = torch.device(device), seed, k
        self.encoders = {}
        for name in dict.fromkeys(METRICS[m] for m in self.metrics):
            if name == "inception":
                net = FIDInceptionV3.from_weights(inception_weights, resize=resize, download=download)
            elif name == "dinov2":
                from .encoders import DINOv2Encoder

                net = DINOv2Encoder(dinov2, download=download)
            else:
                from .encoders import CLIPEncoder

                net = CLIPEncoder(clip, download=download)
            self.encoders[name] = net.to(self.device)
        self.streamed = {}  # (encoder, side) -> FeatureStatistics
        self.sampled = {}  # (encoder, side) -> Reservoir
        for m in self.metrics:
            enc = METRICS[m]
            for i, side in enumerate(("real", "fake")):
                if m in _STREAMED:
                    ident = self.encoders[enc].identity
                    self.streamed[enc, side] = FeatureStatistics(
                        ident["dim"], self.device, ident["feature_network"], ident["resize_mode"]
                    )
                else:
                    self.sampled.setdefault((enc, side), Reservoir(max_samples, seed + i))

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        """Run each needed encoder once on the batch and feed its features to every metric that uses it."""
        side = "real" if real else "fake"
        for enc, net in self.encoders.items():
            features = net(images.to(self.device))
            if (enc, side) in self.streamed:
                self.streamed[enc, side].update(features)
            if (enc, side) in self.sampled:
                self.sampled[enc, side].add(features.float())

    def statistics(self, encoder: str, side: str) -> FeatureStatistics:
        """The streaming statistics of one encoder and side (for saving, or to replace by a file's)."""
        return self.streamed[encoder, side]

    def compute(self) -> dict[str, float | int]:
        """{metric: value} (prdc gives four keys, kid its mean and std) plus ``<metric>_samples`` counts."""
        out = {}
        for m in self.metrics:
            enc = METRICS[m]
            if m in _STREAMED:
                real, fake = self.streamed[enc, "real"], self.streamed[enc, "fake"]
                real.check_compatible(fake)
                out[m] = float(fake.distance_to(real.reference()))
                out[f"{m}_samples"] = min(real.n, fake.n)
                continue
            real, fake = (self.sampled[enc, s].rows for s in ("real", "fake"))
            if real is None or fake is None or min(len(real), len(fake)) < 2:
                raise RuntimeError(f"{m} needs at least 2 real and 2 generated images")
            out[f"{m}_samples"] = min(len(real), len(fake))
            if m == "kid":
                g = torch.Generator().manual_seed(self.seed)
                size = min(1000, len(real), len(fake))
                out["kid"], out["kid_std"] = kernel_inception_distance(real, fake, 100, size, generator=g)
            elif m == "prdc":
                out.update(precision_recall_density_coverage(real, fake, self.k))
            else:
                out["cmmd"] = float(rbf_mmd2(real, fake))
        return out
