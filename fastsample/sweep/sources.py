"""What a sweep samples from and measures with: model sources and the feature network with its reference."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from .._io import file_digest, tree_digest
from .config import MODEL_KINDS, _hash, _require

# --- models and features ------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class UNetSource:
    """Unconditional (or class-conditional) UNet2DModel with its training scheduler config.

    ``generate(scheduler, n_steps, indices, guidance)`` returns images in [0, 1], float32,
    (B, C, H, W), each from noise seeded by its sample index.
    """

    def __init__(self, unet, scheduler_config, seed: int, device, num_classes: int | None = None):
        self.unet = unet.to(device).eval()
        self.scheduler_config = scheduler_config
        self.seed, self.device, self.num_classes = seed, device, num_classes
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.shape = (unet.config.in_channels, *size)

    def noise(self, indices) -> torch.Tensor:
        out = []
        for i in indices:
            g = torch.Generator().manual_seed((self.seed << 32) + int(i))
            out.append(torch.randn(self.shape, generator=g))
        return torch.stack(out).to(self.device)

    @torch.no_grad()
    def generate(self, scheduler, n_steps: int, indices, guidance: float) -> torch.Tensor:
        if guidance != 1.0:
            raise ValueError("guidance scales other than 1 need a conditional pipeline model (kind = 'pipeline')")
        scheduler.set_timesteps(n_steps, device=self.device)
        x = self.noise(indices) * getattr(scheduler, "init_noise_sigma", 1.0)  # FlowMatch schedulers: none
        scale = getattr(scheduler, "scale_model_input", None)
        labels = None
        if self.num_classes:
            labels = torch.as_tensor([int(i) % self.num_classes for i in indices], device=self.device)
        for t in scheduler.timesteps:
            out = self.unet(x if scale is None else scale(x, t), t, class_labels=labels).sample
            x = scheduler.step(out, t, x).prev_sample
        return (x.float().clamp(-1, 1) + 1) / 2


class PipelineSource:
    """Any Diffusers pipeline that takes ``latents``; prompts or class labels cycle over sample indices."""

    def __init__(self, pipe, spec: dict, seed: int, device):
        self.pipe = pipe.to(device)
        self.scheduler_config = pipe.scheduler.config
        self.spec, self.seed, self.device = spec, seed, device
        self.prompts = spec.get("prompts")
        self.class_labels = spec.get("num_classes")
        self.call_kwargs = dict(spec.get("call_kwargs", {}))

    @torch.no_grad()
    def generate(self, scheduler, n_steps: int, indices, guidance: float) -> torch.Tensor:
        self.pipe.scheduler = scheduler
        kwargs = dict(self.call_kwargs)
        gens = [torch.Generator().manual_seed((self.seed << 32) + int(i)) for i in indices]
        if self.prompts:
            kwargs["prompt"] = [self.prompts[int(i) % len(self.prompts)] for i in indices]
        if self.class_labels:
            kwargs["class_labels"] = [int(i) % int(self.class_labels) for i in indices]
        out = self.pipe(
            num_inference_steps=n_steps, guidance_scale=guidance, generator=gens, output_type="pt", **kwargs
        )
        images = out.images if hasattr(out, "images") else out[0]
        return images.float().clamp(0, 1)


def build_source(model: dict, seed: int, device):
    """The model of a validated config's ``model`` table; ``.digest``: SHA-256 of its folder's files."""
    kind = _require(model, "kind", "model")
    if kind in ("demo-ddpm", "demo-flow"):
        from .. import demo

        pipe = demo.load_ddpm_pipeline() if kind == "demo-ddpm" else demo.load_flow_pipeline()
        source = UNetSource(pipe.unet, pipe.scheduler.config, seed, device)
        source.digest = tree_digest(demo.WEIGHTS_DIR / kind.removeprefix("demo-"))
        return source
    if kind not in ("unet", "pipeline"):
        raise ValueError(f"model kind {kind!r} unknown; allowed: {', '.join(map(repr, MODEL_KINDS))}")
    from diffusers import DiffusionPipeline

    path = _require(model, "path", "model")
    if kind == "unet":
        pipe = DiffusionPipeline.from_pretrained(path)
        source = UNetSource(pipe.unet, pipe.scheduler.config, seed, device, model.get("num_classes"))
    else:
        dtype = getattr(torch, model.get("torch_dtype", "float32"))
        source = PipelineSource(DiffusionPipeline.from_pretrained(path, torch_dtype=dtype), model, seed, device)
    source.digest = tree_digest(path)
    return source


def _luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma as PIL's "L" (ITU-R 601-2: gray stays gray); other inputs as they are."""
    if images.shape[1] != 3:
        return images
    w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * w.view(1, 3, 1, 1)).sum(1, keepdim=True)


class FeatureNet:
    """Images in [0, 1] (B, C, H, W) float -> (B, F) float64 features, plus an identity for the stats.

    ``digest``: SHA-256 of the network's weight files.
    """

    def __init__(self, metric: dict, device):
        kind = _require(metric, "features", "metric")
        self.device = device
        if kind == "demo-classifier":
            from .. import demo

            net = demo.load_classifier().to(device).eval()
            self.fn = lambda x: net.features(_luma(x) * 2 - 1)
            self.identity = {"features": "demo-classifier"}
            self.digest = tree_digest(demo.WEIGHTS_DIR / "classifier")
        elif kind == "inception":
            from ..fid.inception import FIDInceptionV3, find_weights

            mode = metric.get("resize", "pytorch-fid")
            weights = find_weights(metric.get("weights"))
            net = FIDInceptionV3.from_weights(weights, resize=mode).to(device).eval()
            self.digest = file_digest(weights)
            self.fn = net
            self.identity = {"features": "inception-pool3", "resize": mode}
        else:
            raise ValueError(f"metric features {kind!r} unknown; allowed: 'demo-classifier', 'inception'")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images.to(self.device)).double()


def reference_statistics(metric: dict, features: FeatureNet, folder: Path):
    """(ReferenceStatistics, SHA-256 of its float64 mean and covariance): a .npz file, or the demo's
    held-out digits, cached in ``folder`` under a name that carries the feature network's digest."""
    from ..fid import FeatureStatistics, ReferenceStatistics

    ref = _require(metric, "reference", "metric")
    if ref == "demo-heldout":
        cache = folder / f"reference_stats-{_hash([features.identity, features.digest])}.npz"
        stats = None
        if cache.is_file():
            try:
                stats = FeatureStatistics.load(cache)
            except ValueError as e:
                print(f"sweep: {e}; recomputing the reference statistics", file=sys.stderr)
        if stats is None:
            from .. import demo

            _, held = demo.digits_split()
            stats = FeatureStatistics()
            for b in torch.split(held.images, 256):
                stats.update(features((b + 1) / 2))
            stats.save(cache, metadata=features.identity)
    else:
        stats = FeatureStatistics.load(Path(ref))
    stats.check_compatible(features.identity)
    h = hashlib.sha256()
    for t in (stats.mean, stats.cov):
        h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return ReferenceStatistics(stats.mean, stats.cov, device=features.device), h.hexdigest()

