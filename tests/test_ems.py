"""Empirical model statistics (fastsample.ems): exactness on analytic models, files, matching, memory."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from fastsample._io import UserError
from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import schedule_for_config
from fastsample.ems.estimation import compute_ems
from fastsample.ems.models import analytic_model_fn, unet_model_fn, vae_latents
from fastsample.formats.ems_file import EMS, EMSFileError, EMSMismatchError, model_fingerprint

CFG = DDPMScheduler().config  # linear betas, epsilon


def tiny_sd(seed: int = 0, guidance_scale: float = 7.5):
    """A tiny real StableDiffusionPipeline (random weights) and its prompt embeddings (cond, uncond)."""
    from tiny_pipelines import sd_pipeline

    pipe = sd_pipeline(seed)
    pe, ne = pipe.encode_prompt(["a cat", "a dog"], "cpu", 1, True, negative_prompt=["", ""])[:2]
    return pipe, pe, ne


def _ems(model, cfg=CFG, x0=None, **kw):
    opts = dict(grid_size=4, num_samples=8, batch_size=4, progress=False)
    opts.update(kw)
    return compute_ems(model, cfg, x0, **opts)


# --- exactness on analytic models ------------------------------------------------------------------


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_l_is_exact_for_gaussian_data(ptype):
    """Gaussian data N(mu, diag v): sigma d eps/dx = 1 / (1 + v e^{2 lambda}) is diagonal, so one
    Rademacher probe per sample gives it exactly (float64 round-off), whatever the prediction type."""
    v = np.array([0.01, 0.1, 0.5, 2.0])
    g = GaussianMixture(np.full((1, 4), 0.3), v[None])
    cfg = DDPMScheduler(prediction_type=ptype).config
    x0 = torch.from_numpy(g.sample(32))
    e = _ems(analytic_model_fn(g, cfg), cfg, x0, grid_size=6, num_samples=16, batch_size=16, dtype=torch.float64)
    exact = 1.0 / (1.0 + v[None] * np.exp(2 * e.lambdas[:, None]))
    np.testing.assert_allclose(e.l, exact, rtol=0, atol=2e-7)  # stored as float32
    assert e.metadata["prediction_type"] == ptype and e.l.dtype == np.float32


def _closed_form_l(mix, schedule, lam, n, seed):
    """l = 1 - E[Var(x0 | x_t)] / rho^2 (Tweedie: d E[x0|y] / dy = Cov(x0|y) / rho^2), exact per sample."""
    t = float(schedule.t_of_lambda(lam))
    a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
    rho2 = (s / a) ** 2
    rng = np.random.default_rng(seed)
    y = mix.sample(n, seed=seed) + math.sqrt(rho2) * rng.standard_normal((n, mix.dim))
    s2 = mix.variances + rho2
    diff = y[:, None] - mix.means[None]
    logp = mix.log_weights[None] - 0.5 * (np.log(2 * np.pi * s2).sum(-1)[None] + (diff**2 / s2[None]).sum(-1))
    r = np.exp(logp - logp.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    c = mix.means[None] + (mix.variances / s2)[None] * diff
    pv = mix.variances * rho2 / s2
    var = np.einsum("bk,bkd->bd", r, pv[None] + c * c) - np.einsum("bk,bkd->bd", r, c) ** 2
    return 1.0 - var.mean(0) / rho2


def _closed_form_sb(mix, schedule, lam, l_grid, dl_grid, n, seed, delta=1e-3):
    """s, b at one lambda by least squares of f' on f, f' by finite differences along the exact ODE."""
    rng = np.random.default_rng(seed)

    def at(lv):
        t = float(schedule.t_of_lambda(lv))
        return t, float(schedule.alpha(t)), float(schedule.sigma(t))

    t, a, s = at(lam)
    x = a * mix.sample(n, seed=seed) + s * rng.standard_normal((n, mix.dim))

    def N(xv, lv):
        _, av, sv = at(lv)
        return xv - av * mix.denoise(torch.from_numpy(xv), av, sv).numpy()

    # one-sided second-order differences (the reference ODE solver integrates towards the data only)
    x1 = mix.ode_solve(x, schedule, t, at(lam + delta)[0])
    x2 = mix.ode_solve(x, schedule, t, at(lam + 2 * delta)[0])
    dN = (-3 * N(x, lam) + 4 * N(x1, lam + delta) - N(x2, lam + 2 * delta)) / (2 * delta)
    dlog_a = (math.log(at(lam + delta)[1]) - math.log(at(lam - delta)[1])) / (2 * delta)
    n0 = N(x, lam)
    dx = dlog_a * x - n0
    f = (n0 - l_grid * x) / a
    fp = (dN - dl_grid * x - l_grid * dx) / a - f * dlog_a
    cov = (f * fp).mean(0) - f.mean(0) * fp.mean(0)
    s_ = cov / f.var(0)
    return s_, fp.mean(0) - s_ * f.mean(0)


def test_ems_match_closed_form_on_gaussian_mixture():
    """JVP estimates (4,096 samples per lambda point, one Rademacher probe each, 5 points on t in [0.05, 0.8])
    against the closed-form denoiser's values (32,768 samples for l; 8,192 samples and finite differences
    along the exact ODE for s, b): |l - l_ref| < 0.02 (observed 0.009); |s - s_ref| < 0.05 + 5% and
    |b - b_ref| < 0.02 + 5% (observed <= 0.032 and 0.010) except at the noisiest point, where Var(f) is
    small and the regression is ill-conditioned."""
    mix = GaussianMixture(np.array([[-1.0, 0.5, 0.0, 1.0], [1.0, -0.5, 0.3, -1.0]]), [[0.05, 0.2, 0.1, 0.4]] * 2)
    schedule, _ = schedule_for_config(CFG)
    model = analytic_model_fn(mix, CFG)
    x0 = torch.from_numpy(mix.sample(4096, seed=1))
    kw = dict(grid_size=5, num_samples=4096, batch_size=4096, t_start=0.8, t_end=0.05, dtype=torch.float64)
    e = _ems(model, CFG, x0, **kw)
    l_ref = np.stack([_closed_form_l(mix, schedule, lam, 32768, seed=7) for lam in e.lambdas])
    assert np.abs(e.l - l_ref).max() < 0.02
    # s, b with the same (reference) l, so the comparison isolates f' and the fit
    e2 = _ems(model, CFG, x0, l=l_ref, **kw)
    dl = np.gradient(l_ref, e.lambdas, axis=0)
    for i in (1, 2, 3, 4):
        s_ref, b_ref = _closed_form_sb(mix, schedule, e.lambdas[i], l_ref[i], dl[i], 8192, seed=3)
        assert np.all(np.abs(e2.s[i] - s_ref) < 0.05 + 0.05 * np.abs(s_ref)), (i, e2.s[i], s_ref)
        assert np.all(np.abs(e2.b[i] - b_ref) < 0.02 + 0.05 * np.abs(b_ref)), (i, e2.b[i], b_ref)


# --- files -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_ems():
    mix = GaussianMixture.random(dim=3, components=2, seed=0)
    e = _ems(analytic_model_fn(mix, CFG), CFG, torch.from_numpy(mix.sample(16)), model_id="mix", model_hash="h1")
    return e


def test_save_load_is_lazy_and_round_trips(small_ems, tmp_path):
    p = small_ems.save(tmp_path / "ems.safetensors")
    e = EMS.load(p)
    assert e._arrays is None  # header only
    m = e.metadata
    for key in ("model_id", "model_hash", "shape", "prediction_type", "t_start", "t_end", "grid_size"):
        assert key in m
    assert m["guidance_scale"] == 1.0 and m["num_samples"] == 8 and m["format_version"] == 2
    assert m["grid_size"] == 4 and m["shape"] == [3]
    np.testing.assert_array_equal(e.l, small_ems.l)
    np.testing.assert_array_equal(e.b, small_ems.b)
    np.testing.assert_array_equal(e.lambdas, small_ems.lambdas)
    for name in ("se_l", "se_s", "se_b", "f_rms", "fp_rms"):
        np.testing.assert_array_equal(getattr(e, name), getattr(small_ems, name))
        assert getattr(e, name).shape == e.l.shape and np.all(getattr(e, name) >= 0)


def test_version_1_files_still_load(small_ems, tmp_path):
    """A file written before standard errors existed (format version 1: l, s, b only) loads, without them."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(getattr(small_ems, k)) for k in ("lambdas", "l", "s", "b")}
    meta = dict(small_ems.metadata, format_version=1, sha256=small_ems._checksum(arrays))
    save_file(arrays, str(tmp_path / "v1.safetensors"), metadata={"fastsample_ems": json.dumps(meta)})
    e = EMS.load(tmp_path / "v1.safetensors")
    np.testing.assert_array_equal(e.s, small_ems.s)
    assert e.se_l is None and e.se_b is None and e.metadata["format_version"] == 1


def test_standard_errors_match_the_seed_to_seed_spread():
    """The standard errors of l, s, b (sample variances; for s and b least squares plus l's error propagated by
    the delta method) agree with the spread of the estimates over 10 seeds: RMS spread / RMS SE in [0.7, 1.4]
    for each statistic (observed 0.96 / 1.04 / 1.00 with 12 seeds of 128 samples on a 4-D mixture)."""
    mix = GaussianMixture.random(dim=4, components=3, seed=5)
    x0 = torch.from_numpy(mix.sample(4096, seed=1))
    kw = dict(grid_size=5, num_samples=96, batch_size=96, t_start=0.9, t_end=0.05, dtype=torch.float64)
    es = [_ems(analytic_model_fn(mix, CFG), CFG, x0, seed=k, **kw) for k in range(10)]
    for name in ("l", "s", "b"):
        spread = np.stack([getattr(e, name) for e in es]).std(0, ddof=1)
        se = np.sqrt(np.mean(np.stack([getattr(e, "se_" + name) for e in es]) ** 2, 0))
        ratio = np.sqrt(np.mean(spread**2) / np.mean(se**2))
        assert 0.7 < ratio < 1.4, (name, ratio)


def test_truncated_or_corrupt_file(small_ems, tmp_path):
    p = small_ems.save(tmp_path / "ems.safetensors")
    data = p.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 7])
    with pytest.raises(EMSFileError, match="truncated or corrupt"):
        EMS.load(tmp_path / "cut.safetensors")
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(EMSFileError, match="checksum"):
        _ = EMS.load(tmp_path / "flip.safetensors").l
    with pytest.raises(EMSFileError, match="does not exist"):
        EMS.load(tmp_path / "missing.safetensors")


def test_check_names_every_mismatch(small_ems):
    schedule, _ = schedule_for_config(CFG)
    small_ems.check(prediction_type="epsilon", schedule=schedule, shape=(3,), guidance_scale=1.0, model_hash="h1")
    other, _ = schedule_for_config(DDPMScheduler(beta_schedule="scaled_linear").config)
    with pytest.raises(EMSMismatchError) as err:
        small_ems.check(prediction_type="v_prediction", schedule=other, shape=(4,), guidance_scale=7.5, model_hash="h2")
    msg = str(err.value)
    for word in ("prediction type", "noise schedule", "sample shape", "guidance scale", "model"):
        assert word in msg


def test_checkpoint_resumes_to_the_same_result(tmp_path):
    mix = GaussianMixture.random(dim=3, components=2, seed=1)
    model = analytic_model_fn(mix, CFG)
    x0 = torch.from_numpy(mix.sample(16))
    full = _ems(model, CFG, x0)
    calls = {"n": 0}

    def flaky(x, ts):  # the timestep-derivative check makes 9 calls first
        calls["n"] += 1
        if calls["n"] == 18:
            raise KeyboardInterrupt
        return model(x, ts)

    ck = tmp_path / "ems.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _ems(flaky, CFG, x0, checkpoint=ck)
    assert ck.is_file()
    calls["n"] = 100
    resumed = _ems(flaky, CFG, x0, checkpoint=ck)
    np.testing.assert_allclose(resumed.l, full.l, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resumed.s, full.s, rtol=0, atol=1e-5)
    np.testing.assert_allclose(resumed.b, full.b, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="other settings"):
        _ems(model, CFG, x0, checkpoint=ck, grid_size=5)


# --- real diffusers models -------------------------------------------------------------------------------


def test_tiny_sd_unet_with_guidance_one_batch_at_a_time(tmp_path):
    """SD UNet on VAE latents with CFG: every model call sees at most 2 x batch_size samples (cond + uncond),
    statistics have the latent shape, and the file refuses another model or guidance scale."""
    pipe, pe, ne = tiny_sd()
    lat = vae_latents(pipe.vae, torch.rand(4, 3, 16, 16) * 2 - 1)
    seen = []
    h = pipe.unet.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        e = _ems(
            unet_model_fn(pipe.unet, pe, ne, 7.5),
            pipe.scheduler.config,
            lat,
            guidance_scale=7.5,
            model_hash=model_fingerprint(pipe.unet),
            num_samples=6,
            batch_size=3,
            grid_size=2,
        )
    finally:
        h.remove()
    # the timestep-derivative check: 3 probes x (JVP + 2 forwards) of 2 samples; then per point: 2 JVP batches
    # (l), 2 x (forward + JVP)
    assert max(seen) == 6 and len(seen) == 3 * 3 + 2 * (2 + 2 * 2)
    assert e.shape == (4, 8, 8) and np.isfinite(e.l).all() and np.isfinite(e.s).all()
    e.check(model=pipe.unet, guidance_scale=7.5, shape=(4, 8, 8))
    other = copy.deepcopy(pipe.unet)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(EMSMismatchError, match="model"):
        e.check(model=other)
    with pytest.raises(EMSMismatchError, match="guidance scale"):
        e.check(guidance_scale=5.0)


@pytest.mark.slow
def test_ems_memory_is_flat_in_the_number_of_samples():
    """Peak RSS growth during compute_ems (fresh processes) does not grow with the number of samples."""
    child = r"""
import resource, sys, torch
sys.path.insert(0, "tests")
from test_ems import tiny_sd
from fastsample.ems import compute_ems, unet_model_fn, vae_latents
pipe, pe, ne = tiny_sd()
lat = vae_latents(pipe.vae, torch.rand(4, 3, 16, 16) * 2 - 1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
compute_ems(unet_model_fn(pipe.unet, pe, ne, 7.5), pipe.scheduler.config, lat, grid_size=2,
            num_samples=int(sys.argv[1]), batch_size=4, guidance_scale=7.5, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    growth = []
    for n in (4, 32):
        r = subprocess.run([sys.executable, "-c", child, str(n)], capture_output=True, text=True, check=True)
        growth.append(int(r.stdout.split()[-1]) / 1024)
    assert growth[1] <= growth[0] * 1.5 + 16, growth


def test_cli_demo_like_unet(tmp_path, monkeypatch, capsys):
    """``main(argv)`` on a local UNet2DModel pipeline directory with images from a .npy file: prints the error
    summary; ``--validate`` stores the with / without check in the file."""
    from diffusers import DDPMPipeline
    from tiny_pipelines import ddpm_pipeline

    from fastsample.ems.cli import main

    pipe = ddpm_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    np.save(tmp_path / "x.npy", (np.random.default_rng(0).random((6, 3, 8, 8)) * 2 - 1).astype(np.float32))
    out = main(
        [
            "--model",
            str(tmp_path / "pipe"),
            "--data",
            str(tmp_path / "x.npy"),
            "--out",
            str(tmp_path / "e.safetensors"),
            "--grid-size",
            "3",
            "--num-samples",
            "4",
            "--batch-size",
            "2",
            "--no-progress",
            "--validate",
            "--validate-samples",
            "2",
        ]
    )
    e = EMS.load(out)
    assert e.shape == (3, 8, 8) and e.metadata["model_id"] == str(tmp_path / "pipe")
    printed = capsys.readouterr().out
    assert "3 lambda points x 4 samples" in printed and "samples" in printed.splitlines()[4]
    assert "validation on 2 held-out starts" in printed and "nothing to check" in printed
    v = e.metadata["validation"]  # 3 lambda points: too coarse for 5-10 steps, nothing decided
    assert v["rows"] == {} and v["use_from_lambda"] is None and v["num_samples"] == 2
    e.check(model=DDPMPipeline.from_pretrained(tmp_path / "pipe").unet)

    # --ems: validate existing statistics again (the same arrays, a new check); only with --validate
    again = ["--model", str(tmp_path / "pipe"), "--ems", str(out), "--out", str(tmp_path / "e2.safetensors")]
    with pytest.raises(UserError, match="--ems FILE is for --validate"):
        main(again)
    with pytest.raises(UserError, match="--grid-size, --seed: not used, since --ems validates given statistics"):
        main(again + ["--validate", "--grid-size", "8", "--seed", "3"])  # options only computing statistics reads
    with pytest.raises(UserError, match="--validate-samples: not used, since there is no --validate"):
        main(["--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "e3.safetensors"), "--validate-samples", "3"])
    e2 = EMS.load(main(again + ["--validate", "--validate-samples", "3", "--no-progress"]))
    assert e2.metadata["validation"]["num_samples"] == 3 and e2.metadata["num_samples"] == 4
    for name in ("l", "s", "b", "se_l"):
        assert torch.equal(torch.as_tensor(getattr(e2, name)), torch.as_tensor(getattr(e, name)))


class _Rank:
    """A stand-in for ``accelerate``'s state: one process of ``world``; ``reduce`` returns the local sum."""

    def __init__(self, rank, world):
        self.process_index, self.num_processes, self.device = rank, world, torch.device("cpu")

    def reduce(self, t, reduction="sum"):
        return t


def test_processes_share_the_samples_and_batch_size_does_not_matter():
    """Each process takes its own samples (noise and probes seeded per sample), so the per-process sums add
    up to the single-process result; l = sigma * E[v * J v] for an epsilon model is linear in the sums."""
    mix = GaussianMixture.random(dim=3, components=2, seed=3)
    model = analytic_model_fn(mix, CFG)
    x0 = torch.from_numpy(mix.sample(16))
    kw = dict(num_samples=10, dtype=torch.float64)
    full = _ems(model, CFG, x0, batch_size=10, **kw)
    np.testing.assert_allclose(_ems(model, CFG, x0, batch_size=3, **kw).l, full.l, rtol=0, atol=1e-6)
    parts = [_ems(model, CFG, x0, batch_size=4, accelerator=_Rank(r, 2), **kw).l for r in (0, 1)]
    np.testing.assert_allclose(parts[0] + parts[1], full.l, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_accelerate_launch_two_processes_match_one(tmp_path):
    """``accelerate launch --cpu --num_processes 2 -m fastsample ems``: each rank its own samples (seeded per
    sample), sums all-reduced over gloo; equal to one process up to the UNet's float32 batch round-off."""
    import shutil
    from pathlib import Path

    from tiny_pipelines import ddpm_pipeline

    from fastsample.cli import main

    ddpm_pipeline().save_pretrained(tmp_path / "pipe")
    np.save(tmp_path / "x.npy", (np.random.default_rng(0).random((6, 3, 8, 8)) * 2 - 1).astype(np.float32))
    args = ["--model", str(tmp_path / "pipe"), "--data", str(tmp_path / "x.npy"), "--grid-size", "3"]
    args += ["--num-samples", "6", "--batch-size", "2", "--no-progress"]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is not installed beside this Python"
    cmd = [accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "-m", "fastsample", "ems", *args, "--out", str(tmp_path / "two.safetensors")]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    two = EMS.load(tmp_path / "two.safetensors")
    assert main(["ems", *args, "--out", str(tmp_path / "one.safetensors")]) == 0
    one = EMS.load(tmp_path / "one.safetensors")
    assert two.metadata["num_samples"] == one.metadata["num_samples"] == 6
    for name in ("l", "s", "b"):
        np.testing.assert_allclose(getattr(two, name), getattr(one, name), rtol=1e-3, atol=1e-4)


def test_shared_noise_makes_statistics_smooth_in_lambda():
    """Common random numbers across lambda: the estimation error varies smoothly, so the second differences
    of l and b along the grid are about half those of independent draws per point (64 samples)."""
    mix = GaussianMixture.random(dim=3, components=2, seed=3)
    x0 = torch.from_numpy(mix.sample(64))
    rough = {}
    for shared in (True, False):
        e = _ems(
            analytic_model_fn(mix, CFG),
            CFG,
            x0,
            grid_size=24,
            num_samples=64,
            batch_size=64,
            dtype=torch.float64,
            shared_noise=shared,
            t_start=0.9,
            t_end=0.05,
        )
        rough[shared] = [np.abs(np.diff(np.asarray(v), 2, axis=0)).mean() for v in (e.l, e.b)]
        assert e.metadata["shared_noise"] is shared
    assert rough[True][0] < 0.7 * rough[False][0] and rough[True][1] < 0.7 * rough[False][1], rough


# --- model functions that are not differentiable in the timestep -----------------------------------------


def _wrappers(mix):
    """Users' wrappers of an exact eps-model: the timestep through float(t), or alphas_cumprod[int(t)]."""
    schedule, _ = schedule_for_config(CFG)
    exact = mix.model_fn(schedule)
    ac = torch.as_tensor(DDPMScheduler().alphas_cumprod, dtype=torch.float64)
    mu, v = (torch.as_tensor(a[0]) for a in (mix.means, mix.variances))

    def via_float(x, ts):
        return exact(x, float(ts[0] + 1) / 1000.0)

    def via_table(x, ts):  # one Gaussian component: x0-hat = mu + v / (v + rho^2) (y - mu)
        a = ac[ts.long()].sqrt()[:, None]
        s = (1 - a * a).sqrt()
        y = x.to(torch.float64) / a
        x0 = mu + v / (v + (s / a) ** 2) * (y - mu)
        return ((x - a * x0) / s).to(x.dtype)

    return via_float, via_table


@pytest.mark.parametrize("which", [0, 1])
def test_model_not_differentiable_in_the_timestep_is_refused(which):
    mix = GaussianMixture.random(dim=3, components=1, seed=0)
    fn = _wrappers(mix)[which]
    with pytest.raises(ValueError, match="not differentiable in the timestep"):
        _ems(fn, CFG, torch.from_numpy(mix.sample(8)))


def test_model_with_tf32_rounding_is_accepted():
    """Why: on a GPU (TF32 convolutions by default) the demo flow model's float32 outputs carry ~1e-3 relative
    rounding, which swamps a central difference over +-0.1 labels: the probe refused a correct model. Here the
    exact model's outputs are rounded to TF32's 10 mantissa bits (its derivative left exact): accepted. (s and b
    of this rounded model are off by up to 100% of their size: compute_ems turns TF32 off on CUDA.)"""
    mix = GaussianMixture.random(dim=3, components=2, seed=0)
    labels = analytic_model_fn(mix, CFG)

    def tf32(x, ts):
        out = labels(x, ts)
        v = out.detach()
        scale = torch.exp2(torch.floor(torch.log2(v.abs().clamp_min(1e-30))))
        return out + (torch.round(v / scale * 1024) / 1024 * scale - v)

    data = torch.from_numpy(mix.sample(8))
    a, b = _ems(tf32, CFG, data), _ems(labels, CFG, data)
    np.testing.assert_array_equal(a.l, b.l)


def test_statistics_are_computed_without_tf32_and_the_setting_restored():
    """Every model call of compute_ems (the derivative probe and the estimation) runs with TF32 off, as CUDA's
    default TF32 convolutions move s and b by up to 100%; the user's setting is back afterwards."""
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    mix = GaussianMixture.random(dim=3, components=2, seed=0)
    exact, seen = analytic_model_fn(mix, CFG), set()

    def model(x, ts):
        seen.add(tuple(b.fp32_precision for b in backends))
        return exact(x, ts)

    before = tuple(b.fp32_precision for b in backends)
    for b in backends:
        b.fp32_precision = "tf32"
    try:
        _ems(model, CFG, torch.from_numpy(mix.sample(8)))
        assert seen == {("ieee", "ieee")}
        assert all(b.fp32_precision == "tf32" for b in backends)
    finally:
        for b, value in zip(backends, before):
            b.fp32_precision = value


def test_summary_says_when_more_samples_are_needed(small_ems):
    """Statistics 1.2 standard errors from DPM-Solver++'s values (3 elements) are partly noise (James-Stein weight
    0.2-0.8): more samples needed; fifty standard errors away they are resolved."""
    from fastsample.ems.validation import summary

    k = small_ems.l.shape
    errors = {n: np.full(k, 0.1) for n in ("se_l", "se_s", "se_b")}
    errors.update(f_rms=np.ones(k), fp_rms=np.ones(k), x0_var=np.ones((1, *k[1:])))
    sign = np.where(np.arange(np.prod(k)).reshape(k) % 2, 1.0, -1.0)
    for z, verdict in ((1.2, "more samples needed"), (50.0, "enough samples")):
        e = EMS(
            small_ems.lambdas, 1 + 0.1 * z * sign, 0.1 * z * sign, 0.1 * z * sign, small_ems.metadata, errors=errors
        )
        text = summary(e)
        assert verdict in text, text
        assert text.splitlines()[1].startswith("l: lambda")
