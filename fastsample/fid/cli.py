"""``fastsample fid A B``: the Frechet distance between two image folders or ``.npz`` statistics files.

Behaves like pytorch-fid's command line (``python -m pytorch_fid A B``): same arguments
(``--batch-size``, ``--num-workers``, ``--device``, ``--dims``, ``--save-stats A OUT.npz``) and the
same output line ``FID:  <value>``, plus ``--weights PATH`` (the Inception weights file; default: the
torch hub cache) and ``--resize {pytorch-fid,clean-fid,torch-fidelity}``, which is recorded in the
statistics files we write and checked against the files we read.

``--metrics fid,kid,prdc,fd_dinov2,cmmd`` computes several metrics between two image folders in one
pass (:class:`~fastsample.fid.suite.MetricSuite`: each encoder runs once per batch), printing one
``NAME: value`` line each; ``--dinov2`` / ``--clip`` name the Hugging Face models and ``--download``
lets missing weights be fetched (Inception hash-checked into the torch hub cache).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .._args import ArgumentParser, error_line, positive_int
from .._args import device as device_arg
from .._io import UserError, refuse_existing
from .inception import BLOCK_DIMS, RESIZE_MODES, FIDInceptionV3, network_name
from .stats import FeatureStatistics, fid_from_statistics
from .suite import METRICS, MetricSuite, parse_metrics

__all__ = ["IMAGE_EXTENSIONS", "compute_statistics", "main"]

IMAGE_EXTENSIONS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}
DESCRIPTION = "Frechet distance between two image folders or .npz statistics files (pytorch-fid compatible)."


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=str, nargs=2, help="paths to image folders or .npz statistics files")
    p.add_argument("--batch-size", type=positive_int, default=50, help="batch size (default 50)")
    p.add_argument("--num-workers", type=int, help="data loader processes (default min(8, CPU count))")
    p.add_argument("--device", type=device_arg, default=None, help="e.g. cuda:0 or cpu (default: cuda if available)")
    p.add_argument("--dims", type=int, default=2048, choices=list(BLOCK_DIMS), help="Inception features to use")
    p.add_argument(
        "--weights",
        type=str,
        default=None,
        help="Inception weights file (default: the torch hub cache; 'random': untrained, for tests)",
    )
    p.add_argument("--resize", choices=RESIZE_MODES, default="pytorch-fid", help="input resizing (default pytorch-fid)")
    p.add_argument(
        "--save-stats",
        action="store_true",
        help="compute the statistics of the first path (a folder) and save them to the second (.npz)",
    )
    p.add_argument("--force", action="store_true", help="with --save-stats: replace an existing statistics file")
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable or truncated images (their number is reported) instead of stopping",
    )
    p.add_argument(
        "--metrics",
        default="fid",
        help=f"comma-separated metrics, one pass over two image folders: {', '.join(METRICS)} (default fid)",
    )
    p.add_argument("--dinov2", default="facebook/dinov2-large", help="DINOv2 model folder or hub id (fd_dinov2)")
    p.add_argument("--clip", default="openai/clip-vit-large-patch14-336", help="CLIP model folder or hub id (cmmd)")
    p.add_argument("--download", action="store_true", help="download missing weights (Inception: hash-checked)")
    p.add_argument(
        "--max-samples", type=int, default=10_000, help="features kept per side for kid, prdc, cmmd (seeded subsample)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the kid / prdc / cmmd subsamples (default 0)")


def read_image(path: Path) -> torch.Tensor:
    """An image file as uint8 (3, H, W), as :func:`image_to_uint8` converts it.

    Raises:
        UserError: naming the file, when it is unreadable, truncated or of an unsupported mode.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return image_to_uint8(img, str(path))
    except UserError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: cannot read image ({' '.join(str(e).split())})") from None


def image_to_uint8(img, name: str) -> torch.Tensor:
    """A PIL image as uint8 (3, H, W); 16-bit images are scaled (v * 255 / 65535, rounded), not clipped.

    Raises:
        UserError: naming ``name``, for a mode whose range is unknown ("I" other than PNG, "F").
    """
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N") or (img.mode == "I" and img.format == "PNG"):
        v = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
        arr = np.repeat(np.rint(v).astype(np.uint8)[..., None], 3, axis=2)
    elif img.mode in ("I", "F"):
        raise UserError(f"{name}: unsupported image mode {img.mode!r} (range unknown); convert to 8 or 16 bit")
    else:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class _ImageFolder(torch.utils.data.Dataset):
    """Images of a folder; with ``skip_bad`` an unreadable one gives None (counted by the caller)."""

    def __init__(self, files: list[Path], skip_bad: bool = False):
        self.files, self.skip_bad = files, skip_bad

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor | None:
        try:
            return read_image(self.files[i])
        except UserError:
            if self.skip_bad:
                return None
            raise


def _list_images(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


@torch.no_grad()
def compute_statistics(
    folder: str | os.PathLike,
    model: FIDInceptionV3,
    batch_size: int = 50,
    num_workers: int = 0,
    skip_bad_images: bool = False,
) -> FeatureStatistics:
    """Statistics of the Inception features of every image in ``folder`` (images of any sizes).

    An unreadable image stops with an error naming it; with ``skip_bad_images`` it is left out and
    the number left out is reported on stderr.
    """
    stats = FeatureStatistics(
        model.dims, device=model.fc.weight.device, feature_network=model.name, resize_mode=model.resize
    )
    for batch in _folder_batches(Path(folder), batch_size, num_workers, skip_bad_images):
        if len({im.shape for im in batch}) == 1:
            feats = model(torch.stack(batch))
        else:
            feats = model.forward_normalized(torch.cat([model.preprocess(im[None]) for im in batch]))
        stats.update(feats)
    if stats.n < 2:
        raise UserError(f"{folder}: {stats.n} readable image(s); the statistics need at least 2")
    return stats


def _statistics(path: str, model_factory, args) -> FeatureStatistics:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"invalid path: {p}")
    if p.is_file():
        if p.suffix != ".npz":
            raise ValueError(f"{p}: expected a folder of images or an .npz statistics file")
        return FeatureStatistics.load(p)
    return compute_statistics(p, model_factory(), args.batch_size, args.num_workers, args.skip_bad_images)


def _folder_batches(folder: Path, batch_size: int, num_workers: int, skip_bad: bool = False):
    """Lists of uint8 (C, H, W) images of a folder, ``batch_size`` at a time (sizes may differ).

    An unreadable image stops with an error naming it; with ``skip_bad`` it is left out and the
    number left out is reported on stderr. A progress bar (images read, rate, ETA) shows on a terminal.
    """
    from tqdm.auto import tqdm

    files = _list_images(folder)
    loader = torch.utils.data.DataLoader(
        _ImageFolder(files, skip_bad), batch_size=min(batch_size, len(files)), num_workers=num_workers, collate_fn=list
    )
    skipped = 0
    with tqdm(total=len(files), desc=folder.name, unit="img", disable=None, leave=False) as bar:
        for batch in loader:
            bar.update(len(batch))
            skipped += sum(im is None for im in batch)
            batch = [im for im in batch if im is not None]
            if batch:
                yield batch
    if skipped:
        print(f"{folder}: skipped {skipped} unreadable image(s) of {len(files)}", file=sys.stderr)


def _run_suite(args: argparse.Namespace, metrics: list[str], device: torch.device) -> int:
    if args.save_stats or args.dims != 2048:
        raise ValueError("--save-stats and --dims apply to --metrics fid only")
    for p in args.path:
        if not Path(p).is_dir():
            raise ValueError(f"--metrics {','.join(metrics)} needs two image folders, got {p}")
    suite = MetricSuite(
        metrics, device, args.weights, args.resize, args.dinov2, args.clip, args.download, args.max_samples, args.seed
    )
    for path, real in zip(args.path, (True, False)):
        for batch in _folder_batches(Path(path), args.batch_size, args.num_workers, args.skip_bad_images):
            if len({im.shape for im in batch}) == 1:
                suite.update(torch.stack(batch), real=real)
            else:
                for im in batch:
                    suite.update(im[None], real=real)
    for key, value in suite.compute().items():
        print(f"{key}: {value}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute parsed arguments; prints ``FID:  <value>`` (or saves statistics) and returns the exit code."""
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.num_workers is None:
        args.num_workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    model = None

    def model_factory() -> FIDInceptionV3:
        nonlocal model
        if model is None:
            model = FIDInceptionV3(args.weights, dims=args.dims, resize=args.resize, download=args.download).to(device)
        return model

    identity = {"feature_network": network_name(args.dims), "resize_mode": args.resize, "dim": args.dims}
    try:
        metrics = parse_metrics(args.metrics)
        if metrics != ["fid"]:
            return _run_suite(args, metrics, device)
        if args.save_stats:
            src, out = args.path
            if not Path(src).is_dir():
                raise ValueError(f"--save-stats needs an image folder as the first path, got {src}")
            out = refuse_existing(out, args.force, suffix=".npz")  # the name np.savez writes
            compute_statistics(src, model_factory(), args.batch_size, args.num_workers, args.skip_bad_images).save(out)
            return 0
        a, b = (_statistics(p, model_factory, args) for p in args.path)
        a.check_compatible(identity)
        b.check_compatible(identity)
        print("FID: ", fid_from_statistics(a, b))
        return 0
    except (FileNotFoundError, ValueError) as e:
        print(f"fastsample fid: error: {error_line(e)}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``main(["A", "B", "--dims", "2048"])``."""
    p = ArgumentParser(prog="fastsample fid", description=DESCRIPTION)
    _add_arguments(p)
    return run(p.parse_args(argv))
