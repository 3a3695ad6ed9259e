"""A sweep's metrics: which it takes, their settings, the encoders they need, and what keys their cells.

``[metric] metrics`` lists any of :data:`METRICS` ("fd" is always computed):

- ``fd``: Frechet distance in the sweep's feature space (``features``) against ``reference``.
- ``kid``, ``prdc``: KID (arXiv 1801.01401) and precision/recall/density/coverage (arXiv 1904.06991,
  2002.09797) in the sweep's feature space, on a seeded subsample of at most ``MAX_SAMPLES`` features per
  cell against the reference images' features (see :mod:`.report`).
- ``fd_dinov2``: Frechet distance of DINOv2 features (dgm-eval's conventions,
  :class:`~fastsample.fid.encoders.DINOv2Encoder`) of every generated image against the reference images'
  (float64 streaming sums).
- ``rmse``: per-sample RMSE of the images against a reference solution of the same noise, mean and bootstrap
  95% interval (:mod:`.reference`; ``[metric] reference_solver`` names the solver).
- ``fd_ci``: a bootstrap 95% interval of the Frechet distance over the cell's samples
  (:func:`fastsample.fid.bootstrap.fd_bootstrap`; every sample's features are kept, so at most ``MAX_SAMPLES``).
- ``cmmd``: CMMD (arXiv 2401.09603: unit CLIP embeddings, Gaussian RBF sigma 10, x1000, unbiased;
  :class:`~fastsample.fid.encoders.CLIPEncoder`) on a seeded subsample of at most ``MAX_SAMPLES`` per cell
  against the reference images'.

The reference images are the demo's held-out digits (``reference = "demo-heldout"``) or the folder
``reference_images``. The encoders come from ``dinov2`` / ``clip`` (a ``save_pretrained`` folder, relative
to the config, or a hub id in the Hugging Face cache; default the published models) and are fetched into
that cache only with ``download = true``.

A cell's key holds :func:`metrics_key`: the names, :data:`SETTINGS`, a SHA-256 of the reference features
in every space used, and each encoder's identity and weights digest, so changing any of them (an edited
encoder folder included) recomputes the cells.

This module is evaluation code, used by :mod:`fastsample.sweep`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

__all__ = ["MAX_SAMPLES", "METRICS", "SETTINGS", "EncoderMetrics", "check_encoders", "metrics_key", "sweep_metrics"]

METRICS = ("fd", "kid", "prdc", "fd_dinov2", "cmmd", "rmse", "fd_ci")
ENCODERS = {"fd_dinov2": "dinov2", "cmmd": "clip"}  # metric -> [metric] key naming its encoder
DEFAULT_ENCODERS = {"dinov2": "facebook/dinov2-large", "clip": "openai/clip-vit-large-patch14-336"}
MAX_SAMPLES = 10_000
SETTINGS = {
    "max_samples": MAX_SAMPLES,
    "kid": {"subsets": 100, "subset_size": 1000, "degree": 3},
    "prdc": {"k": 5},
    "cmmd": {"sigma": 10.0, "scale": 1000.0, "unbiased": True},
    "bootstrap": {"n_boot_fd": 200, "n_boot_rmse": 2000, "level": 0.95},
}


def sweep_metrics(metric: dict) -> list[str]:
    """The validated ``[metric] metrics`` list (default ``["fd"]``; "fd" is always computed)."""
    names = metric.get("metrics", ["fd"])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"sweep config: [metric] metrics must be a list of names from {list(METRICS)}, got {names!r}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"sweep config: [metric] metrics: unknown {unknown}; valid names: {', '.join(METRICS)}")
    if "fd" not in names or len(set(names)) != len(names):
        raise ValueError(f"sweep config: [metric] metrics must hold 'fd' and no name twice, got {names}")
    return names


def _in_hf_cache(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except ValueError:  # not a valid hub id
        return False


def check_encoders(metric: dict, names: list[str], base: Path) -> None:
    """Check ``dinov2`` / ``clip`` / ``download``; an encoder folder (relative to ``base``) becomes absolute."""
    used = {ENCODERS[m]: m for m in names if m in ENCODERS}
    download = metric.get("download", False)
    if not isinstance(download, bool):
        raise ValueError(f"metric.download must be true or false, got {download!r}")
    if "download" in metric and not used:
        raise ValueError("metric.download applies to the encoders of metrics 'fd_dinov2' and 'cmmd', not listed")
    for metric_name, enc in ENCODERS.items():
        if enc in metric and enc not in used:
            raise ValueError(f"metric.{enc} applies to metric '{metric_name}', which [metric] metrics does not list")
        if enc not in used:
            continue
        value = metric.get(enc, DEFAULT_ENCODERS[enc])
        if not isinstance(value, str) or not value:
            raise ValueError(f"metric.{enc} must be a folder or a Hugging Face hub id, got {value!r}")
        folder = (base / value).expanduser()
        if folder.is_dir():
            metric[enc] = str(folder.resolve())
        elif not download and not _in_hf_cache(value):
            raise ValueError(
                f"metric.{enc} {value!r}: no such folder (relative to the config) and not in the Hugging Face "
                "cache; set [metric] download = true to fetch it"
            )


def reference_batches(metric: dict):
    """The reference images as float [0, 1] (B, C, H, W) batches: the demo's held-out digits or ``reference_images``."""
    if metric.get("reference") == "demo-heldout":
        from .. import demo

        _, held = demo.digits_split()
        for b in torch.split(held.images, 256):
            yield (b + 1) / 2
        return
    if "reference_images" not in metric:
        raise ValueError(
            "sweep config: metrics other than 'fd' need [metric] reference_images (a folder of the reference "
            "images), or reference = 'demo-heldout'"
        )
    from ..fid.cli import _list_images, read_image

    for f in _list_images(Path(metric["reference_images"])):
        yield read_image(f)[None].float() / 255.0


def reference_features(metric: dict, features) -> torch.Tensor:
    """(N, F) features of the reference images in the sweep's feature space (for kid / prdc)."""
    return torch.cat([features(b) for b in reference_batches(metric)])


def gather(rows: torch.Tensor) -> torch.Tensor:
    """Rows of every process, concatenated in process order (this process's rows when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, rows.cpu())
        rows = torch.cat(parts)
    return rows


def _subsample(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """At most ``MAX_SAMPLES`` of the gathered rows (a seeded uniform choice when there are more)."""
    rows = gather(rows)
    if rows.shape[0] > MAX_SAMPLES:
        rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:MAX_SAMPLES]]
    return rows


def sampled_metrics(names: list[str], fake: torch.Tensor, real: torch.Tensor, seed: int) -> dict:
    """KID / P/R/D/C of the cell's sampled features (gathered over processes) against the reference features."""
    from ..fid.kid import kernel_inception_distance
    from ..fid.manifold import precision_recall_density_coverage

    fake = _subsample(fake, seed)
    real = real.to(fake.device)
    out = {"sampled_features": int(fake.shape[0])}
    if "kid" in names:
        kid = SETTINGS["kid"]
        size = min(kid["subset_size"], len(real), len(fake))
        g = torch.Generator().manual_seed(seed)
        out["kid"], out["kid_std"] = kernel_inception_distance(
            real, fake, kid["subsets"], size, degree=kid["degree"], generator=g
        )
    if "prdc" in names:
        out.update(precision_recall_density_coverage(real, fake, SETTINGS["prdc"]["k"]))
    return out


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()).hexdigest()


class EncoderMetrics:
    """``fd_dinov2`` / ``cmmd`` of a sweep: their encoders, the reference side, and per-cell accumulation.

    ``start()`` gives a cell's accumulator, ``add(acc, images)`` feeds it a batch of generated images in
    [0, 1] (B, C, H, W), ``finish(acc)`` all-reduces / gathers over processes and returns the values.
    """

    def __init__(self, names: list[str], metric: dict, device, seed: int):
        self.names, self.seed, self.encoders = [n for n in names if n in ENCODERS], seed, {}
        for m in self.names:
            enc = ENCODERS[m]
            source, download = metric.get(enc, DEFAULT_ENCODERS[enc]), bool(metric.get("download", False))
            if enc == "dinov2":
                from ..fid.encoders import DINOv2Encoder as cls
            else:
                from ..fid.encoders import CLIPEncoder as cls
            self.encoders[enc] = cls(source, download=download).to(device)
        self.reference = {}
        if not self.encoders:
            return
        from ..fid.manifold import Reservoir

        acc = self.start()
        if "clip" in acc:
            acc["clip"] = Reservoir(MAX_SAMPLES, seed + 1)  # not the cells' seed stream
        for batch in reference_batches(metric):
            self.add(acc, batch)
        if "dinov2" in acc:
            self.reference["dinov2"] = acc["dinov2"]
        if "clip" in acc:
            self.reference["clip"] = acc["clip"].rows

    def key(self) -> dict:
        """Each encoder's identity, weights digest and reference-features digest."""
        out = {}
        for enc, net in self.encoders.items():
            ref = self.reference[enc]
            ref_digest = _digest(torch.cat([ref.mean[None], ref.cov])) if enc == "dinov2" else _digest(ref)
            out[enc] = {**net.identity, "weights_sha256": net.weights_digest, "reference_sha256": ref_digest}
        return out

    def start(self) -> dict:
        from ..fid import FeatureStatistics
        from ..fid.manifold import Reservoir

        acc = {}
        if "dinov2" in self.encoders:
            acc["dinov2"] = FeatureStatistics()
        if "clip" in self.encoders:
            acc["clip"] = Reservoir(MAX_SAMPLES, self.seed)
        return acc

    def add(self, acc: dict, images: torch.Tensor) -> None:
        for enc, net in self.encoders.items():
            feats = net(images).double()
            if enc == "dinov2":
                acc[enc].update(feats)
            else:
                acc[enc].add(feats)

    def finish(self, acc: dict) -> dict:
        from ..fid.kid import rbf_mmd2

        out = {}
        if "dinov2" in acc:
            stats = acc["dinov2"].all_reduce()
            out["fd_dinov2"] = float(stats.distance_to(self.reference["dinov2"].reference()))
        if "clip" in acc:
            fake = _subsample(acc["clip"].rows, self.seed)
            cmmd = SETTINGS["cmmd"]
            out["cmmd"] = float(rbf_mmd2(self.reference["clip"], fake, cmmd["sigma"], cmmd["scale"], cmmd["unbiased"]))
            out["cmmd_samples"] = int(fake.shape[0])
        return out


def metrics_key(names: list[str], ref_features: torch.Tensor | None, encoders: EncoderMetrics) -> dict | None:
    """What a cell's extra metrics depend on (None for "fd" alone, which the rest of the key covers)."""
    if names == ["fd"]:
        return None
    key = {"names": names, "settings": SETTINGS, "encoders": encoders.key()}
    if ref_features is not None:
        key["reference_features"] = _digest(ref_features)
    return key
