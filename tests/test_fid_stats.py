"""Streaming statistics: merge = one pass, 2-process all-reduce, .npz round trip, compatibility errors."""

import os
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fastsample.fid.stats import FeatureStatistics, fid_from_statistics


def _features(n=300, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.linspace(0.5, 2, d) + 3.0


def test_matches_numpy_and_merge_equals_one_pass():
    f = _features()
    one = FeatureStatistics(16).update(f)
    np.testing.assert_allclose(one.mean.numpy(), f.double().numpy().mean(0), rtol=1e-13)
    np.testing.assert_allclose(one.cov.numpy(), np.cov(f.double().numpy(), rowvar=False), rtol=1e-10, atol=1e-12)
    parts = [FeatureStatistics(16).update(c) for c in f.split([1, 99, 200])]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.n == 300
    np.testing.assert_allclose(merged.mean.numpy(), one.mean.numpy(), rtol=1e-14)
    np.testing.assert_allclose(merged.cov.numpy(), one.cov.numpy(), rtol=1e-12, atol=1e-13)
    streamed = FeatureStatistics(16)
    for c in f.split(7):
        streamed.update(c.half().float())
    assert streamed.n == 300


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)  # forked like DataLoader workers: one intra-op thread
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    stats = FeatureStatistics(16, feature_network="tiny", resize_mode="none")
    stats.update(_features()[rank::world])
    stats.all_reduce()
    torch.save({"count": stats.count, "sum": stats.sum, "outer": stats.sum_outer}, os.path.join(out_dir, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_all_reduce_two_processes(tmp_path):
    # fork, not spawn: a spawned child re-imports the whole package (seconds); a forked one starts at once.
    start = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method=start)
    one = FeatureStatistics(16).update(_features())
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert float(got["count"]) == 300
        torch.testing.assert_close(got["sum"], one.sum, rtol=1e-13, atol=1e-10)
        torch.testing.assert_close(got["outer"], one.sum_outer, rtol=1e-13, atol=1e-10)


def test_all_reduce_noop_without_process_group():
    s = FeatureStatistics(4).update(torch.ones(3, 4))
    assert s.all_reduce().n == 3


def test_save_load_round_trip_and_pytorch_fid_reads_ours(tmp_path):
    s = FeatureStatistics(16, feature_network="inception-2015-12-05", resize_mode="clean-fid").update(_features())
    s.save(tmp_path / "a.npz")
    back = FeatureStatistics.load(tmp_path / "a.npz")
    assert (back.n, back.dim, back.feature_network, back.resize_mode) == (300, 16, "inception-2015-12-05", "clean-fid")
    torch.testing.assert_close(back.cov, s.cov, rtol=1e-12, atol=1e-12)
    back.update(_features(10, seed=1))  # the count is known, so it can keep accumulating
    with np.load(tmp_path / "a.npz") as data:  # what pytorch-fid's fid_score reads
        np.testing.assert_array_equal(data["mu"], s.mean.numpy())


def test_plain_pytorch_fid_file(tmp_path):
    f = _features().double().numpy()
    np.savez(tmp_path / "p.npz", mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    plain = FeatureStatistics.load(tmp_path / "p.npz")
    assert plain.resize_mode == "unknown"
    np.testing.assert_allclose(plain.cov.numpy(), np.cov(f, rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="without a sample count"):
        plain.update(torch.zeros(1, 16))
    ours = FeatureStatistics(16, resize_mode="pytorch-fid").update(_features(seed=2))
    with pytest.warns(UserWarning, match="unknown"):
        fid_from_statistics(plain, ours)
    declared = FeatureStatistics.load(tmp_path / "p.npz", resize_mode="pytorch-fid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fid_from_statistics(declared, ours) > 0


def test_mismatches(tmp_path):
    a = FeatureStatistics(16, feature_network="net", resize_mode="pytorch-fid").update(_features())
    with pytest.raises(ValueError, match="resize_mode mismatch"):
        fid_from_statistics(
            a, FeatureStatistics(16, feature_network="net", resize_mode="clean-fid").update(_features())
        )
    with pytest.raises(ValueError, match="feature_network mismatch"):
        a.merge(FeatureStatistics(16, feature_network="other", resize_mode="pytorch-fid"))
    with pytest.raises(ValueError, match="dimension mismatch"):
        fid_from_statistics(a, FeatureStatistics(8, feature_network="net", resize_mode="pytorch-fid"))
    with pytest.raises(ValueError, match=r"shape \(B, 16\)"):
        a.update(torch.zeros(4, 8))
    a.save(tmp_path / "a.npz")
    with pytest.raises(ValueError, match="not the declared"):
        FeatureStatistics.load(tmp_path / "a.npz", resize_mode="clean-fid")
    with pytest.raises(ValueError, match="at least 2"):
        _ = FeatureStatistics(3).update(torch.zeros(1, 3)).cov


def test_corrupt_files(tmp_path):
    good = tmp_path / "good.npz"
    FeatureStatistics(16).update(_features()).save(good)
    raw = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    np.savez(tmp_path / "keys.npz", mean=np.zeros(3))
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.zeros((4, 4)))
    np.savez(tmp_path / "nan.npz", mu=np.full(2, np.nan), sigma=np.eye(2))
    for name, match in [
        ("trunc", "truncated or corrupt"),
        ("junk", "truncated or corrupt"),
        ("keys", "need 'mu' and 'sigma'"),
        ("shape", "inconsistent shapes"),
        ("nan", "NaN"),
        ("missing", "cannot read"),
    ]:
        with pytest.raises(ValueError, match=match):
            FeatureStatistics.load(tmp_path / f"{name}.npz")


def test_lazy_dimension_and_metadata_dicts(tmp_path):
    s = FeatureStatistics()
    with pytest.raises(ValueError, match="no features"):
        _ = s.mean
    s.update(_features(d=5).double())
    assert s.dim == 5 and s.sum.dtype == torch.float64
    s.save(tmp_path / "s.npz", metadata={"features": "tiny", "resize": "none"})
    back = FeatureStatistics.load(tmp_path / "s.npz")
    assert back.metadata() == {"feature_network": "tiny", "resize_mode": "none", "dim": 5}
    back.check_compatible({"features": "tiny", "resize": "none"})
    with pytest.raises(ValueError, match="feature_network mismatch"):
        back.check_compatible({"features": "inception-pool3"})
    with pytest.raises(ValueError, match="unknown statistics metadata key"):
        back.check_compatible({"colour": "blue"})
    empty = FeatureStatistics().merge(back)
    assert empty.n == 300
