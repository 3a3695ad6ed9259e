"""What a sweep samples from and measures with: model sources and the feature network with its reference."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from .._io import UserError, file_digest, tree_digest
from .config import MODEL_KINDS, _hash, _require
from .data import class_labels, images_to_float, read_prompts, reference_batches, reference_digest

# how class labels follow from sample indices (data.class_labels); part of a class-conditional model's digest
LABELS = "balanced blocks, seeded shuffle"

# --- models and features ------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class UNetSource:
    """Unconditional (or class-conditional) UNet2DModel with its training scheduler config.

    ``generate(scheduler, n_steps, indices, guidance)`` returns images in [0, 1], float32,
    (B, C, H, W), each from noise seeded by its sample index; labels from :func:`data.class_labels`.
    The scheduler state stays float32; the UNet runs in its own dtype.
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
            labels = torch.as_tensor(class_labels(indices, self.num_classes, self.seed), device=self.device)
        for t in scheduler.timesteps:
            x_in = (x if scale is None else scale(x, t)).to(self.unet.dtype)
            out = self.unet(x_in, t, class_labels=labels).sample.float()
            x = scheduler.step(out, t, x).prev_sample
        return (x.float().clamp(-1, 1) + 1) / 2


class PipelineSource:
    """A Diffusers pipeline called with one generator per sample (seeded by its index), ``guidance_scale``
    and ``output_type="pt"``: pixel or latent (DiT, SD, SD3). Prompts (``prompts`` or ``prompts_file``)
    cycle over sample indices; ``num_classes`` passes ``class_labels`` from :func:`data.class_labels`."""

    def __init__(self, pipe, spec: dict, seed: int, device):
        self.pipe = pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)  # the sweep shows its own progress
        self.scheduler_config = pipe.scheduler.config
        self.spec, self.seed, self.device = spec, seed, device
        self.prompts = spec.get("prompts")
        if "prompts_file" in spec:
            self.prompts = read_prompts(spec["prompts_file"], spec.get("prompts_column"))
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
            kwargs["class_labels"] = class_labels(indices, int(self.class_labels), self.seed)
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
    dtype = model_dtype(model, device)
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype)
    if kind == "unet":
        source = UNetSource(pipe.unet, pipe.scheduler.config, seed, device, model.get("num_classes"))
    else:
        source = PipelineSource(pipe, model, seed, device)
    source.digest = tree_digest(path)
    if model.get("num_classes"):
        source.digest = _hash([source.digest, LABELS])
    return source


def model_dtype(model: dict, device) -> torch.dtype:
    """``model.torch_dtype`` (default float32); float16 is refused on the CPU, where its kernels are missing or slow."""
    name = model.get("torch_dtype", "float32")
    dtype = getattr(torch, name)
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise UserError("model.torch_dtype 'float16' runs on a GPU only; on the CPU use 'bfloat16' or 'float32'")
    return dtype


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


def cache_dir() -> Path:
    """Where reference statistics are kept across sweeps: $FASTSAMPLE_CACHE, else $XDG_CACHE_HOME/fastsample,
    else ~/.cache/fastsample."""
    if os.environ.get("FASTSAMPLE_CACHE"):
        return Path(os.environ["FASTSAMPLE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastsample"


def _cached_statistics(cache: Path, compute, identity: dict):
    """Statistics from ``cache``, or ``compute()`` saved there (by the main process first; others read it)."""
    from accelerate import PartialState

    from ..fid import FeatureStatistics

    with PartialState().main_process_first():
        if cache.is_file():
            try:
                return FeatureStatistics.load(cache)
            except ValueError as e:
                print(f"sweep: {e}; recomputing the reference statistics", file=sys.stderr)
        stats = compute()
        cache.parent.mkdir(parents=True, exist_ok=True)
        stats.save(cache, metadata=identity)
        return stats


def _data_statistics(spec, features: FeatureNet, batch_size: int = 100):
    """Feature statistics of every reference image of ``spec`` (see :mod:`fastsample.sweep.data`)."""
    from ..fid import FeatureStatistics

    name = spec if isinstance(spec, str) else spec.get("torchvision") or spec.get("datasets")
    print(f"sweep: computing the reference statistics of {name} (once; cached in {cache_dir()})", file=sys.stderr)
    stats = FeatureStatistics()
    for batch in reference_batches(spec, batch_size):
        for x in images_to_float(batch):
            stats.update(features(x))
    if stats.n < 2:
        raise UserError(f"reference {name}: {stats.n} image(s); the statistics need at least 2")
    return stats


def reference_statistics(metric: dict, features: FeatureNet, folder: Path):
    """(ReferenceStatistics, SHA-256 of its float64 mean and covariance) of ``metric.reference``.

    A .npz file is read as it is. The demo's held-out digits are cached in ``folder``; an image folder,
    a torchvision dataset or a ``datasets`` dataset in :func:`cache_dir`, under a name made of the
    data's content digest and the feature network's identity and digest, so every cell and every later
    sweep reuses them and edited data or another network recompute them.
    """
    from ..fid import FeatureStatistics, ReferenceStatistics

    ref = _require(metric, "reference", "metric")
    key = [features.identity, features.digest]
    if ref == "demo-heldout":

        def compute():
            from .. import demo

            _, held = demo.digits_split()
            stats = FeatureStatistics()
            for b in torch.split(held.images, 256):
                stats.update(features((b + 1) / 2))
            return stats

        stats = _cached_statistics(folder / f"reference_stats-{_hash(key)}.npz", compute, features.identity)
    elif isinstance(ref, str) and Path(ref).is_file():
        stats = FeatureStatistics.load(Path(ref))
    else:
        digest = reference_digest(ref)
        cache = cache_dir() / "reference_stats" / f"{_hash([digest, *key])}.npz"
        stats = _cached_statistics(cache, lambda: _data_statistics(ref, features), features.identity)
    stats.check_compatible(features.identity)
    h = hashlib.sha256()
    for t in (stats.mean, stats.cov):
        h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return ReferenceStatistics(stats.mean, stats.cov, device=features.device), h.hexdigest()
