"""Reflow pair generation (resumable safetensors shards) and the straightness metric (steering.flow_tools)."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fastsample.core import grids
from fastsample.core.analytic import GaussianMixture
from fastsample.core.schedules import DiscreteVP, RectifiedFlow, betas_for_schedule
from fastsample.solvers.deis import DEISSolver
from fastsample.solvers.flow import make_flow_solver
from fastsample.solvers.sampling import sample
from fastsample.steering.flow_tools import (
    StraightnessMeter,
    generate_reflow_pairs,
    load_reflow_pairs,
    ode_endpoint,
    straightness,
)

FLOW = RectifiedFlow()
MIX = GaussianMixture.random(dim=4, components=3, seed=0)


def test_reflow_pairs_are_ode_endpoints_and_resumable(tmp_path):
    calls = []
    inner = ode_endpoint(MIX.model_fn(FLOW, "flow"), FLOW, make_flow_solver("rk4"), grids.flow_shift(FLOW, 12))

    def endpoint(noise):
        calls.append(len(noise))
        return inner(noise)

    paths = generate_reflow_pairs(endpoint, (4,), tmp_path, num_pairs=10, shard_size=4, batch_size=3, progress=False)
    assert [p.name for p in paths] == ["pairs-00000.safetensors", "pairs-00001.safetensors", "pairs-00002.safetensors"]
    noise, ends = load_reflow_pairs(tmp_path)
    assert noise.shape == ends.shape == (10, 4) and noise.dtype == torch.float32
    exact = MIX.ode_solve(noise.double().numpy(), FLOW, 1.0, 0.0)
    assert np.sqrt(np.mean((ends.double().numpy() - exact) ** 2)) < 0.05
    first = {p.name: load_file(str(p)) for p in paths}

    # resume: shard 1 lost, a stale temp file left behind: only shard 1 is computed again, identically
    paths[1].unlink()
    (tmp_path / ".pairs-00001.safetensors.999.tmp").write_bytes(b"partial")
    calls.clear()
    generate_reflow_pairs(endpoint, (4,), tmp_path, num_pairs=10, shard_size=4, batch_size=3, progress=False)
    assert sum(calls) == 4
    for p in paths:
        again = load_file(str(p))
        for key in ("noise", "endpoint"):
            torch.testing.assert_close(again[key], first[p.name][key], rtol=0, atol=0)
    # a truncated shard file counts as unfinished
    paths[2].write_bytes(b"garbage")
    calls.clear()
    generate_reflow_pairs(endpoint, (4,), tmp_path, num_pairs=10, shard_size=4, batch_size=3, progress=False)
    assert sum(calls) == 2


def test_reflow_pairs_from_a_vp_denoiser(tmp_path):
    vp = DiscreteVP.from_betas(betas_for_schedule("linear"))
    grid = grids.uniform_lambda(vp, 10, t_start=1.0, t_end=vp.t_min, final_zero=True)
    endpoint = ode_endpoint(MIX.model_fn(vp, "epsilon"), vp, DEISSolver("tab", 3), grid, "epsilon")
    generate_reflow_pairs(endpoint, (4,), tmp_path, num_pairs=6, shard_size=6, dtype=torch.float64, progress=False)
    noise, ends = load_reflow_pairs(tmp_path)
    exact = MIX.ode_solve(float(vp.sigma(1.0)) * noise.numpy(), vp, 1.0, 0.0)
    assert noise.dtype == torch.float64 and np.sqrt(np.mean((ends.numpy() - exact) ** 2)) < 0.1


def test_straightness():
    # a single point mass: every trajectory is a straight line, S = 0
    point = GaussianMixture(np.array([[0.5, -1.0, 2.0, 0.0]]), 0.0)
    x1 = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    meter = StraightnessMeter()
    out = sample(point.model_fn(FLOW, "flow"), x1, FLOW, make_flow_solver("euler"), grids.flow_shift(FLOW, 5), "flow",
                 steering=meter)  # fmt: skip
    assert meter.value(out).abs().max() < 1e-20
    # a mixture bends trajectories: S > 0, and the Riemann sum converges as the run is refined
    vals = []
    for n in (8, 32, 128):
        meter.reset()
        out = sample(MIX.model_fn(FLOW, "flow"), x1, FLOW, make_flow_solver("midpoint"), grids.flow_shift(FLOW, n),
                     "flow", steering=meter)  # fmt: skip
        vals.append(meter.value(out).mean().item())
    assert vals[-1] > 1e-3 and abs(vals[1] - vals[2]) < abs(vals[0] - vals[2])
    with pytest.raises(ValueError, match="one velocity"):
        straightness([1.0, 0.5], [x1], x1, x1, 0.0)


@pytest.mark.slow
def test_reflow_pairs_from_a_pipeline(tmp_path):
    import tiny_pipelines as tp

    from fastsample.schedulers import RectifiedFlowScheduler
    from fastsample.steering.flow_tools import pipeline_endpoint

    pipe = tp.sd3_pipeline()
    pipe.scheduler = RectifiedFlowScheduler.from_config(pipe.scheduler.config)
    endpoint = pipeline_endpoint(pipe, prompt="a cat", num_inference_steps=2, max_sequence_length=tp.TEXT_LEN)
    generate_reflow_pairs(endpoint, (4, 8, 8), tmp_path, num_pairs=3, shard_size=2, batch_size=2, progress=False)
    noise, ends = load_reflow_pairs(tmp_path)
    assert noise.shape == ends.shape == (3, 4, 8, 8) and torch.isfinite(ends).all()
