"""Sweep inputs from data: captions files, balanced class labels, reference statistics from an image folder,
a torchvision dataset (a CIFAR-10 copy written here in its pickled format) and a `datasets` dataset."""

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fastsample import sweep
from fastsample.sweep import data, sources


class PooledFeatures:
    """A stand-in feature network (any image size): 4x4 average-pooled RGB, 48 float64 features."""

    identity = {"features": "pooled-4x4"}
    digest = "pooled-v1"
    device = torch.device("cpu")

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += x.shape[0]
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1).double()


def _images(n, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _folder(path, arrays):
    path.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(path / f"{i:03d}.png")
    return path


def _expected(arrays):
    """Statistics of the stand-in features of uint8 (N, H, W, 3) images, computed directly."""
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255.0  # as the sweep reads images
    f = PooledFeatures()(x)
    return f.mean(0), torch.from_numpy(np.cov(f.numpy(), rowvar=False))


# --- conditions ---------------------------------------------------------------------------------------------


def test_class_labels_are_balanced_seeded_and_index_determined():
    labels = data.class_labels(range(3000), 1000, seed=7)
    assert np.bincount(labels, minlength=1000).tolist() == [3] * 1000
    for b in range(3):
        assert sorted(labels[1000 * b : 1000 * (b + 1)]) == list(range(1000))
    assert labels[:1000] != labels[1000:2000]  # each block shuffled afresh
    assert labels != data.class_labels(range(3000), 1000, seed=8)
    assert data.class_labels([1500, 3, 999], 1000, seed=7) == [labels[1500], labels[3], labels[999]]


def test_prompts_files(tmp_path):
    (tmp_path / "c.txt").write_text("a cat\na dog on a mat\n")
    assert data.read_prompts(tmp_path / "c.txt") == ["a cat", "a dog on a mat"]
    coco = {"images": [], "annotations": [{"image_id": 1, "caption": "a red bus"}, {"image_id": 2, "caption": "x"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert data.read_prompts(tmp_path / "coco.json") == ["a red bus", "x"]
    (tmp_path / "l.json").write_text(json.dumps(["one", "two"]))
    assert data.read_prompts(tmp_path / "l.json") == ["one", "two"]
    (tmp_path / "c.csv").write_text('id,text\n1,"a, b"\n2,c\n')
    assert data.read_prompts(tmp_path / "c.csv", "text") == ["a, b", "c"]
    with pytest.raises(ValueError, match="not a column"):
        data.read_prompts(tmp_path / "c.csv", "caption")
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="line 2 is an empty caption"):
        data.read_prompts(tmp_path / "gap.txt")


# --- reference statistics ----------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSAMPLE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _stats(ref, features, tmp_path):
    return sources.reference_statistics({"reference": ref}, features, tmp_path)


def test_image_folder_reference_is_computed_once_and_recomputed_when_edited(tmp_path, cache):
    arrays = _images(6)
    folder = _folder(tmp_path / "ref", arrays)
    feats = PooledFeatures()
    ref, digest = _stats(str(folder), feats, tmp_path)
    mu, _ = _expected(arrays)
    torch.testing.assert_close(ref.mu.cpu().double(), mu, rtol=1e-10, atol=1e-12)
    assert len(list(cache.rglob("*.npz"))) == 1 and feats.calls == 6
    again, digest2 = _stats(str(folder), feats, tmp_path)  # a later sweep: read from the cache
    assert feats.calls == 6 and digest2 == digest
    arrays[2] = 255 - arrays[2]
    Image.fromarray(arrays[2]).save(folder / "002.png")
    _, digest3 = _stats(str(folder), feats, tmp_path)
    assert feats.calls == 12 and digest3 != digest
    other = PooledFeatures()
    other.digest = "pooled-v2"  # another feature network: its own statistics
    _stats(str(folder), other, tmp_path)
    assert other.calls == 6 and len(list(cache.rglob("*.npz"))) == 3


def _write_cifar10(root, train, test):
    """torchvision's CIFAR-10 layout: pickled dicts of (N, 3072) uint8 rows in cifar-10-batches-py/."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = np.array_split(train, 5)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    for name, part in zip(names + ["test_batch"], parts + [test]):
        rows = part.transpose(0, 3, 1, 2).reshape(len(part), -1)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": [0] * len(part)}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in [*names, "test_batch", "batches.meta"]}


def test_torchvision_cifar10_reference_from_a_local_copy(tmp_path, cache, monkeypatch):
    import torchvision.datasets as tvd

    train, test = _images(10, 32, seed=1), _images(4, 32, seed=2)
    md5 = _write_cifar10(tmp_path / "data", train, test)
    # torchvision checks the real files' MD5 sums; this copy's own sums stand in for them
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5["batches.meta"]})
    spec = {"torchvision": "CIFAR10", "root": str(tmp_path / "data"), "split": "test"}
    got = torch.stack([im for b in data.reference_batches(spec, 3) for im in b])
    assert torch.equal(got, torch.from_numpy(test).permute(0, 3, 1, 2))
    ref, _ = _stats(spec, PooledFeatures(), tmp_path)
    mu, _ = _expected(train)
    assert not torch.allclose(ref.mu.cpu().double(), mu)  # the test split, not the train one
    ref, _ = _stats({**spec, "split": "train"}, PooledFeatures(), tmp_path)
    torch.testing.assert_close(ref.mu.cpu().double(), mu, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        list(data.reference_batches({**spec, "split": "val"}, 3))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="CIFAR10 at .*not found"):
        list(data.reference_batches({**spec, "root": str(empty)}, 3))


def test_datasets_reference_from_save_to_disk_and_parquet(tmp_path, cache, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    arrays = _images(5, seed=3)
    ds = datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in arrays], "label": list(range(5))})
    ds = ds.cast_column("img", datasets.Image())
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "disk"))
    spec = {"datasets": str(tmp_path / "disk"), "split": "train", "column": "img"}
    feats = PooledFeatures()
    ref, digest = _stats(spec, feats, tmp_path)
    mu, _ = _expected(arrays)
    torch.testing.assert_close(ref.mu.cpu().double(), mu, rtol=1e-10, atol=1e-12)
    _stats(spec, feats, tmp_path)
    assert feats.calls == 5  # cached
    with pytest.raises(ValueError, match="no image column 'image'; columns: img, label"):
        _stats({**spec, "column": "image"}, feats, tmp_path)
    with pytest.raises(ValueError, match="no split 'test'"):
        _stats({**spec, "split": "test"}, feats, tmp_path)
    (tmp_path / "pq").mkdir()
    ds.select(range(4)).to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    ref, digest2 = _stats({**spec, "datasets": str(tmp_path / "pq")}, feats, tmp_path)
    torch.testing.assert_close(ref.mu.cpu().double(), _expected(arrays[:4])[0], rtol=1e-10, atol=1e-12)
    assert digest2 != digest


# --- config checks -------------------------------------------------------------------------------------------

BASE = """
[sweep]
nfe = [2]
num_samples = 4
[model]
{model}
[metric]
features = "demo-classifier"
reference = {reference}
[[schedulers]]
name = "diffusers.DDIMScheduler"
"""


@pytest.mark.parametrize(
    "model,reference,match",
    [
        ('kind = "demo-ddpm"', '{ torchvision = "CIFAR10" }', "missing key 'root'"),
        ('kind = "demo-ddpm"', '{ torchvision = "NoSuchSet", root = "." }', "has no class 'NoSuchSet'"),
        ('kind = "demo-ddpm"', '{ datasets = "x", colum = "img" }', "did you mean 'column'"),
        ('kind = "demo-ddpm"', '{ root = "." }', "one of 'torchvision' or 'datasets'"),
        ('kind = "demo-ddpm"', '"caps.txt"', "expected an .npz file, an image folder or a table"),
        ('kind = "demo-ddpm"\ntorch_dtype = "bfloat16"', '"demo-heldout"', "torch_dtype applies to kind"),
        ('kind = "demo-ddpm"\nprompts_file = "caps.txt"', '"demo-heldout"', "applies to kind 'pipeline'"),
        ('kind = "pipeline"\npath = "."\nprompts_file = "bad.txt"', '"demo-heldout"', "line 2 is an empty caption"),
        ('kind = "pipeline"\npath = "."\nprompts = ["a"]\nprompts_file = "caps.txt"', '"demo-heldout"', "not both"),
        ('kind = "pipeline"\npath = "."\ntorch_dtype = "int8"', '"demo-heldout"', "allowed 'float32'"),
    ],
)
def test_bad_data_configs(tmp_path, model, reference, match):
    (tmp_path / "caps.txt").write_text("a\nb\n")
    (tmp_path / "bad.txt").write_text("a\n\n")
    path = tmp_path / "bad.toml"
    path.write_text(BASE.format(model=model, reference=reference))
    with pytest.raises(ValueError, match=match):
        sweep.load_config(path, output=str(tmp_path / "out"))


def test_float16_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="'float16' runs on a GPU only; on the CPU use 'bfloat16'"):
        sources.model_dtype({"torch_dtype": "float16"}, "cpu")
    assert sources.model_dtype({"torch_dtype": "bfloat16"}, "cpu") == torch.bfloat16
