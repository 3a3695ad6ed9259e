"""Benchmark of the FID engine against pytorch-fid, torchmetrics and torch-fidelity.

Sections (each timed against its competitors in the same run; speed is reported as ratios):

- ``distance``: Frechet distance of two 2048-dim Gaussians: ours from scratch and per sweep cell with the
  reference factor cached, pytorch-fid's ``calculate_frechet_distance`` (scipy ``sqrtm``) and
  torchmetrics' ``_compute_fid`` (``eigvals`` of C1 C2); the values must agree.
- ``lowrank``: Frechet distance when each set has fewer samples than dimensions (default 1000 x 2048):
  ours from the features (low-rank factors, :func:`frechet_distance_features`) vs torchmetrics'
  ``_compute_fid`` on the covariances, same repeats; ours' eigh path (covariances only) timed once.
- ``streaming``: statistics of N x 2048 features (default 50k) in batches: ours vs torchmetrics'
  ``FrechetInceptionDistance`` accumulation; time and peak resident memory (Linux VmHWM, reset per method).
- ``extraction``: Inception feature extraction, images/s at equal batch size: ours (pytorch-fid and
  torch-fidelity resizing) vs torchmetrics' ``NoTrainInceptionV3`` (random weights; speed only).
- ``gpu`` (only with CUDA): distance on the GPU vs pytorch-fid on the CPU, features/s in fp32 and in
  bf16 autocast with channels_last, and the FID change bf16 causes on a 10k set.

Usage: ``python benchmarks/bench_fid.py [--quick] [--threads 2] [--sections distance,lowrank,streaming,extraction,gpu]``
(the full CPU run took about 5 minutes on a shared 2-core machine; ``--quick``: 1024 dims, about 2).
Writes ``benchmarks/results/fid.json`` and ``fid.md`` (after every section, so partial runs keep results).
"""

from __future__ import annotations

import argparse
import os
import sys


def _threads_from_argv(argv) -> int:
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 2


_THREADS = _threads_from_argv(sys.argv)
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(_THREADS)

import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import protocol as P  # noqa: E402
import torch  # noqa: E402

from fastsample.fid import (  # noqa: E402
    FeatureStatistics,
    FIDInceptionV3,
    ReferenceStatistics,
    frechet_distance,
    frechet_distance_features,
)
from fastsample.fid.inception import no_tf32  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _race(contestants: dict, repeat: int) -> tuple[dict, dict]:
    """Interleaved timing (protocol.interleaved_timing, no warm-up: every call is a full computation) of
    ``{name: fn}``, the same ``repeat`` each; (timings, last value of each)."""
    values = {}

    def keep(name, fn):
        def run():
            values[name] = fn()

        return run

    t = P.interleaved_timing({k: keep(k, fn) for k, fn in contestants.items()}, repeat, warmup=0)
    return t, values


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _feature_pair(d: int, n: int, seed: int = 0):
    """Two sets (n, d) of correlated non-negative 'features' (like pool3 activations), float64."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return [torch.relu(torch.randn(n, d, generator=g, dtype=torch.float64) @ w + shift) for shift in (0.0, 0.1)]


def _gaussian_pair(d: int, n: int, seed: int = 0):
    """Means and covariances of :func:`_feature_pair`."""
    return [(x.mean(0), torch.cov(x.T)) for x in _feature_pair(d, n, seed)]


def bench_distance(d: int, n: int, repeat: int) -> dict:
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torchmetrics.image.fid import _compute_fid

    (m1, c1), (m2, c2) = _gaussian_pair(d, n)
    n1, s1, n2, s2 = (t.numpy() for t in (m1, c1, m2, c2))
    t0 = time.perf_counter()
    ref = ReferenceStatistics(m1, c1)
    t_ref = time.perf_counter() - t0

    def pytorch_fid():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(calculate_frechet_distance(n1, s1, n2, s2))

    t, v = _race(
        {
            "ours_from_scratch": lambda: frechet_distance(m1, c1, m2, c2),
            "ours_per_cell_cached": lambda: ref.distance(m2, c2),
            # a singular reference covariance (fewer samples than dimensions) takes the eigh path instead
            "ours_from_scratch_eigh_path": lambda: ReferenceStatistics(m1, c1, factor="eigh").distance(m2, c2),
            "pytorch_fid_scipy_sqrtm": pytorch_fid,
            "torchmetrics_eigvals": lambda: float(_compute_fid(m1, c1, m2, c2)),
        },
        repeat,
    )
    med = {k: x["median"] for k, x in t.items()}
    fastest = min(med["pytorch_fid_scipy_sqrtm"], med["torchmetrics_eigvals"])
    return {
        "dim": d,
        "samples_per_set": n,
        "repeat": repeat,
        "reference_factor": ref.factor_kind,
        "reference_factor_seconds": t_ref,
        "values": v,
        "rel_diff_vs_pytorch_fid": abs(v["ours_from_scratch"] - v["pytorch_fid_scipy_sqrtm"])
        / abs(v["pytorch_fid_scipy_sqrtm"]),
        "rel_diff_vs_torchmetrics": abs(v["ours_from_scratch"] - v["torchmetrics_eigvals"])
        / abs(v["torchmetrics_eigvals"]),
        "timing": t,
        "speedup_vs_faster_competitor": {k: fastest / med[k] for k in med if k.startswith("ours")},
        "speedup_from_scratch_vs": {k: med[k] / med["ours_from_scratch"] for k in med if not k.startswith("ours")},
    }


def bench_lowrank(d: int, n: int, repeat: int) -> dict:
    from torchmetrics.image.fid import _compute_fid

    x1, x2 = _feature_pair(d, n, seed=1)
    (m1, c1), (m2, c2) = ((x.mean(0), torch.cov(x.T)) for x in (x1, x2))
    t, v = _race(
        {
            "ours_low_rank_from_features": lambda: frechet_distance_features(x1, x2),
            "torchmetrics_eigvals": lambda: float(_compute_fid(m1, c1, m2, c2)),
            "ours_eigh_path_from_covariances": lambda: ReferenceStatistics(m1, c1, factor="eigh").distance(m2, c2),
        },
        repeat,
    )
    med = {k: x["median"] for k, x in t.items()}
    eigh = v["ours_eigh_path_from_covariances"]
    return {
        "dim": d,
        "samples_per_set": n,
        "repeat": repeat,
        "values": v,
        "rel_diff_vs_ours_eigh_path": abs(v["ours_low_rank_from_features"] - eigh) / abs(eigh),
        "rel_diff_vs_torchmetrics": abs(v["ours_low_rank_from_features"] - v["torchmetrics_eigvals"])
        / abs(v["torchmetrics_eigvals"]),
        "timing": t,
        "speedup_vs_torchmetrics": med["torchmetrics_eigvals"] / med["ours_low_rank_from_features"],
        "speedup_vs_ours_eigh_path": med["ours_eigh_path_from_covariances"] / med["ours_low_rank_from_features"],
    }


def bench_streaming(n: int, d: int, batch: int, repeat: int) -> dict:
    from torchmetrics.image.fid import FrechetInceptionDistance as TMFID

    class Identity(torch.nn.Module):
        num_features = d

        def forward(self, x):
            return x

    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(batch, d, generator=g) for _ in range(4)]  # float32 features, reused cyclically
    steps = n // batch
    res = {"features": steps * batch, "dim": d, "batch": batch, "repeat": repeat}

    def ours():
        s = FeatureStatistics(d)
        for i in range(steps):
            s.update(batches[i % 4])
        return s

    def theirs():
        m = TMFID(feature=Identity())
        for i in range(steps):
            m.update(batches[i % 4], real=True)
        return m

    peaks = {"ours": [], "torchmetrics": []}

    def measured(name, fn):
        def run():
            base = _rss_kib("VmRSS")
            can = _reset_peak_rss()
            obj = fn()
            peak = _rss_kib("VmHWM")
            if can and base is not None and peak is not None:
                peaks[name].append((peak - base) / 1024)
            return obj

        return run

    t, objs = _race({"ours": measured("ours", ours), "torchmetrics": measured("torchmetrics", theirs)}, repeat)
    for name in ("ours", "torchmetrics"):
        res[name] = {"timing": t[name], "features_per_s": steps * batch / t[name]["median"]}
        if peaks[name]:
            res[name]["peak_rss_above_start_mib"] = float(np.median(peaks[name]))
    res["_ours_obj"], res["_torchmetrics_obj"] = objs["ours"], objs["torchmetrics"]
    s, m = res.pop("_ours_obj"), res.pop("_torchmetrics_obj")
    res["ours"]["state_bytes"] = (d * d + d + 1) * 8
    res["torchmetrics"]["state_bytes"] = 2 * (d * d + d + 1) * 8  # real and fake states are both allocated
    res["transient_bytes_per_update"] = {"ours": batch * d * 8, "torchmetrics": batch * d * 8 + d * d * 8}
    res["max_abs_diff_sum_outer"] = float((s.sum_outer - m.real_features_cov_sum).abs().max())
    res["speedup_vs_torchmetrics"] = res["torchmetrics"]["timing"]["median"] / res["ours"]["timing"]["median"]
    return res


def bench_extraction(batch: int, repeat: int, size: int) -> dict:
    import torchmetrics.image.fid as tmfid

    ours = FIDInceptionV3("random")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.pth")
        torch.save(ours.state_dict(), path)
        tm = tmfid.NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=path
        )
    fidelity_mode = FIDInceptionV3("random", resize="torch-fidelity")
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    res = {"batch": batch, "image_size": size, "repeat": repeat}
    runners = {
        "ours_pytorch_fid_resize": lambda: ours(imgs),
        "ours_torch_fidelity_resize": lambda: fidelity_mode(imgs),
        "torchmetrics": lambda: tm(imgs),
    }
    with torch.no_grad():
        t, outs = _race(runners, repeat)
    for name in runners:
        res[name] = {"timing": t[name], "images_per_s": batch / t[name]["median"]}
    ref = outs["torchmetrics"].reshape(batch, -1)
    res["max_rel_diff_torch_fidelity_mode_vs_torchmetrics_antialias"] = float(
        (outs["ours_torch_fidelity_resize"] - ref).abs().max() / ref.abs().max()
    )
    tm.use_antialias = False  # torch-fidelity's TF1 bilinear resize, which our torch-fidelity mode imitates
    with torch.no_grad():
        ref1 = tm(imgs[:1]).reshape(1, -1)
    res["max_rel_diff_torch_fidelity_mode_vs_torchmetrics_no_antialias"] = float(
        (outs["ours_torch_fidelity_resize"][:1] - ref1).abs().max() / ref1.abs().max()
    )
    ips = {k: res[k]["images_per_s"] for k in runners}
    res["speedup_vs_torchmetrics"] = ips["ours_pytorch_fid_resize"] / ips["torchmetrics"]
    return res


def bench_gpu(n_images: int = 10_000, batch: int = 250) -> dict:
    from pytorch_fid.fid_score import calculate_frechet_distance

    if not torch.cuda.is_available():
        return {"skipped": "CUDA not available"}
    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(dev)}
    (m1, c1), (m2, c2) = _gaussian_pair(2048, 4096)
    g1, h1, g2, h2 = (t.to(dev) for t in (m1, c1, m2, c2))
    frechet_distance(g1, h1, g2, h2)  # warm-up (cusolver handles)

    def on_gpu():
        out = frechet_distance(g1, h1, g2, h2)
        torch.cuda.synchronize()
        return out

    ref = ReferenceStatistics(g1, h1)

    def cell():
        out = ref.distance(g2, h2)
        torch.cuda.synchronize()
        return out

    def pytorch_fid():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(calculate_frechet_distance(*(t.numpy() for t in (m1, c1, m2, c2))))

    t, v = _race({"gpu_from_scratch": on_gpu, "gpu_per_cell_cached": cell, "pytorch_fid_cpu": pytorch_fid}, 3)
    med = {k: x["median"] for k, x in t.items()}
    res["distance"] = {
        "timing": t,
        "speedup_from_scratch": med["pytorch_fid_cpu"] / med["gpu_from_scratch"],
        "speedup_per_cell": med["pytorch_fid_cpu"] / med["gpu_per_cell_cached"],
        "rel_diff": abs(v["gpu_from_scratch"] - v["pytorch_fid_cpu"]) / abs(v["pytorch_fid_cpu"]),
    }
    model = FIDInceptionV3("random").to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    def images(i):
        gen.manual_seed(i)
        return torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=dev, generator=gen)

    def extract(bf16: bool, stats: FeatureStatistics, count: int):
        with no_tf32():
            return _extract(bf16, stats, count)

    def _extract(bf16: bool, stats: FeatureStatistics, count: int):
        for i in range(count // batch):
            x = model.preprocess(images(i))
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
                if bf16:
                    x = x.contiguous(memory_format=torch.channels_last)
                stats.update(model.forward_normalized(x))
        torch.cuda.synchronize()
        return stats

    for name, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        if bf16:
            model.to(memory_format=torch.channels_last)
        extract(bf16, FeatureStatistics(2048, device=dev), 2 * batch)  # warm-up
        # one timed run each (the memory format differs, so the two are not interleaved)
        t, v = _race({name: lambda bf16=bf16: extract(bf16, FeatureStatistics(2048, device=dev), n_images)}, 1)
        res[name] = {"images_per_s": n_images / t[name]["median"], "seconds": t[name]["median"]}
        res[f"_{name}"] = v[name]
    a, b = res.pop("_fp32"), res.pop("_bf16_channels_last")
    res["fid_fp32_vs_bf16_same_images"] = a.reference().distance(b.mean, b.cov)
    res["images"] = n_images
    return res


def _t(t: dict) -> str:
    """median [min-max] seconds (n repeats)."""
    return f"{t['median']:.3g} [{t['min']:.3g}-{t['max']:.3g}] ({t['repeats']})"


DISTANCE_LABELS = {
    "ours_from_scratch": "ours, from scratch ({factor} + 2 matmuls + eigvalsh)",
    "ours_per_cell_cached": "ours, per sweep cell (reference factor cached)",
    "ours_from_scratch_eigh_path": "ours, from scratch, eigh path (singular C1)",
    "pytorch_fid_scipy_sqrtm": "pytorch-fid (scipy sqrtm)",
    "torchmetrics_eigvals": "torchmetrics (eigvals of C1 C2)",
    "ours_low_rank_from_features": "ours, low-rank from the features",
    "ours_eigh_path_from_covariances": "ours from covariances, eigh path (D x D square root)",
}


def _md(results: dict) -> str:
    lines = [
        "# FID engine benchmark",
        "",
        f"Run: {results.get('run', 'full')} (`bench_fid.py{' --quick' if results.get('run') == 'quick' else ''}`)."
        f" Machine: {results['machine']}; torch threads: {results['threads']}. CPU shared with other jobs, so "
        "absolute times are noisy; compare ratios measured in the same run. Times: median [min-max] seconds over"
        " the same number of repeats (in parentheses) for every contestant, interleaved (benchmarks/protocol.py);"
        " ratios are of medians.",
        "",
    ]
    d = results.get("distance")
    if d:
        lines += [
            f"## Frechet distance, {d['dim']}-dim statistics",
            "",
            "| method | seconds | faster competitor's median / this median |",
            "|---|---|---|",
        ]
        for k, t in d["timing"].items():
            sp = d["speedup_vs_faster_competitor"].get(k)
            label = DISTANCE_LABELS[k].format(factor=d["reference_factor"])
            lines.append(f"| {label} | {_t(t)} | {'-' if sp is None else f'{sp:.2f}x'} |")
        v = d["values"]
        lines += [
            "",
            f"Values: ours {v['ours_from_scratch']:.10g}, pytorch-fid {v['pytorch_fid_scipy_sqrtm']:.10g}, torchmetrics"
            f" {v['torchmetrics_eigvals']:.10g} (relative differences {d['rel_diff_vs_pytorch_fid']:.1e},"
            f" {d['rel_diff_vs_torchmetrics']:.1e}). Ours from scratch is "
            + ", ".join(f"{x:.2f}x faster than {k}" for k, x in d["speedup_from_scratch_vs"].items())
            + f". Reference factor computed once: {d['reference_factor_seconds']:.3g} s ({d['reference_factor']}).",
            "",
        ]
    lr = results.get("lowrank")
    if lr:
        lines += [
            f"## Frechet distance with fewer samples than dimensions: {lr['samples_per_set']} x {lr['dim']} per set",
            "",
            "| method | seconds |",
            "|---|---|",
        ]
        lines += [f"| {DISTANCE_LABELS[k]} | {_t(t)} |" for k, t in lr["timing"].items()]
        v = lr["values"]
        lines += [
            "",
            f"Low-rank vs torchmetrics: {lr['speedup_vs_torchmetrics']:.1f}x; vs our eigh path"
            f" {lr['speedup_vs_ours_eigh_path']:.1f}x. Values: low-rank {v['ours_low_rank_from_features']:.10g}, eigh"
            f" path {v['ours_eigh_path_from_covariances']:.10g}, torchmetrics {v['torchmetrics_eigvals']:.10g}"
            f" (relative differences {lr['rel_diff_vs_ours_eigh_path']:.1e}, {lr['rel_diff_vs_torchmetrics']:.1e};"
            " torchmetrics adds square roots of round-off eigenvalues of the singular C1 C2). Ours starts from the"
            " features; torchmetrics is given the covariances.",
            "",
        ]
    s = results.get("streaming")
    if s:
        o, t = s["ours"], s["torchmetrics"]
        lines += [
            f"## Streaming statistics, {s['features']} x {s['dim']} features, batch {s['batch']}",
            "",
            "| method | seconds | features/s (median) | peak RSS growth (MiB, median) | state bytes |",
            "|---|---|---|---|---|",
            f"| ours | {_t(o['timing'])} | {o['features_per_s']:.0f} | "
            f"{o.get('peak_rss_above_start_mib', float('nan')):.1f} | {o['state_bytes']} |",
            f"| torchmetrics | {_t(t['timing'])} | {t['features_per_s']:.0f} | "
            f"{t.get('peak_rss_above_start_mib', float('nan')):.1f} | {t['state_bytes']} |",
            "",
            f"Speed ratio {s['speedup_vs_torchmetrics']:.2f}x; both do the same float64 (D x B)(B x D) product per "
            "batch (ours in place with addmm_, torchmetrics through a temporary D x D product and both real and "
            f"fake states). Max |difference| of the outer-product sums: {s['max_abs_diff_sum_outer']:.2e} "
            "(entries are about 1e4).",
            "",
        ]
    e = results.get("extraction")
    if e:
        lines += [
            f"## Feature extraction, batch {e['batch']} of {e['image_size']}x{e['image_size']} uint8 images (CPU)",
            "",
            "| method | seconds per batch | images/s (median) |",
            "|---|---|---|",
            f"| ours, pytorch-fid resize | {_t(e['ours_pytorch_fid_resize']['timing'])} |"
            f" {e['ours_pytorch_fid_resize']['images_per_s']:.3g} |",
            f"| ours, torch-fidelity resize | {_t(e['ours_torch_fidelity_resize']['timing'])} |"
            f" {e['ours_torch_fidelity_resize']['images_per_s']:.3g} |",
            f"| torchmetrics NoTrainInceptionV3 | {_t(e['torchmetrics']['timing'])} |"
            f" {e['torchmetrics']['images_per_s']:.3g} |",
            "",
            f"Ratio {e['speedup_vs_torchmetrics']:.2f}x. Ours in torch-fidelity mode vs torchmetrics, same weights, "
            "max |difference| / max |feature|: "
            f"{e['max_rel_diff_torch_fidelity_mode_vs_torchmetrics_antialias']:.1e} with torchmetrics' default "
            "antialiased resize, "
            f"{e['max_rel_diff_torch_fidelity_mode_vs_torchmetrics_no_antialias']:.1e} with antialias=False.",
            "",
        ]
    gpu = results.get("gpu")
    if gpu:
        lines += ["## GPU", ""]
        if "skipped" in gpu:
            lines += [f"Not run: {gpu['skipped']}.", ""]
        else:
            lines += ["```", json.dumps(gpu, indent=1), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sections", default="distance,lowrank,streaming,extraction,gpu")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--samples", type=int, default=3000, help="samples per set for the distance statistics")
    p.add_argument("--lowrank-samples", type=int, default=1000, help="samples per set for the lowrank section")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repeats of every contestant (distance)")
    p.add_argument("--lowrank-repeat", type=int, default=3)
    p.add_argument("--stream-repeat", type=int, default=2)
    p.add_argument("--stream-features", type=int, default=50_000)
    p.add_argument("--stream-batch", type=int, default=500)
    p.add_argument("--extract-batch", type=int, default=8)
    p.add_argument("--extract-repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="1024 dims, 1500 / 500 samples, 20k streamed features")
    args = p.parse_args(argv)
    if args.quick:
        args.dim, args.samples, args.lowrank_samples, args.stream_features, args.extract_batch = (
            1024,
            1500,
            500,
            20_000,
            4,
        )
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    if (args.out / "fid.json").is_file():  # sections not rerun keep their earlier results
        results = json.loads((args.out / "fid.json").read_text())
    results.update(
        run="quick" if args.quick else "full",
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        threads=args.threads,
        torch=torch.__version__,
    )

    def write():
        (args.out / "fid.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "fid.md").write_text(_md(results))

    sections = args.sections.split(",")
    for sec in sections:  # a section being rerun never shows its earlier numbers
        results.pop(sec, None)
    if "distance" in sections:
        results["distance"] = bench_distance(args.dim, args.samples, args.repeat)
        results["distance"]["run_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write()
        print(json.dumps(results["distance"], indent=1), flush=True)
    if "lowrank" in sections:
        results["lowrank"] = bench_lowrank(args.dim, args.lowrank_samples, args.lowrank_repeat)
        results["lowrank"]["run_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write()
        print(json.dumps(results["lowrank"], indent=1), flush=True)
    if "streaming" in sections:
        results["streaming"] = bench_streaming(args.stream_features, args.dim, args.stream_batch, args.stream_repeat)
        results["streaming"]["run_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write()
        print(json.dumps(results["streaming"], indent=1), flush=True)
    if "extraction" in sections:
        results["extraction"] = bench_extraction(args.extract_batch, args.extract_repeat, 32)
        results["extraction"]["run_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write()
        print(json.dumps(results["extraction"], indent=1), flush=True)
    if "gpu" in sections:
        results["gpu"] = bench_gpu()
        write()
        print(json.dumps(results["gpu"], indent=1), flush=True)
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
