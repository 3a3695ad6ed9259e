"""Noise-aware sweep numbers: per-sample RMSE against a reference solution, bootstrap intervals, cached cells."""

import json

import numpy as np
import pytest
import torch

from fastsample import sweep
from fastsample.fid.bootstrap import per_sample_rmse
from fastsample.sweep import sources
from fastsample.sweep.config import ConfigError, _hash

CONFIG = """
[sweep]
name = "tiny"
nfe = [3]
num_samples = 8
batch_size = 4
seed = 5

[model]
kind = "demo-ddpm"

[metric]
features = "demo-classifier"
reference = "demo-heldout"
metrics = {metrics}
{extra}

[[schedulers]]
name = "diffusers.DDIMScheduler"
label = "DDIM"
config = {{ timestep_spacing = "trailing", set_alpha_to_one = true }}
"""

SOLVER = (
    'reference_solver = { name = "diffusers.DDIMScheduler", config = { timestep_spacing = "trailing" }, steps = 8 }'
)


def _cfg(tmp_path, metrics='["fd", "rmse", "fd_ci"]', extra=SOLVER, out="out"):
    path = tmp_path / "s.toml"
    path.write_text(CONFIG.format(metrics=metrics, extra=extra))
    return sweep.load_config(path, output=str(tmp_path / out))


@pytest.fixture
def calls(monkeypatch):
    seen = []
    original = sources.UNetSource.generate

    def counted(self, scheduler, n_steps, indices, guidance):
        images = original(self, scheduler, n_steps, indices, guidance)
        seen.append((type(scheduler).__name__, n_steps, list(indices), images))
        return images

    monkeypatch.setattr(sources.UNetSource, "generate", counted)
    return seen


@pytest.mark.slow
def test_rmse_is_against_the_reference_solver_on_the_same_noise_and_cached(tmp_path, calls):
    cfg = _cfg(tmp_path)
    (cell,) = sweep.run_sweep(cfg, progress=False)
    ref = torch.cat([im for name, n, idx, im in calls if n == 8])  # the reference solver at its 8 steps
    ours = torch.cat([im for name, n, idx, im in calls if n == 3])
    assert [idx for _, n, idx, _ in calls if n == 8] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    want = per_sample_rmse(ours, ref)
    assert cell["rmse"] == pytest.approx(float(want.mean()), rel=1e-12)
    lo, hi = cell["rmse_ci95"]
    assert lo < cell["rmse"] < hi and want.min() <= lo and hi <= want.max()
    half = torch.cat([im for name, n, idx, im in calls if n == 4])  # the convergence check at steps // 2
    assert cell["reference_converged"] == pytest.approx(float(per_sample_rmse(half, ref).mean()), rel=1e-12)
    flo, fhi = cell["fd_ci95"]
    assert flo < cell["fd"] < fhi
    md = (cfg.output / "results.md").read_text()
    assert "Per-sample RMSE against the reference solution" in md and f"{cell['rmse']:.4f} [" in md
    assert json.loads((cfg.output / "results.json").read_text())["reference_solution"]["steps"] == 8
    n = len(calls)
    (again,) = sweep.run_sweep(cfg, progress=False)
    assert len(calls) == n and again == cell  # cells and the reference solution both came from their files


@pytest.mark.slow
def test_changing_the_reference_solver_recomputes_the_cells(tmp_path, calls):
    first = sweep.run_sweep(_cfg(tmp_path), progress=False)[0]
    other = SOLVER.replace("steps = 8", "steps = 6")
    second = sweep.run_sweep(_cfg(tmp_path, extra=other), progress=False)[0]
    assert second["key"]["reference_solution"] != first["key"]["reference_solution"]
    assert second["rmse"] != first["rmse"]
    assert any(n == 6 for _, n, _, _ in calls)


def test_old_cells_without_the_new_metrics_are_recomputed_with_a_message(tmp_path, capsys):
    plain = sweep.run_sweep(_cfg(tmp_path, metrics='["fd"]', extra=""), progress=False)[0]
    assert "rmse" not in plain and "fd_ci95" not in plain
    cell = sweep.run_sweep(_cfg(tmp_path, metrics='["fd", "fd_ci"]', extra=""), progress=False)[0]
    assert "fd_ci95" in cell and cell["fd"] == plain["fd"]  # recomputed on the same noise
    # a cell file whose key matches but which lacks the fields (written by an older version) is not trusted
    cfg = _cfg(tmp_path, metrics='["fd", "fd_ci"]', extra="")
    (path,) = (cfg.output / "cells").glob(f"DDIM-*-{_hash(cell['key'])}.json")
    stored = json.loads(path.read_text())
    del stored["fd_ci95"]
    path.write_text(json.dumps(stored))
    capsys.readouterr()
    again = sweep.run_sweep(cfg, progress=False)[0]
    assert "lacks fd_ci95" in capsys.readouterr().err and again["fd_ci95"] == cell["fd_ci95"]


@pytest.mark.parametrize(
    "metrics, extra, match",
    [
        ('["fd"]', SOLVER, "reference_solver applies to metric 'rmse'"),
        ('["fd", "rmse"]', 'reference_solver = { name = "diffusers.DDIMScheduler" }', "needs 'steps'"),
        ('["fd", "rmse"]', 'reference_solver = { name = "torch.Nope", steps = 9 }', "'fastsample.<Class>'"),
        ('["fd", "rmse"]', 'reference_solver = { name = "diffusers.DDIMScheduler", steps = 1 }', ">= 2"),
        ('["fd", "rmse"]', 'reference_solver = { name = "diffusers.DDIMScheduler", step = 9 }', "unknown key"),
    ],
)
def test_bad_reference_solver(tmp_path, metrics, extra, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, metrics=metrics, extra=extra)


def test_fd_ci_refuses_more_samples_than_it_keeps(tmp_path):
    path = tmp_path / "s.toml"
    text = CONFIG.format(metrics='["fd", "fd_ci"]', extra="")
    path.write_text(text.replace("num_samples = 8", "num_samples = 20000"))
    with pytest.raises(ConfigError, match="at most 10000 samples"):
        sweep.load_config(path)


def test_per_sample_rmse_and_interval():
    np.testing.assert_allclose(per_sample_rmse(torch.zeros(2, 3), torch.full((2, 3), 2.0)), [2.0, 2.0])


def test_demo_tables_mark_values_whose_interval_overlaps_the_best():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from demo_tables import marked_table

    cells = [
        {"scheduler": "A", "nfe": 4, "fd": 10.0, "fd_ci95": [9.0, 11.0]},
        {"scheduler": "B", "nfe": 4, "fd": 10.5, "fd_ci95": [10.9, 12.0]},  # overlaps A's interval
        {"scheduler": "C", "nfe": 4, "fd": 14.0, "fd_ci95": [12.0, 16.0]},  # does not
        {"scheduler": "C", "nfe": 6, "fd": 5.0, "fd_ci95": [4.0, 6.0]},
    ]
    rows = {line.split(" | ")[0].strip("| "): line for line in marked_table(cells, "fd", "t").splitlines()[4:]}
    assert "**10.000 [9.000, 11.000]**" in rows["A"] and rows["A"].endswith("| - |")
    assert "10.500 [10.900, 12.000] *" in rows["B"]
    assert "14.000 [12.000, 16.000] |" in rows["C"] and "**5.000 [4.000, 6.000]**" in rows["C"]


def _grid_cfg(tmp_path, name, grid):
    path = tmp_path / "g.toml"
    text = CONFIG.format(metrics='["fd"]', extra="").replace("nfe = [3]", "nfe = [4]")
    text = text.replace('name = "diffusers.DDIMScheduler"', f'name = "diffusers.{name}"\ngrid = "{grid}"', 1)
    path.write_text(text.replace('config = { timestep_spacing = "trailing", set_alpha_to_one = true }', ""))
    return sweep.load_config(path, output=str(tmp_path / "out"))


def test_a_diffusers_scheduler_runs_our_grid_and_a_class_without_the_argument_is_refused(tmp_path):
    from fastsample import DEISScheduler
    from fastsample.sweep.sources import build_source

    cfg = _grid_cfg(tmp_path, "DPMSolverMultistepScheduler", "quadratic_t")
    base = build_source(cfg.model, 0, torch.device("cpu")).scheduler_config
    theirs = cfg.schedulers[0].build(base, 4)
    theirs.set_timesteps(4)
    ours = DEISScheduler.from_config(base, time_grid="quadratic_t")
    ours.set_timesteps(4)
    assert theirs.timesteps.tolist() == ours.timesteps.tolist()
    refused = _grid_cfg(tmp_path, "UniPCMultistepScheduler", "quadratic_t")  # VP UniPC takes no timesteps=
    with pytest.raises(ConfigError, match="grid 'quadratic_t': UniPCMultistepScheduler.set_timesteps takes no"):
        refused.schedulers[0].build(base, 4)
    with pytest.raises(ConfigError, match="grid 'nope' unknown"):
        _grid_cfg(tmp_path, "DPMSolverMultistepScheduler", "nope")
