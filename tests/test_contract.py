"""The drop-in contract (docs/design.md): every public scheduler against what Diffusers pipelines call.

Parametrised over ``fastsample.schedulers.__all__``, so schedulers added later are covered
automatically; a flow-only or VP-only class says so with ``supports_vp`` / ``supports_flow``.
Pipelines are the real Diffusers classes built from tiny random configs (``tiny_pipelines``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
)
from tiny_pipelines import (
    FLUX_SCHEDULER,
    SD3_SCHEDULER,
    SD15_SCHEDULER,
    SDXL_SCHEDULER,
    TEXT_LEN,
    ddpm_pipeline,
    flux_pipeline,
    sd3_img2img_pipeline,
    sd3_pipeline,
    sd_img2img_pipeline,
    sd_pipeline,
    sdxl_pipeline,
)

import fastsample.schedulers as public
from fastsample.schedulers import DEISScheduler
from fastsample.schedulers.adapter import FastScheduler
from fastsample.solvers.ddim import DDIMSolver
from fastsample.solvers.sampling import NonFiniteModelOutput


class DDIMTestScheduler(FastScheduler):
    """Test-local DDIM: separates adapter bugs from solver bugs in the parity tests."""

    config_keys = {}

    def make_solver(self):
        return DDIMSolver()


REPO = Path(__file__).resolve().parents[1]
PUBLIC = [getattr(public, name) for name in public.__all__]
# (class, extra config): every public class at its defaults, plus multi-stage / other-variant DEIS.
CASES = [(cls, {}) for cls in PUBLIC] + [
    (DEISScheduler, {"deis_variant": "rhork", "solver_order": 2}),
    (DEISScheduler, {"deis_variant": "logrho", "solver_order": 2}),
]
if hasattr(public, "RectifiedFlowScheduler"):  # a multi-stage flow solver (two model calls per step)
    CASES.append((public.RectifiedFlowScheduler, {"solver": "heun"}))

SOURCES = {
    "sd15_pndm": (PNDMScheduler, SD15_SCHEDULER, "vp"),
    "sd15_ddim": (
        DDIMScheduler,
        {k: v for k, v in SD15_SCHEDULER.items() if k != "skip_prk_steps"} | {"clip_sample": False},
        "vp",
    ),
    "sdxl_euler": (EulerDiscreteScheduler, SDXL_SCHEDULER, "vp"),
    "sd3": (FlowMatchEulerDiscreteScheduler, SD3_SCHEDULER, "flow"),
    "flux": (FlowMatchEulerDiscreteScheduler, FLUX_SCHEDULER, "flow"),
    # Sana / Wan style: a diffusers multistep solver switched to flow sigmas by its own keys
    "sana_dpm": (
        DPMSolverMultistepScheduler,
        dict(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"),
        "flow",
    ),
}
KIND_SOURCE = {"vp": "sd15_pndm", "flow": "sd3"}


def _case_id(case):
    cls, kw = case
    return cls.__name__ + "".join(f"-{v}" for v in kw.values())


def _supports(cls, kind: str) -> bool:
    return getattr(cls, "supports_vp" if kind == "vp" else "supports_flow", True)


def _skip_unsupported(cls, kind: str, kw: dict | None = None):
    if not _supports(cls, kind):
        pytest.skip(f"{cls.__name__} does not support {kind} models")
    if kind == "flow" and (kw or {}).get("deis_variant") == "rhork":
        pytest.skip("Runge-Kutta in rho cannot start at t = 1 of a flow (documented)")


def _source(name: str):
    src_cls, cfg, kind = SOURCES[name]
    return src_cls(**cfg), kind


def _make(case, kind: str) -> FastScheduler:
    cls, kw = case
    _skip_unsupported(cls, kind, kw)
    src, _ = _source(KIND_SOURCE[kind])
    return cls.from_config(src.config, **kw)


def _model(x, t):
    """A deterministic stand-in for a network: smooth in x and in the timestep label."""
    t = torch.as_tensor(t, dtype=torch.float32) / 1000.0
    return (0.3 * x.float() + torch.sin(3.0 * t + x.float())).to(x.dtype)


def _run(sched, x, timesteps=None, **step_kw):
    for t in sched.timesteps if timesteps is None else timesteps:
        x = sched.step(_model(x, t), t, x, **step_kw).prev_sample
    return x


def _first_evals(sched) -> np.ndarray:
    """Index of the first model evaluation of each grid step."""
    s = sched.plan.step_of_eval
    return np.r_[0, np.flatnonzero(np.diff(s)) + 1]


def _public_config(cfg) -> dict:
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


@pytest.fixture
def diffusers_warnings():
    """Warnings that diffusers logs while the test runs (its logger does not propagate)."""
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                records.append(record.getMessage())

    handler = Collect()
    root = logging.getLogger("diffusers")
    root.addHandler(handler)
    yield records
    root.removeHandler(handler)


# --- from_config from the released models' configs ------------------------------------------------


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("via", ["memory", "json"])
def test_from_released_config(cls, source, via, tmp_path, diffusers_warnings):
    src, kind = _source(source)
    _skip_unsupported(cls, kind)
    if via == "json":
        src.save_pretrained(tmp_path)
        sched = cls.from_pretrained(tmp_path)
    else:
        sched = cls.from_config(src.config)
    assert not diffusers_warnings, diffusers_warnings  # foreign keys are dropped quietly
    c = sched.config
    assert isinstance(sched, cls)
    if kind == "flow":
        assert c.use_flow_sigmas and c.prediction_type == "flow_prediction" and sched.schedule.is_flow
        assert c.flow_shift == src.config.get("shift", src.config.get("flow_shift"))
        assert c.use_dynamic_shifting == src.config.get("use_dynamic_shifting", False)
        if c.use_dynamic_shifting:
            for key in ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len"):
                assert c[key] == src.config[key], key
            with pytest.raises(ValueError, match="mu"):
                sched.set_timesteps(4)
            sched.set_timesteps(4, mu=0.8)
        else:
            sched.set_timesteps(4)
        assert sched.timesteps.dtype == torch.float32
    else:
        assert not c.use_flow_sigmas and not sched.schedule.is_flow
        # In memory, keys the source left at its own default are the target's default (diffusers'
        # ``_use_default_values``); a saved JSON file states every key, as SDXL's does.
        given = src.config if via == "json" else SOURCES[source][1]
        for key in ("beta_schedule", "beta_start", "beta_end", "steps_offset", "prediction_type", "timestep_spacing"):
            if key in given:
                assert c[key] == given[key], key
        np.testing.assert_allclose(sched.schedule.alphas_cumprod, src.alphas_cumprod.double().numpy(), rtol=1e-6)
        sched.set_timesteps(5)
        ts = sched.timesteps
        assert ts.dtype == torch.int64 and torch.all(ts[1:] < ts[:-1]) and 0 <= int(ts[-1]) and int(ts[0]) <= 999


@pytest.mark.parametrize("ours", [DDIMTestScheduler, DEISScheduler], ids=lambda c: c.__name__)
@pytest.mark.parametrize("source", ["sd15_pndm", "sd15_ddim", "sdxl_euler"])
@pytest.mark.parametrize("via", ["memory", "json"])
def test_default_spacing_follows_config(ours, source, via, tmp_path):
    """Schedulers on diffusers' spacing: the timesteps DPMSolverMultistep gets from the same config."""
    src, _ = _source(source)
    dpm = DPMSolverMultistepScheduler
    if via == "json":
        src.save_pretrained(tmp_path)
        sched, ref = ours.from_pretrained(tmp_path, solver_order=1), dpm.from_pretrained(tmp_path)
    else:
        sched, ref = ours.from_config(src.config, solver_order=1), dpm.from_config(src.config)
    for n in (5, 8):
        sched.set_timesteps(n)
        ref.set_timesteps(n)
        assert sched.timesteps.tolist() == ref.timesteps.tolist()


def test_flux_config_is_flow_and_dynamic():
    """The Flux config's distinctive keys arrive (guards the SOURCES table itself)."""
    sched = DEISScheduler.from_config(FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER).config)
    assert sched.config.use_dynamic_shifting and sched.config.max_shift == 1.15


# --- config round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_save_load_round_trip(case, kind, tmp_path):
    sched = _make(case, kind)
    sched.save_pretrained(tmp_path)
    loaded = type(sched).from_pretrained(tmp_path)
    assert _public_config(loaded.config) == _public_config(sched.config)
    for s in (sched, loaded):
        s.set_timesteps(6)
    assert torch.equal(sched.timesteps, loaded.timesteps)
    assert torch.equal(sched.sigmas, loaded.sigmas)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_run(sched, x), _run(loaded, x))


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_switch_to_compatibles_and_back(case, kind):
    sched = _make(case, kind)
    names = [n for n in sched._compatibles if hasattr(diffusers, n)]
    if _supports(type(sched), "vp"):
        assert "DPMSolverMultistepScheduler" in names
    if _supports(type(sched), "flow"):
        assert "FlowMatchEulerDiscreteScheduler" in names
    for name in names:
        try:
            other = getattr(diffusers, name).from_config(sched.config)
        except ImportError:  # a diffusers dummy object: an optional backend (torchsde) is missing
            continue
        back = type(sched).from_config(other.config)
        got = {k: v for k, v in _public_config(back.config).items() if k in sched.config}
        assert got == _public_config(sched.config), name
        assert back.schedule.is_flow == sched.schedule.is_flow, name


# --- step contract --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_dtype_in_equals_dtype_out(case, kind, dtype):
    sched = _make(case, kind)
    sched.set_timesteps(4)
    ts = sched.timesteps
    if kind == "flow":
        assert ts.dtype == torch.float32
    else:  # int64 unless a multi-stage solver evaluates between training timesteps
        assert ts.dtype == torch.int64 or (ts.dtype == torch.float32 and not torch.equal(ts, ts.round()))
    x = torch.randn(1, 4, 4, 4).to(dtype)
    for t in sched.timesteps:
        out = sched.step(_model(x, t), t, x)
        assert out.prev_sample.dtype == dtype and out.pred_original_sample.dtype == dtype
        assert out.prev_sample.shape == x.shape and torch.isfinite(out.prev_sample.float()).all()
        x = out.prev_sample


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_len_timesteps_is_nfe_and_order(case, kind):
    sched = _make(case, kind)
    for n in (2, 4, 7):
        sched.set_timesteps(n)
        assert len(sched.timesteps) == sched.plan.nfe == len(sched.plan.eval_times)
        assert sched.num_inference_steps == n
        assert sched.order == sched.solver.stages
        if sched.order == 1:
            assert len(sched.timesteps) == n
        # diffusers' convention (its Heun schedulers too): sigmas[i] is the level of timesteps[i], plus the end
        assert len(sched.sigmas) == len(sched.timesteps) + 1 and float(sched.sigmas[-1]) == 0.0
        assert torch.all(sched.sigmas[1:] <= sched.sigmas[:-1])
        levels = sched.plan.eval_times
        if kind == "flow":
            np.testing.assert_allclose(sched.sigmas[:-1].numpy(), levels, rtol=1e-6)
            np.testing.assert_allclose(sched.timesteps.numpy(), sched.schedule.timestep(levels), rtol=1e-5)
        else:
            np.testing.assert_allclose(sched.sigmas[:-1].numpy(), sched.schedule.sigma_ve(levels), rtol=1e-5)


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_one_step_run(case, kind):
    """``num_inference_steps=1`` (one-step / turbo use): one model call straight to the data end."""
    sched = _make(case, kind)
    sched.set_timesteps(1)
    assert sched.num_inference_steps == 1 and len(sched.timesteps) == sched.plan.nfe >= 1
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    for t in sched.timesteps:
        out = sched.step(_model(x, t), t, x)
        x = out.prev_sample
    assert torch.isfinite(x).all()
    if sched.plan.nfe == 1:  # one first-order step to sigma = 0 returns x0-hat
        torch.testing.assert_close(out.prev_sample, out.pred_original_sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_return_dict_false_parity(case, kind):
    a, b = _make(case, kind), _make(case, kind)
    for s in (a, b):
        s.set_timesteps(5)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    xa = xb = x
    for t in a.timesteps:
        out = a.step(_model(xa, t), t, xa)
        tup = b.step(_model(xb, t), t, xb, return_dict=False)
        assert isinstance(tup, tuple)
        assert torch.equal(out.prev_sample, tup[0]) and torch.equal(out.pred_original_sample, tup[1])
        xa, xb = out.prev_sample, tup[0]


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_step_before_set_timesteps(case, kind):
    sched = _make(case, kind)
    x = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(x, 999 if kind == "vp" else 1000.0, x)


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_nan_model_output_names_step(case, kind):
    sched = _make(case, kind)
    sched.set_timesteps(5)
    x = torch.randn(1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"step 2\b"):
        for k, t in enumerate(sched.timesteps):
            out = _model(x, t)
            if k == 2:
                out = out.clone()
                out[0, 0, 0, 0] = float("nan")
            x = sched.step(out, t, x).prev_sample
    assert issubclass(NonFiniteModelOutput, ValueError)


# --- set_timesteps arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_set_timesteps_with_timesteps_vp(case):
    sched = _make(case, "vp")
    custom = [999, 850, 600, 420, 180, 40]
    sched.set_timesteps(timesteps=custom)
    assert sched.num_inference_steps == len(custom)
    assert sched.timesteps[_first_evals(sched)].tolist() == custom
    if sched.order == 1:
        assert sched.timesteps.tolist() == custom


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_set_timesteps_with_timesteps_flow(case):
    """Explicit float labels (1000 sigma) are used as given: no shift, then a final step to 0."""
    sched = _make(case, "flow")
    custom = [1000.0, 900.0, 700.0, 450.0, 200.0]
    sched.set_timesteps(timesteps=custom)
    assert sched.num_inference_steps == len(custom) and sched.timesteps.dtype == torch.float32
    np.testing.assert_allclose(sched.timesteps[_first_evals(sched)].numpy(), custom, rtol=1e-6)
    np.testing.assert_allclose(sched.plan.grid, np.append(np.asarray(custom) / 1000, 0.0), rtol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_set_timesteps_with_sigmas_vp(case):
    """Karras sigmas from diffusers' Euler (SDXL config) give the same timesteps (to the integer)."""
    sched = _make(case, "vp")
    ref = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler(**SDXL_SCHEDULER).config, use_karras_sigmas=True)
    ref.set_timesteps(6)
    sched.set_timesteps(sigmas=ref.sigmas.numpy())
    assert sched.num_inference_steps == 6
    got = sched.timesteps[_first_evals(sched)].double()
    assert torch.all((got - ref.timesteps.double()).abs() <= 1.0), (got, ref.timesteps)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_set_timesteps_with_sigmas_flow(case):
    """As SD3 pipelines pass ``sigmas``: shifted once, like FlowMatchEulerDiscreteScheduler."""
    sched = _make(case, "flow")
    sigmas = np.linspace(1.0, 1 / 5, 5)
    ref = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER)
    ref.set_timesteps(sigmas=sigmas)
    sched.set_timesteps(sigmas=sigmas)
    np.testing.assert_allclose(sched.plan.grid, ref.sigmas.double().numpy(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sched.timesteps[_first_evals(sched)], ref.timesteps.float(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("mu", [0.5, 1.15])
def test_set_timesteps_with_mu_flux(case, mu):
    """As the Flux pipeline calls it (``use_flow_sigmas`` makes it pass no sigmas, only ``mu``)."""
    cls, kw = case
    _skip_unsupported(cls, "flow", kw)
    sched = cls.from_config(FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER).config, **kw)
    ref = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    ref.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4), mu=mu)
    sched.set_timesteps(4, mu=mu)
    np.testing.assert_allclose(sched.plan.grid, ref.sigmas.double().numpy(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sched.timesteps[_first_evals(sched)], ref.timesteps.float(), rtol=0, atol=1e-3)


def test_set_timesteps_argument_errors():
    sched = DEISScheduler.from_config(PNDMScheduler(**SD15_SCHEDULER).config)
    with pytest.raises(ValueError, match="at most one"):
        sched.set_timesteps(sigmas=[1.0, 0.5], timesteps=[999, 500])
    with pytest.raises(ValueError):
        sched.set_timesteps()


# --- img2img entry points -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_set_begin_index_equals_truncated_run(case, kind):
    """img2img: starting mid-run equals running on the remaining timesteps from scratch."""
    sched, fresh = _make(case, kind), _make(case, kind)
    sched.set_timesteps(6)
    begin = 2 * sched.order
    start = _first_evals(sched)[2]
    assert start == begin or sched.order > 1 and start > 0
    rest = sched.timesteps[start:]
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    sched.set_begin_index(start)
    got = _run(sched, x, rest)
    labels = sched.timesteps[_first_evals(sched)][2:]
    if kind == "vp":
        fresh.set_timesteps(timesteps=labels.tolist())
    else:
        fresh.set_timesteps(sigmas=None, timesteps=labels.double().numpy())
    assert len(fresh.timesteps) == len(rest)
    want = _run(fresh, x, fresh.timesteps)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_add_noise_vp(case):
    sched = _make(case, "vp")
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    t = sched.timesteps[1]
    tt = sched.schedule.t_of_timestep(float(t))
    want = sched.schedule.alpha(tt) * x0 + sched.schedule.sigma(tt) * eps
    torch.testing.assert_close(sched.add_noise(x0, eps, t), want, rtol=1e-5, atol=1e-5)
    # per-sample integer timesteps, as training scripts pass them: diffusers' DDPM values
    ts = torch.tensor([999, 500, 7])
    ref = DDPMScheduler(**{k: SD15_SCHEDULER[k] for k in ("beta_schedule", "beta_start", "beta_end")})
    torch.testing.assert_close(sched.add_noise(x0, eps, ts), ref.add_noise(x0, eps, ts), rtol=1e-5, atol=1e-5)
    half = sched.add_noise(x0.half(), eps.half(), t)
    assert half.dtype == torch.float16


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_add_noise_and_scale_noise_flow(case):
    sched = _make(case, "flow")
    ref = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER)
    sigmas = np.linspace(1.0, 1 / 6, 6)
    sched.set_timesteps(sigmas=sigmas)
    ref.set_timesteps(sigmas=sigmas)
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    k = int(_first_evals(sched)[2])
    t = sched.timesteps[k : k + 1].repeat(2)
    s = float(sched.sigmas[k])
    want = (1 - s) * x0 + s * eps
    torch.testing.assert_close(sched.add_noise(x0, eps, t), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sched.scale_noise(x0, t, eps), want, rtol=1e-5, atol=1e-5)
    ref_t = ref.timesteps[2:3].repeat(2)
    torch.testing.assert_close(sched.scale_noise(x0, t, eps), ref.scale_noise(x0, ref_t, eps), rtol=1e-5, atol=1e-5)
    assert sched.scale_noise(x0.bfloat16(), t, eps.bfloat16()).dtype == torch.bfloat16


# --- real pipelines with tiny random weights ------------------------------------------------------


@pytest.fixture(scope="module")
def pipes():
    """Pipelines built once per module (lazily: only those a selected test uses)."""
    cache = {}
    builders = {
        "ddpm": ddpm_pipeline,
        "sd": sd_pipeline,
        "sd_img2img": sd_img2img_pipeline,
        "sd3": sd3_pipeline,
        "sd3_img2img": sd3_img2img_pipeline,
        "flux": flux_pipeline,
    }

    def get(name):
        if name not in cache:
            cache[name] = builders[name]()
        return cache[name]

    return get


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def _gen():
    return torch.Generator().manual_seed(0)


def _run_capturing(pipe, **kwargs):
    """Run the pipeline; returns (images, the final latents as the scheduler's last step returned them).

    Parity is checked on the latents too: a random-weight pipeline's images can saturate in [0, 1].
    """
    sched, last = pipe.scheduler, {}
    step = sched.step

    def spy(*args, **kw):
        out = step(*args, **kw)
        last["x"] = out[0] if isinstance(out, tuple) else out.prev_sample
        return out

    sched.step = spy
    try:
        images = pipe(**kwargs).images
    finally:
        del sched.step
    return images, last["x"]


PROMPT = dict(prompt="a cat", negative_prompt="dog", height=16, width=16, output_type="np")


def _check_image(images, shape):
    assert images.shape == shape, images.shape
    assert np.isfinite(images).all()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_ddpm_pipeline(case, pipes):
    cls, kw = case
    _skip_unsupported(cls, "vp", kw)
    pipe = pipes("ddpm")
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **kw)
    calls, h = _count_calls(pipe.unet)
    try:
        images = pipe(batch_size=2, num_inference_steps=5, generator=_gen(), output_type="np").images
    finally:
        h.remove()
    _check_image(images, (2, 8, 8, 3))
    assert len(calls) == len(pipe.scheduler.timesteps)
    again = pipe(batch_size=2, num_inference_steps=5, generator=_gen(), output_type="np").images
    np.testing.assert_array_equal(again, images)  # a second run with the same scheduler object starts afresh


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_sd_pipeline_with_guidance(case, pipes):
    cls, kw = case
    _skip_unsupported(cls, "vp", kw)
    pipe = pipes("sd")
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **kw)
    calls, h = _count_calls(pipe.unet)
    try:
        images = pipe(num_inference_steps=5, guidance_scale=6.0, generator=_gen(), **PROMPT).images
    finally:
        h.remove()
    _check_image(images, (1, 16, 16, 3))
    assert len(calls) == len(pipe.scheduler.timesteps)  # CFG batches cond + uncond in one call


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_sd_img2img_pipeline(case, pipes):
    cls, kw = case
    _skip_unsupported(cls, "vp", kw)
    pipe = pipes("sd_img2img")
    sched = cls.from_config(pipe.scheduler.config, **kw)
    pipe.scheduler = sched
    seen = {}
    add_noise = sched.add_noise

    def spy(original, noise, timesteps):
        seen["t"] = timesteps
        return add_noise(original, noise, timesteps)

    sched.add_noise = spy
    image = torch.rand(1, 3, 16, 16, generator=_gen())
    calls, h = _count_calls(pipe.unet)
    try:
        out = pipe(image=image, strength=0.6, num_inference_steps=5, guidance_scale=3.0, generator=_gen(), **PROMPT)
    finally:
        h.remove()
    _check_image(out.images, (1, 16, 16, 3))
    start = sched.begin_index
    assert start is not None and start > 0
    assert int(seen["t"][0]) == int(sched.timesteps[start])
    assert len(calls) == len(sched.timesteps) - start


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_sd3_pipeline(case, pipes):
    cls, kw = case
    _skip_unsupported(cls, "flow", kw)
    pipe = pipes("sd3")
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **kw)
    assert pipe.scheduler.schedule.is_flow
    calls, h = _count_calls(pipe.transformer)
    try:
        images = pipe(
            num_inference_steps=5, guidance_scale=5.0, max_sequence_length=TEXT_LEN, generator=_gen(), **PROMPT
        ).images
    finally:
        h.remove()
    _check_image(images, (1, 16, 16, 3))
    assert len(calls) == len(pipe.scheduler.timesteps)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_sd3_img2img_pipeline(case, pipes):
    cls, kw = case
    _skip_unsupported(cls, "flow", kw)
    pipe = pipes("sd3_img2img")
    sched = cls.from_config(pipe.scheduler.config, **kw)
    pipe.scheduler = sched
    seen = {}
    scale_noise = sched.scale_noise

    def spy(sample, timestep, noise=None):
        seen["t"] = timestep
        return scale_noise(sample, timestep, noise)

    sched.scale_noise = spy
    image = torch.rand(1, 3, 16, 16, generator=_gen())
    out = pipe(
        image=image,
        strength=0.6,
        num_inference_steps=5,
        guidance_scale=3.0,
        max_sequence_length=TEXT_LEN,
        generator=_gen(),
        **PROMPT,
    )
    _check_image(out.images, (1, 16, 16, 3))
    start = sched.begin_index
    assert start is not None and start > 0
    assert float(seen["t"][0]) == pytest.approx(float(sched.timesteps[start]))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_flux_pipeline(case, pipes):
    cls, kw = case
    _skip_unsupported(cls, "flow", kw)
    pipe = pipes("flux")
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **kw)
    assert pipe.scheduler.config.use_dynamic_shifting
    calls, h = _count_calls(pipe.transformer)
    try:
        images = pipe(
            prompt="a cat",
            height=16,
            width=16,
            num_inference_steps=4,
            max_sequence_length=TEXT_LEN,
            generator=_gen(),
            output_type="np",
        ).images
    finally:
        h.remove()
    _check_image(images, (1, 16, 16, 3))
    assert len(calls) == len(pipe.scheduler.timesteps)


@pytest.mark.slow
@pytest.mark.parametrize("build", [sd_pipeline, sd3_pipeline, flux_pipeline], ids=lambda b: b.__name__)
@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_bf16_pipeline_keeps_dtype(cls, build):
    """A bf16 pipeline: the scheduler gets and returns bf16 latents at every step."""
    kind = "vp" if build is sd_pipeline else "flow"
    _skip_unsupported(cls, kind)
    pipe = build().to(torch.bfloat16)
    sched = cls.from_config(pipe.scheduler.config)
    pipe.scheduler = sched
    dtypes = set()
    step = sched.step

    def spy(model_output, timestep, sample, *args, **kwargs):
        out = step(model_output, timestep, sample, *args, **kwargs)
        prev = out[0] if isinstance(out, tuple) else out.prev_sample
        dtypes.add((model_output.dtype, sample.dtype, prev.dtype))
        return out

    sched.step = spy
    kw = {} if kind == "vp" else {"max_sequence_length": TEXT_LEN}
    images = pipe("a cat", num_inference_steps=4, height=16, width=16, generator=_gen(), output_type="pt", **kw).images
    assert dtypes == {(torch.bfloat16,) * 3}
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images.float()).all()


# --- parity of whole pipeline runs with diffusers' first-order schedulers -------------------------

FIRST_ORDER = [DDIMTestScheduler, DEISScheduler]
FIRST_ORDER_KW = {DDIMTestScheduler: {}, DEISScheduler: {"solver_order": 1}}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("ours", FIRST_ORDER, ids=lambda c: c.__name__)
def test_ddpm_pipeline_matches_ddim(ours, prediction_type, pipes):
    """DDIM (eta 0) in DDPMPipeline: 'trailing' spacing is the same integer grid in both."""
    pipe = pipes("ddpm")
    ddim = DDIMScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", clip_sample=False, prediction_type=prediction_type
    )
    kw = dict(batch_size=2, num_inference_steps=5, output_type="np")
    pipe.scheduler = ddim
    want, want_x = _run_capturing(pipe, generator=_gen(), **kw)
    pipe.scheduler = ours.from_config(ddim.config, **FIRST_ORDER_KW[ours])
    assert pipe.scheduler.config.prediction_type == prediction_type
    got, got_x = _run_capturing(pipe, generator=_gen(), **kw)
    assert pipe.scheduler.timesteps.tolist() == ddim.timesteps.tolist()
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("ours", FIRST_ORDER, ids=lambda c: c.__name__)
def test_sd3_pipeline_matches_flowmatch_euler(ours, pipes):
    """First-order DEIS on a flow is Euler in t; with the same ``sigmas`` the images agree."""
    pipe = pipes("sd3")
    ref = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER)
    kw = dict(num_inference_steps=4, guidance_scale=5.0, max_sequence_length=TEXT_LEN, **PROMPT)
    sigmas = np.linspace(1.0, 1 / 4, 4)
    pipe.scheduler = ref
    want, want_x = _run_capturing(pipe, generator=_gen(), sigmas=sigmas, **kw)
    pipe.scheduler = ours.from_config(ref.config, **FIRST_ORDER_KW[ours])
    got, got_x = _run_capturing(pipe, generator=_gen(), sigmas=sigmas, **kw)
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("ours", FIRST_ORDER, ids=lambda c: c.__name__)
def test_flux_pipeline_matches_flowmatch_euler(ours, pipes):
    """Flux passes only ``mu`` to us (``use_flow_sigmas``); our default grid is its default grid."""
    pipe = pipes("flux")
    ref = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    kw = dict(prompt="a cat", height=16, width=16, num_inference_steps=4, max_sequence_length=TEXT_LEN)
    pipe.scheduler = ref
    want, want_x = _run_capturing(pipe, generator=_gen(), output_type="np", **kw)
    pipe.scheduler = ours.from_config(ref.config, **FIRST_ORDER_KW[ours])
    got, got_x = _run_capturing(pipe, generator=_gen(), output_type="np", **kw)
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("ours", FIRST_ORDER, ids=lambda c: c.__name__)
def test_sd_pipeline_matches_ddim(ours, pipes):
    """DDIM (eta 0, final alpha 1) inside StableDiffusionPipeline with classifier-free guidance."""
    pipe = pipes("sd")
    ddim = DDIMScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )
    kw = dict(num_inference_steps=5, guidance_scale=6.0, **PROMPT)
    pipe.scheduler = ddim
    want, want_x = _run_capturing(pipe, generator=_gen(), **kw)
    pipe.scheduler = ours.from_config(ddim.config, **FIRST_ORDER_KW[ours])
    got, got_x = _run_capturing(pipe, generator=_gen(), **kw)
    assert pipe.scheduler.timesteps.tolist() == ddim.timesteps.tolist()
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# --- every step count on every grid option and released config -----------------------------------------

STEP_COUNTS = (1, 2, 3, 4, 5, 7, 10, 16, 25, 30, 50, 100, 999, 1000)
VP_GRIDS = {
    "default": {},
    "linspace": {"timestep_spacing": "linspace"},
    "leading": {"timestep_spacing": "leading"},
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "lambdas": {"use_lambdas": True},
    "uniform_t": {"time_grid": "uniform_t"},
    "quadratic_t": {"time_grid": "quadratic_t"},
}
# SDXL's config differs from SD 1.5's in keys that do not move the grid: three grid options suffice there.
VP_CONFIGS = {
    "sd15": (PNDMScheduler, SD15_SCHEDULER, list(VP_GRIDS)),
    "sdxl": (EulerDiscreteScheduler, SDXL_SCHEDULER, ["default", "trailing", "karras"]),
    "ddpm": (DDPMScheduler, {}, list(VP_GRIDS)),
}
# Flow: a static shift (SD3), dynamic shifting with two mu (Flux, as its pipeline computes mu), and
# the sigmas Flux passes (linspace(1, 1/n, n)).
FLOW_GRIDS = {"sd3": (SD3_SCHEDULER, None, False), "flux": (FLUX_SCHEDULER, 0.5, False)}
FLOW_GRIDS |= {"flux_mu1.15": (FLUX_SCHEDULER, 1.15, False), "flux_sigmas": (FLUX_SCHEDULER, 0.8, True)}


def _cheap(x, t):
    return 0.5 * x + 0.01 * torch.as_tensor(t, dtype=x.dtype) / 1000.0


def _check_run(sched, n, **kw):
    """set_timesteps(n), then a whole run: labels match evaluations, finite output, then step() refuses."""
    sched.set_timesteps(n, **kw)
    assert sched.num_inference_steps == n
    assert len(sched.timesteps) == sched.plan.nfe and len(sched.sigmas) == sched.plan.nfe + 1
    t_eval = sched.plan.eval_times
    assert t_eval[0] == sched._grid[0] == t_eval.max()  # the first call is at the noisiest point
    x = torch.ones(1, 3, dtype=torch.float32)
    for t in sched.timesteps:
        x = sched.step(_cheap(x, t), t, x).prev_sample
    assert torch.isfinite(x).all()
    with pytest.raises(IndexError, match="set_timesteps"):
        sched.step(_cheap(x, sched.timesteps[-1]), sched.timesteps[-1], x)


def _check_every_count(sched, where: str, extra=lambda n: {}):
    """_check_run for every count in STEP_COUNTS; a failure names the config, grid and step count."""
    for n in STEP_COUNTS:
        try:
            _check_run(sched, n, **extra(n))
        except Exception as e:
            raise AssertionError(f"{where} / {n} steps: {e}") from e


@pytest.mark.slow
@pytest.mark.parametrize("config", list(VP_CONFIGS))
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_step_count_vp(case, config):
    """Every step count on every VP grid option (SD 1.5, SDXL and DDPM configs), as diffusers' schedulers run."""
    cls, kw = case
    _skip_unsupported(cls, "vp", kw)
    src_cls, cfg, grid_names = VP_CONFIGS[config]
    for name in grid_names:
        sched = cls.from_config(src_cls(**cfg).config, **kw, **VP_GRIDS[name])
        _check_every_count(sched, f"{config} / {name}")


@pytest.mark.slow
@pytest.mark.parametrize("grid", list(FLOW_GRIDS))
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_step_count_flow(case, grid):
    cls, kw = case
    _skip_unsupported(cls, "flow", kw)
    cfg, mu, pass_sigmas = FLOW_GRIDS[grid]
    sched = cls.from_config(FlowMatchEulerDiscreteScheduler(**cfg).config, **kw)

    def extra(n):  # what the pipeline passes: Flux's mu, and its sigmas linspace(1, 1/n, n)
        args = {"mu": mu} if mu is not None else {}
        return args | ({"sigmas": np.linspace(1.0, 1.0 / n, n)} if pass_sigmas else {})

    _check_every_count(sched, grid, extra)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_dense_grids_keep_integer_labels_where_they_fit(case):
    """Grids that fit the training timesteps are snapped (integer labels); denser ones keep float labels."""
    cls, kw = case
    _skip_unsupported(cls, "vp", kw)
    sched = cls.from_config(PNDMScheduler(**SD15_SCHEDULER).config, **kw, use_karras_sigmas=True)
    sched.set_timesteps(10)
    assert sched.timesteps.dtype == torch.int64 or kw.get("deis_variant") == "rhork"
    sched.set_timesteps(50)  # Karras at 50 steps puts several points within one timestep near the data end
    ts = sched.timesteps.double()
    assert sched.timesteps.dtype == torch.float32 and torch.all(ts[1:] <= ts[:-1])  # stages may share a time
    # float labels are the exact times of the grid, and sigmas belong to them
    t = sched.schedule.t_of_timestep(ts.numpy())
    np.testing.assert_allclose(t, sched.plan.eval_times, rtol=1e-5)


def test_one_step_grid_starts_at_the_noisiest_point():
    """A one-point grid keeps its start (it used to be overwritten by the end: one call at timestep 0)."""
    sched = public.DPMSolverV3Scheduler.from_config(PNDMScheduler(**SD15_SCHEDULER).config)
    for n in (1, 2):
        sched.set_timesteps(n)
        assert int(sched.timesteps[0]) == 999, sched.timesteps
    sched = DEISScheduler(use_karras_sigmas=True)
    sched.set_timesteps(1)
    assert int(sched.timesteps[0]) == 999


# --- 1 and 2 steps against the exact x0-estimate -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_one_step_is_the_exact_x0_estimate(case, kind, mixture):
    """On the analytic mixture, one step from pure noise returns E[x0 | x_T] (one model call), or for a
    multi-stage step a result at least as close to the exact ODE solution as that estimate."""
    sched = _make(case, kind)
    sched.set_timesteps(1)
    s = sched.schedule
    t0 = float(sched.plan.eval_times[0])
    assert t0 == s.t_max  # the noisiest point of the schedule
    model = mixture.model_fn(s, sched.prediction_type)
    x = torch.from_numpy(mixture.prior_sample(64, s, t_start=t0, seed=3)).float()
    xt = x
    for label, t in zip(sched.timesteps, sched.plan.eval_times):
        xt = sched.step(model(xt.double(), float(t)).float(), label, xt).prev_sample
    x0_hat = mixture.denoise(x.double(), float(s.alpha(t0)), float(s.sigma(t0)))
    if sched.plan.nfe == 1:
        torch.testing.assert_close(xt.double(), x0_hat, rtol=1e-4, atol=1e-4)
    else:
        exact = torch.from_numpy(mixture.ode_solve(x.double().numpy(), s, t0, 0.0))
        assert (xt.double() - exact).norm() <= (x0_hat - exact).norm() * 1.05
    assert xt.std() < 0.5 * x.std()  # data, not the input noise


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_two_steps_beat_one(case, kind, mixture):
    sched = _make(case, kind)
    s = sched.schedule
    model = mixture.model_fn(s, sched.prediction_type)
    x = torch.from_numpy(mixture.prior_sample(64, s, t_start=s.t_max, seed=4)).float()
    exact = torch.from_numpy(mixture.ode_solve(x.double().numpy(), s, s.t_max, 0.0))
    errs = []
    for n in (1, 2):
        sched.set_timesteps(n)
        xt = x
        for label, t in zip(sched.timesteps, sched.plan.eval_times):
            xt = sched.step(model(xt.double(), float(t)).float(), label, xt).prev_sample
        errs.append(float((xt.double() - exact).norm()))
    assert errs[1] < errs[0], errs


# --- whole pipelines: save, reload, move -----------------------------------------------------------------

PIPELINE_KINDS = {"ddpm": "vp", "sd": "vp", "sdxl": "vp", "sd3": "flow", "flux": "flow"}


@pytest.mark.slow
@pytest.mark.parametrize("pipe_name", list(PIPELINE_KINDS))
@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_whole_pipeline_round_trip(cls, pipe_name, tmp_path):
    """save_pretrained, then DiffusionPipeline / the pipeline class / scheduler= / subfolder all restore our class."""
    _skip_unsupported(cls, PIPELINE_KINDS[pipe_name])
    pipe = {"ddpm": ddpm_pipeline, "sd": sd_pipeline, "sdxl": sdxl_pipeline, "sd3": sd3_pipeline}.get(
        pipe_name, flux_pipeline
    )()
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "p")
    want = _public_config(pipe.scheduler.config)
    for loaded in (
        diffusers.DiffusionPipeline.from_pretrained(tmp_path / "p"),
        type(pipe).from_pretrained(tmp_path / "p"),
        diffusers.DiffusionPipeline.from_pretrained(tmp_path / "p", scheduler=cls.from_config(pipe.scheduler.config)),
    ):
        assert type(loaded.scheduler) is cls
        assert _public_config(loaded.scheduler.config) == want
    sched = cls.from_pretrained(tmp_path / "p", subfolder="scheduler")
    assert type(sched) is cls and _public_config(sched.config) == want


def _demo_sample(pipe, steps=5):
    return pipe(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["ems", "schedule"])
def test_saved_folder_with_scheduler_files_moves(which, tmp_path):
    """A pipeline whose scheduler needs a file (statistics, a solver schedule) is saved with that file inside
    the scheduler folder, named relative to it: moved elsewhere (the original file gone) it gives the same samples."""
    import shutil

    from fastsample import demo

    pipe = demo.load_ddpm_pipeline()
    cfg = pipe.scheduler.config
    if which == "ems":
        src = tmp_path / "mine" / "stats.safetensors"
        src.parent.mkdir()
        shutil.copy(demo.WEIGHTS_DIR / "ddpm" / "ems.safetensors", src)
        pipe.scheduler = public.DPMSolverV3Scheduler.from_config(cfg, ems_path=str(src))
        key = "ems_path"
    else:
        src = tmp_path / "mine" / "s3.json"
        src.parent.mkdir()
        shutil.copy(REPO / "eval" / "schedules" / "demo_ddpm_s3_nfe5.json", src)
        pipe.scheduler = public.S3Scheduler.from_config(cfg, schedule_file=str(src))
        key = "schedule_file"
    before = _demo_sample(pipe).images
    pipe.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "scheduler" / "scheduler_config.json").read_text())
    assert saved[key] == src.name and (tmp_path / "a" / "scheduler" / src.name).is_file()
    shutil.move(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "mine")
    moved = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "b")
    moved.set_progress_bar_config(disable=True)
    assert moved.scheduler.config[key] == str((tmp_path / "b" / "scheduler" / src.name).resolve())
    np.testing.assert_array_equal(_demo_sample(moved).images, before)
    # saved again from its new place (the file is already there), then loaded by the scheduler class alone
    moved.save_pretrained(tmp_path / "b")
    assert type(moved.scheduler).from_pretrained(tmp_path / "b", subfolder="scheduler").config[key].endswith(src.name)


def test_statistics_in_memory_are_saved_into_the_folder(tmp_path):
    from fastsample import EMS, demo

    ems = EMS.load(demo.WEIGHTS_DIR / "ddpm" / "ems.safetensors")
    arrays = EMS(ems.lambdas, ems.l, ems.s, ems.b, metadata=ems.metadata)  # no file behind it
    cfg = DDPMScheduler().config
    sched = public.DPMSolverV3Scheduler.from_config(cfg).use_ems(arrays)
    sched.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["ems_path"] == "ems.safetensors"
    assert sched.config.ems_path is None and arrays.path is None  # saving changed nothing in memory
    back = public.DPMSolverV3Scheduler.from_pretrained(tmp_path)
    np.testing.assert_array_equal(back.ems.l, ems.l)


def test_missing_scheduler_file_is_named(tmp_path):
    from fastsample import demo

    sched = public.DPMSolverV3Scheduler(ems_path=str(demo.WEIGHTS_DIR / "ddpm" / "ems.safetensors"))
    sched.save_pretrained(tmp_path)
    (tmp_path / "ems.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="ems_path names 'ems.safetensors'"):
        public.DPMSolverV3Scheduler.from_pretrained(tmp_path)


def test_pipelines_package_exports_every_pipeline_class():
    import inspect

    import fastsample.pipelines as pipelines

    defined = {
        name
        for mod in (pipelines.flowchef, pipelines.rectified_flow)
        for name, obj in inspect.getmembers(mod, inspect.isclass)
        if issubclass(obj, diffusers.DiffusionPipeline) and obj.__module__.startswith("fastsample")
    }
    assert defined == set(pipelines.__all__)


# --- the attributes pipelines and training scripts read ----------------------------------------------------


@pytest.mark.parametrize("source", ["sd15_pndm", "sdxl_euler"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_diffusers_attributes_vp(case, source):
    cls, kw = case
    _skip_unsupported(cls, "vp", kw)
    src, _ = _source(source)
    sched = cls.from_config(src.config, **kw)
    ref = DDPMScheduler.from_config(src.config)
    for name in ("betas", "alphas", "alphas_cumprod"):
        got = getattr(sched, name)
        assert got.dtype == torch.float32 and got.shape == (1000,), name
        torch.testing.assert_close(got, getattr(ref, name), rtol=1e-5, atol=1e-7)
    assert sched.step_index is None and sched.begin_index is None
    assert isinstance(sched.order, int) and sched.init_noise_sigma == 1.0
    sched.set_timesteps(6)
    assert sched.sigmas.dtype == torch.float32 and sched.timesteps.dtype == torch.int64 or kw
    sched.set_begin_index(2)
    assert sched.begin_index == 2
    x = torch.ones(1, 3)
    t = sched.timesteps[2]
    sched.step(_cheap(x, t), t, x)
    assert sched.step_index == 3


def test_flow_schedulers_have_no_beta_tables_like_flowmatch():
    for cls in PUBLIC:
        if _supports(cls, "flow"):
            sched = cls.from_config(FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER).config)
            assert not hasattr(sched, "alphas_cumprod") and not hasattr(FlowMatchEulerDiscreteScheduler(), "betas")


# --- bad input: one clear error naming the argument -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input_names_the_argument(case, kind):
    sched = _make(case, kind)
    top = 1.0 if kind == "flow" else 14.0
    bad = [
        (dict(sigmas=[top, float("nan"), 0.2]), "sigmas.*NaN"),
        (dict(sigmas=[0.2, top]), "sigmas.*from noise to data"),
        (dict(sigmas=[top * 100, 0.2]), "sigmas.*must lie in"),
        (dict(sigmas=[top, -0.2]), "sigmas.*must lie in"),
        (dict(timesteps=[5000, 500]), "timesteps.*must lie in"),
        (dict(timesteps=[500, 500]), "timesteps.*from noise to data"),
        (dict(timesteps=[400, 500]), "timesteps.*from noise to data"),
        (dict(timesteps=[]), "timesteps.*at least 1 value"),
        (dict(num_inference_steps=2.5), "num_inference_steps.*positive integer"),
        (dict(num_inference_steps=0), "num_inference_steps.*positive integer"),
        (dict(num_inference_steps=True), "num_inference_steps.*positive integer"),
        (dict(num_inference_steps="8"), "num_inference_steps.*positive integer"),
    ]
    for kwargs, match in bad:
        if kind == "flow" and "sigmas" in kwargs and sched.config.use_dynamic_shifting:
            kwargs["mu"] = 0.5
        with pytest.raises(ValueError, match=match):
            sched.set_timesteps(**kwargs)
    sched.set_timesteps(num_inference_steps=4.0)  # an integral float is a step count
    assert sched.num_inference_steps == 4
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="model_output has shape"):
        sched.step(torch.zeros(2, 4), sched.timesteps[0], x)


def test_wrong_length_trained_betas():
    with pytest.raises(ValueError, match="trained_betas has 10 entries"):
        DEISScheduler(trained_betas=[0.01] * 10)


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_step_after_the_last_step_is_refused_until_set_timesteps(case, kind):
    sched = _make(case, kind)
    sched.set_timesteps(3)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    x = _run(sched, x)
    with pytest.raises(IndexError, match="set_timesteps"):
        sched.step(_model(x, sched.timesteps[-1]), sched.timesteps[-1], x)
    sched.set_timesteps(3)
    assert torch.isfinite(_run(sched, x)).all()


@pytest.mark.slow
def test_wheel_carries_the_package_pipelines_and_demo_models(tmp_path):
    """The wheel has every module and the shipped models (with their statistics and the flow model's
    class file), so an installed fastsample runs the README's Python examples without the repository."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "fastsample", src / "fastsample", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."]
    subprocess.run(cmd, cwd=src, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("fastsample-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {p.relative_to(src).as_posix() for p in (src / "fastsample").rglob("*") if p.is_file()}
    assert want - names == set()
    for must in ("fastsample/pipelines/rectified_flow.py", "fastsample/demo/weights/flow/rectified_flow.py"):
        assert must in names
    assert {"fastsample/demo/weights/ddpm/ems.safetensors", "fastsample/demo/weights/flow/ems.safetensors"} <= names


# --- grid options on flow models: honoured or refused, never ignored --------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_flow_time_grid_is_honoured(case):
    """``time_grid='quadratic_t'`` on a flow model: quadratic in unshifted t from 1 to 0, then SD3's shift once
    (it used to give the uniform grid without a word)."""
    from fastsample.core import grids

    cls, kw = case
    _skip_unsupported(cls, "flow", kw)
    config = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER).config
    default = cls.from_config(config, **kw)
    sched = cls.from_config(config, **kw, time_grid="quadratic_t")
    for s in (default, sched):
        s.set_timesteps(6)
    base = grids.quadratic_t(sched.schedule, 6, t_end=0.0)
    want = grids.shift_sigmas(base, shift=SD3_SCHEDULER["shift"])
    np.testing.assert_allclose(sched._grid, want, rtol=0, atol=1e-12)
    assert np.abs(sched._grid - default._grid).max() > 0.01


@pytest.mark.parametrize(
    "option", [{"time_grid": "karras"}, {"time_grid": "logSNR"}, {"use_karras_sigmas": True}, {"use_lambdas": True}]
)
def test_flow_grid_without_a_finite_start_is_refused(option):
    """Karras and log-SNR spacing need a finite noise level at t = 1: a flow model refuses them in one line."""
    config = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER).config
    for cls in (public.RectifiedFlowScheduler, DEISScheduler):
        with pytest.raises(ValueError, match="flow model"):
            cls.from_config(config, **option)


def test_unknown_time_grid_is_refused_at_config():
    with pytest.raises(ValueError, match="unknown time_grid 'karas'"):
        DEISScheduler.from_config(PNDMScheduler(**SD15_SCHEDULER).config, time_grid="karas")
