"""A sweep's inputs from data: prompts from a captions file, balanced class labels, reference images.

Reference images come from an image folder, a torchvision dataset class on a local copy, or a
Hugging Face ``datasets`` dataset (a Hub name in the local cache, a ``save_to_disk`` folder, or a
folder of parquet / image files). :func:`reference_digest` names their content, so statistics
computed once are found again by every cell and every later sweep, and an edited dataset misses.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
import torch

from .._io import UserError, file_digest, tree_digest

HF_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


# --- conditions ------------------------------------------------------------------------------------


def read_prompts(path: str | os.PathLike, column: str | None = None) -> list[str]:
    """Captions of a file: ``.txt`` one per line; ``.json`` a list of strings, a list of objects with
    ``column``, or a COCO captions file (``{"annotations": [{"caption": ...}]}``); ``.csv`` / ``.tsv``
    with a header row and ``column``. An empty caption is an error naming its line or entry."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if column is not None:
            raise UserError(f"{path}: prompts_column applies to .json / .csv captions files, not .txt")
        prompts = path.read_text(encoding="utf-8").splitlines()
        where = "line"
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            data, column = data["annotations"], column or "caption"
        if not isinstance(data, list):
            raise UserError(f"{path}: a JSON captions file holds a list, or a COCO dict with 'annotations'")
        prompts = [_field(row, column, path, i + 1) for i, row in enumerate(data)]
        where = "entry"
    elif suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if column is None or column not in (reader.fieldnames or []):
                raise UserError(f"{path}: prompts_column {column!r} is not a column; columns: {reader.fieldnames}")
            prompts = [row[column] for row in reader]
        where = "row"
    else:
        raise UserError(f"{path}: prompts_file must be .txt (one per line), .json, .csv or .tsv")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise UserError(f"{path}: {where} {i + 1} is an empty caption")
    if not prompts:
        raise UserError(f"{path}: no captions")
    return prompts


def _field(row, column: str | None, path: Path, i: int) -> str:
    if isinstance(row, str) and column is None:
        return row
    if isinstance(row, dict) and column is not None and column in row:
        return row[column]
    raise UserError(f"{path}: entry {i} is not a string nor an object with prompts_column {column!r}")


def class_labels(indices, num_classes: int, seed: int) -> list[int]:
    """Balanced class labels: each block of ``num_classes`` consecutive sample indices holds every class
    once, in an order shuffled by (``seed``, block). A label depends on its sample index only, so it is
    the same for any batch size or number of processes."""
    perms: dict[int, np.ndarray] = {}
    out = []
    for i in indices:
        block, pos = divmod(int(i), num_classes)
        if block not in perms:
            perms[block] = np.random.default_rng([seed, block]).permutation(num_classes)
        out.append(int(perms[block][pos]))
    return out


# --- reference images --------------------------------------------------------------------------------


def is_hf_disk_folder(path: Path) -> bool:
    """True for a folder written by ``datasets``' ``save_to_disk``."""
    return any((path / m).is_file() for m in HF_DISK_MARKERS)


def _torchvision_dataset(spec: dict):
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec["torchvision"])
    params = inspect.signature(cls).parameters
    kwargs = {"root": spec["root"]}
    if "download" in params:
        kwargs["download"] = False
    split = spec.get("split", "train")
    if "split" in params:
        kwargs["split"] = split
    elif "train" in params:
        if split not in ("train", "test"):
            raise UserError(f"reference {spec['torchvision']}: split must be 'train' or 'test', got {split!r}")
        kwargs["train"] = split == "train"
    try:
        return cls(**kwargs)
    except (RuntimeError, FileNotFoundError) as e:  # torchvision's "Dataset not found or corrupted"
        raise UserError(f"reference {spec['torchvision']} at {spec['root']}: {e}") from None


def _hf_dataset(spec: dict):
    import datasets

    name, split = spec["datasets"], spec.get("split", "train")
    local = Path(name)
    if local.is_dir() and is_hf_disk_folder(local):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise UserError(f"reference {name}: no split {split!r}; splits: {', '.join(ds)}")
            ds = ds[split]
    else:
        ds = datasets.load_dataset(str(local) if local.is_dir() else name, split=split)
    column = spec.get("column", "image")
    if column not in ds.column_names:
        raise UserError(f"reference {name}: no image column {column!r}; columns: {', '.join(ds.column_names)}")
    return ds.cast_column(column, datasets.Image()) if not isinstance(ds.features[column], datasets.Image) else ds


def reference_digest(spec: dict | str) -> str:
    """SHA-256 of the reference images' content and how they are read (split, column).

    An image folder: its image files; torchvision: the files of the class's folder under ``root``;
    ``datasets``: the Arrow files the dataset reads (its cache files).
    """
    h = hashlib.sha256()
    if isinstance(spec, str):
        from ..fid.cli import _list_images

        for f in _list_images(Path(spec)):
            h.update(f"{f.name}\0{file_digest(f)}\n".encode())
        return h.hexdigest()
    h.update(json.dumps({k: v for k, v in spec.items() if k != "root"}, sort_keys=True).encode())
    if "torchvision" in spec:
        import torchvision.datasets as tvd

        root = Path(spec["root"])
        sub = root / getattr(getattr(tvd, spec["torchvision"]), "base_folder", "")
        h.update(tree_digest(sub if sub.is_dir() else root).encode())
    else:
        ds = _hf_dataset(spec)
        if not ds.cache_files:
            raise UserError(f"reference {spec['datasets']}: an in-memory dataset has no files to key a cache by")
        for f in ds.cache_files:
            h.update(file_digest(f["filename"]).encode())
    return h.hexdigest()


def reference_batches(spec: dict | str, batch_size: int):
    """Lists of uint8 (3, H, W) reference images, ``batch_size`` at a time, in the data's order."""
    from ..fid.cli import _folder_batches, image_to_uint8

    if isinstance(spec, str):
        yield from _folder_batches(Path(spec), batch_size, num_workers=0)
        return
    if "torchvision" in spec:
        ds = _torchvision_dataset(spec)
        images = (ds[i][0] for i in range(len(ds)))
        name = spec["torchvision"]
    else:
        ds = _hf_dataset(spec)
        images = (row[spec.get("column", "image")] for row in ds)
        name = spec["datasets"]
    batch = []
    for i, img in enumerate(images):
        batch.append(image_to_uint8(img, f"{name} item {i}"))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def images_to_float(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 (3, H, W) images -> float [0, 1] (B, 3, H, W) stacks, one per run of equal sizes."""
    groups, run = [], [batch[0]]
    for im in batch[1:]:
        if im.shape == run[-1].shape:
            run.append(im)
        else:
            groups.append(run)
            run = [im]
    groups.append(run)
    return [torch.stack(g).float() / 255.0 for g in groups]
