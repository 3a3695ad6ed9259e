"""Optional saving of a sweep's generated images: ``[sweep] save_images = true`` (``OUTPUT/images``) or a folder.

Each cell writes its samples as ``<sample index, 6 digits>.png`` (8-bit, rounded from [0, 1] as the sample
sheets are) into ``<folder>/<cell file stem>/``, each file atomically; when the cell is done a
``.complete`` file records the count. A cell whose folder is not complete (no ``.complete``, or a file
missing) is recomputed (its result is
the same: per-sample seeds), so an interrupted cell's folder ends bit-identical to an uninterrupted run's.
A folder that exists, is not empty and was not made by a sweep (no ``.fastsample-images`` file) is
refused unless ``--force``.

This module is evaluation code, used by :mod:`fastsample.sweep`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .._io import UserError, atomic_write

__all__ = ["ImageFolder"]

MARKER = ".fastsample-images"
COMPLETE = ".complete"


class ImageFolder:
    """The saved-images folder of a sweep (``None`` folder: saving off)."""

    def __init__(self, folder: Path, force: bool = False):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"save_images: {self.folder} exists and is not a folder")
        mine = (self.folder / MARKER).is_file()
        if self.folder.is_dir() and any(self.folder.iterdir()) and not mine and not force:
            raise UserError(
                f"save_images: {self.folder} already holds files not written by a sweep; "
                "choose another folder or pass --force to write into it"
            )

    def claim(self) -> None:
        """Create the folder and its marker (main process, before any cell)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / MARKER).is_file():
            atomic_write(self.folder / MARKER, "images written by fastsample sweep\n")

    def cell_dir(self, stem: str) -> Path:
        return self.folder / stem

    def complete(self, stem: str, count: int) -> bool:
        """Whether the cell's folder is marked complete for ``count`` images and holds every one of them."""
        folder = self.cell_dir(stem)
        try:
            done = json.loads((folder / COMPLETE).read_text())
        except (OSError, ValueError):
            return False
        return done == {"count": count} and all((folder / f"{i:06d}.png").is_file() for i in range(count))

    def write(self, stem: str, indices, images: torch.Tensor) -> None:
        """Sample ``indices[j]``'s image ``images[j]`` (in [0, 1], (B, C, H, W)) as a PNG, atomically."""
        from PIL import Image

        from .report import _to_uint8

        folder = self.cell_dir(stem)
        folder.mkdir(parents=True, exist_ok=True)
        arr = _to_uint8(images)
        if images.shape[1] == 1:  # gray images stay gray
            arr = arr[..., 0]
        for i, a in zip(indices, arr):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            atomic_write(folder / f"{int(i):06d}.png", buf.getvalue())

    def finish(self, stem: str, count: int) -> None:
        """Mark the cell's folder complete (main process, after every process wrote its images)."""
        atomic_write(self.cell_dir(stem) / COMPLETE, json.dumps({"count": count}))
