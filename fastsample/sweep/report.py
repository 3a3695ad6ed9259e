"""What a sweep shows besides its Frechet distances: more metrics, the floor, sample sheets and plots.

- ``[metric] metrics = ["fd", "kid", "prdc"]``: KID (arXiv 1801.01401) and precision/recall/density/
  coverage (arXiv 1904.06991, 2002.09797) in the sweep's feature space, on a seeded uniform subsample
  of at most ``MAX_SAMPLES`` features per cell (:class:`~fastsample.fid.manifold.Reservoir`) against
  the reference set's features (the demo's held-out digits, or ``reference_images``, a folder).
- The floor: the Frechet distance a perfect generator would get at the sweep's sample count, i.e. real
  images not in the reference (the demo's training digits, or ``floor_stats``, a ``.npz`` of such a
  set) against the reference; drawn on the FD plot.
- Sample sheets: per NFE a PNG with one row per scheduler and the same ``SHEET_SAMPLES`` seeds (sample
  indices) in the columns, from a strip each cell saves next to its result.
- Plots: one per metric (``fd_vs_nfe.png``, ``kid_vs_nfe.png``, ``precision_vs_nfe.png``, ...), NFE ticks
  at the swept values.

This module is evaluation code, used by :mod:`fastsample.sweep`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

__all__ = ["MAX_SAMPLES", "SHEET_SAMPLES", "sweep_metrics"]

SHEET_SAMPLES = 8
MAX_SAMPLES = 10_000
_ALLOWED = ("fd", "kid", "prdc")
_PLOTTED = {
    "fd": "Frechet distance",
    "kid": "KID",
    "precision": "precision",
    "recall": "recall",
    "density": "density",
    "coverage": "coverage",
}


def sweep_metrics(metric: dict) -> list[str]:
    """The validated ``[metric] metrics`` list (default ``["fd"]``; "fd" is always computed)."""
    names = metric.get("metrics", ["fd"])
    if not isinstance(names, list) or "fd" not in names or set(names) - set(_ALLOWED) or len(set(names)) != len(names):
        raise ValueError(
            f"sweep config: [metric] metrics must be distinct names from {list(_ALLOWED)} with 'fd', got {names}"
        )
    return names


def _gather(rows: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, rows.cpu())
        rows = torch.cat(parts)
    return rows


def sampled_metrics(names: list[str], fake: torch.Tensor, real: torch.Tensor, seed: int) -> dict:
    """KID / P/R/D/C of the cell's sampled features (gathered over processes) against the reference features."""
    from ..fid.kid import kernel_inception_distance
    from ..fid.manifold import precision_recall_density_coverage

    fake = _gather(fake)
    if fake.shape[0] > MAX_SAMPLES:
        fake = fake[torch.randperm(fake.shape[0], generator=torch.Generator().manual_seed(seed))[:MAX_SAMPLES]]
    real = real.to(fake.device)
    out = {"sampled_features": int(fake.shape[0])}
    if "kid" in names:
        size = min(1000, len(real), len(fake))
        g = torch.Generator().manual_seed(seed)
        out["kid"], out["kid_std"] = kernel_inception_distance(real, fake, 100, size, generator=g)
    if "prdc" in names:
        out.update(precision_recall_density_coverage(real, fake))
    return out


def _image_folder_features(folder: str, features) -> torch.Tensor:
    """Features of every image of ``folder`` (read as :func:`fastsample.fid.cli.read_image` reads them)."""
    from ..fid.cli import _list_images, read_image

    return torch.cat([features(read_image(f)[None].float() / 255.0) for f in _list_images(Path(folder))])


def reference_features(metric: dict, features) -> torch.Tensor:
    """(N, F) features of the reference images: the demo's held-out digits or ``reference_images``."""
    if metric.get("reference") == "demo-heldout":
        from .. import demo

        _, held = demo.digits_split()
        return torch.cat([features((b + 1) / 2) for b in torch.split(held.images, 256)])
    if "reference_images" not in metric:
        raise ValueError(
            "sweep config: metrics 'kid' and 'prdc' need [metric] reference_images (a folder of the "
            "reference images), or reference = 'demo-heldout'"
        )
    return _image_folder_features(metric["reference_images"], features)


def floor(metric: dict, features, reference, num_samples: int) -> dict | None:
    """{"fd", "count", "source"}: real images outside the reference against it, or None when none are known."""
    from ..fid import FeatureStatistics

    if metric.get("reference") == "demo-heldout":
        from .. import demo

        train, _ = demo.digits_split()
        stats = FeatureStatistics()
        for b in torch.split(train.images[:num_samples], 256):
            stats.update(features((b + 1) / 2))
        source = "demo training digits"
    elif "floor_stats" in metric:
        stats = FeatureStatistics.load(metric["floor_stats"])
        stats.check_compatible(features.identity)
        source = str(metric["floor_stats"])
    else:
        return None
    return {"fd": float(stats.distance_to(reference)), "count": stats.n, "source": source}


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return x.permute(0, 2, 3, 1).numpy()


def strip_png(images: torch.Tensor) -> bytes:
    """The first ``SHEET_SAMPLES`` images in [0, 1] (B, C, H, W) side by side, as PNG bytes."""
    from PIL import Image

    arr = _to_uint8(images[:SHEET_SAMPLES])
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(list(arr), axis=1)).save(buf, format="PNG")
    return buf.getvalue()


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def sample_sheet(strips: list[tuple[str, Path]], title: str) -> bytes:
    """One row per (label, strip PNG path), labelled; returns PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for _, p in strips]
    width = max(im.shape[1] for im in images)
    fig, axes = plt.subplots(len(images), 1, figsize=(max(4.0, width / 24), 0.9 * len(images) + 0.6), squeeze=False)
    for ax, (label, _), im in zip(axes[:, 0], strips, images):
        ax.imshow(im, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _figure_png(fig)


def metric_plots(cells: list[dict], cfg, floor_info: dict | None) -> dict[str, bytes]:
    """{file name: PNG bytes}: one plot per metric found in the cells, the floor on the FD plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for key, label in _PLOTTED.items():
        if not any(c.get(key) is not None for c in cells):
            continue
        gs = cfg.guidance_scales
        fig, axes = plt.subplots(1, len(gs), figsize=(6.5 * len(gs), 4.5), squeeze=False)
        for ax, g in zip(axes[0], gs):
            for spec in cfg.schedulers:
                pts = sorted(
                    (c["nfe"], c[key])
                    for c in cells
                    if c["scheduler"] == spec.label and c["guidance"] == g and c.get(key) is not None
                )
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=spec.label)
            if key == "fd" and floor_info is not None:
                ax.axhline(floor_info["fd"], color="k", ls="--", lw=1, label=f"floor: {floor_info['count']} real")
            ax.set_xlabel("NFE (model evaluations)")
            ax.set_ylabel(label)
            if key in ("fd", "kid") and all(c.get(key, 1) is None or c.get(key, 1) > 0 for c in cells):
                ax.set_yscale("log")
            ax.set_xticks(cfg.nfe, [str(n) for n in cfg.nfe])
            ax.set_title(cfg.name + (f" (guidance {g})" if len(gs) > 1 else ""))
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        out[f"{key}_vs_nfe.png"] = _figure_png(fig)
    return out
