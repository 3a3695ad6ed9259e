"""The S^3 search (arXiv 2312.07243) on flow models and with the per-sample RMSE fitness; the demo models' CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import RectifiedFlow
from fastsample.formats.solver_schedule import load
from fastsample.schedulers import S3Scheduler
from fastsample.search.evolution import search
from fastsample.search.genotype import _make_step
from fastsample.search.problem import SearchProblem, fitness_of
from fastsample.solvers.usf.executor import run_schedule

FLOW_CONFIG = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)
T0 = 0.999  # where Diffusers' flow UniPC starts and the demo-flow search starts


def _flow_problem(mix, t_start=T0, reference_steps=None):
    fl = RectifiedFlow()
    model = mix.model_fn(fl, "flow_prediction")
    prob = SearchProblem.from_model(
        model, fl, (mix.dim,), "flow_prediction", reference_steps=reference_steps, t_start=t_start, dtype=torch.float64
    )
    if reference_steps is None:  # the exact probability-flow ODE solution of the same noise
        prob.reference = lambda x: torch.from_numpy(mix.ode_solve(x.numpy(), fl, t_start, 0.0))
    return prob


@pytest.mark.parametrize("t_start", [1.0, T0])
def test_flow_reference_converges_to_the_exact_ode_solution(t_start):
    """The high-step reference of ``from_model`` on a flow (uniform in t; no derivative from lambda = -inf at t = 1)."""
    mix = GaussianMixture.random(dim=3, components=2, seed=0, width=(0.05, 0.2))
    prob = _flow_problem(mix, t_start, reference_steps=100)
    x = prob.noise(16, 0)
    exact = mix.ode_solve(x.numpy(), prob.noise_schedule, t_start, 0.0)
    err = float(np.sqrt(np.mean((prob.reference(x).numpy() - exact) ** 2)))
    assert err < 2e-3, err


def test_flow_search_result_is_what_the_s3_scheduler_runs(tmp_path):
    """A flow search (no analytical first step) finds a schedule whose fitness is the S3Scheduler's own error."""
    mix = GaussianMixture.random(dim=3, components=2, seed=1, width=(0.05, 0.2))
    prob = _flow_problem(mix)
    out = tmp_path / "flow.json"
    kw = dict(offspring=20, evaluate_per_generation=4, promote=1, low_fidelity=16, high_fidelity=32)
    res = search(prob, 4, generations=2, metric="sample_rmse", predictor="ridge", allow_afs=False, out=out, **kw)
    sch = load(out)
    assert sch.afs == "none" and sch.grid[0] == pytest.approx(T0, abs=1e-15) and sch.grid[-1] == 0.0
    assert np.isfinite(res.fitness)
    with pytest.raises(ValueError, match="VP models only"):
        search(prob, 4, generations=1, allow_afs=True, progress=False, **kw)
    # the scheduler's step loop from the high-fidelity noise (seed search_seed + 1 = 1001)
    x, ref = prob.batch(1001, 32)
    sched = S3Scheduler.from_config({"num_train_timesteps": 1000, **FLOW_CONFIG}, schedule_file=str(out))
    sched.set_timesteps(4)
    model = prob.model_fn
    y = x.clone()
    for label in sched.timesteps:
        y = sched.step(model(y, float(label) / 1000), label, y).prev_sample
    assert fitness_of(prob, y, ref, "sample_rmse") == pytest.approx(res.fitness, rel=1e-6)
    # the scheduler is the executor the search ran
    direct = run_schedule(model, x, prob.noise_schedule, sch, prediction_type="flow_prediction")
    assert float((direct - y).abs().max()) < 1e-9


def test_sample_rmse_is_the_mean_of_per_sample_rmses():
    mix = GaussianMixture.random(dim=3, components=2, seed=2)
    prob = _flow_problem(mix)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    a[0] += 5.0  # one sample far off: the mean of per-sample errors weighs it less than the overall RMS
    per = np.sqrt(((a - b).numpy() ** 2).mean(1))
    assert fitness_of(prob, a, b, "sample_rmse") == pytest.approx(per.mean(), rel=1e-12)
    assert fitness_of(prob, a, b, "rmse") == pytest.approx(np.sqrt((per**2).mean()), rel=1e-12)
    assert fitness_of(prob, a, b, "rmse") > fitness_of(prob, a, b, "sample_rmse")


def test_mutated_steps_never_differentiate_through_an_unusable_first_point():
    for i in range(4):
        s = _make_step(i, 4, "data", 3, 2, 0.3, True, True, first_usable=False)
        assert s.order <= max(i, 1)
        assert all(p <= i - 1 for d in s.derivatives for p in d.points)  # point i - p >= 1
        assert (s.corrector is None) == (i in (0, 3))
        if s.corrector is not None:
            assert all(p == -1 or p <= i - 1 for d in s.corrector.derivatives for p in d.points)
    assert _make_step(1, 4, "data", 3, 2, 0.0, True, True).order == 2  # VP: the first point is usable


@pytest.mark.slow
def test_cli_searches_the_demo_flow_model_and_the_file_runs_in_its_pipeline(tmp_path, capsys):
    from fastsample import demo
    from fastsample.cli import main

    out = tmp_path / "flow3.json"
    args = ["search", "--model", "demo-flow", "--metric", "sample_rmse", "--nfe", "3", "--out", str(out)]
    args += ["--generations", "1", "--offspring", "6", "--evaluate", "2", "--low-fidelity", "4", "--high-fidelity", "4"]
    assert main(args + ["--predictor", "ridge", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    sch = load(out)
    prov = sch.metadata["provenance"]
    assert prov["fitness"]["metric"] == "sample_rmse" and prov["generations"] == 1 and sch.afs == "none"
    assert sch.metadata["model"]["noise_schedule"]["family"] == "RectifiedFlow"
    pipe = demo.load_flow_pipeline()
    pipe.scheduler = S3Scheduler.from_config(pipe.scheduler.config, schedule_file=str(out), **FLOW_CONFIG)
    calls = []
    handle = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    handle.remove()
    images = images.images if hasattr(images, "images") else images[0]
    assert len(calls) == 3 and np.isfinite(np.asarray(images)).all()
