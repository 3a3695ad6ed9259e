"""Sweep configs: one file per NFE (``{nfe}`` in a scheduler file key), checked up front, keyed by content."""

import numpy as np
import pytest

from fastsample import sweep
from fastsample.core.schedules import DiscreteVP, betas_for_schedule
from fastsample.steps import StepSchedule

CONFIG = """
[sweep]
name = "per-nfe"
nfe = [2, 3]
num_samples = 6
batch_size = 6
seed = 1

[model]
kind = "demo-ddpm"

[metric]
features = "demo-classifier"
reference = "demo-heldout"

[[schedulers]]
name = "fastsample.S3Scheduler"
label = "UniPC + steps"
config = {{ builtin_schedule = "unipc-bh2", step_schedule_file = "{template}" }}
"""
VP = DiscreteVP.from_betas(betas_for_schedule("linear"))


def _schedule(path, timesteps):
    StepSchedule(np.append(VP.t_of_timestep(np.array(timesteps, dtype=float)), 0.0), "t", len(timesteps)).save(path)


def _files(tmp_path):
    (tmp_path / "steps").mkdir()
    _schedule(tmp_path / "steps" / "s2.json", [999, 400])
    _schedule(tmp_path / "steps" / "s3.json", [999, 600, 200])
    path = tmp_path / "sweep.toml"
    path.write_text(CONFIG.format(template="steps/s{nfe}.json"))
    return path


def test_each_nfe_runs_its_own_file_and_an_edited_file_recomputes_only_its_cells(tmp_path, capsys):
    path = _files(tmp_path)
    cfg = sweep.load_config(path, output=str(tmp_path / "out"))
    cells = {c["nfe"]: c for c in sweep.run_sweep(cfg, progress=False)}
    assert cells[2]["num_inference_steps"] == 2 and cells[3]["num_inference_steps"] == 3
    for n in (2, 3):  # the cell key holds the content digest of that NFE's file
        from fastsample._io import file_digest

        assert cells[n]["key"]["scheduler"]["config"]["step_schedule_file"] == {
            "sha256": file_digest(tmp_path / "steps" / f"s{n}.json")
        }
    names = {p.name: p.stat().st_mtime_ns for p in (cfg.output / "cells").glob("*.json")}
    _schedule(tmp_path / "steps" / "s3.json", [999, 500, 100])  # an edited NFE-3 file
    again = {c["nfe"]: c for c in sweep.run_sweep(cfg, progress=False)}
    assert again[2]["fd"] == cells[2]["fd"] and again[3]["fd"] != cells[3]["fd"]
    now = {p.name: p.stat().st_mtime_ns for p in (cfg.output / "cells").glob("*.json")}
    assert {n: t for n, t in now.items() if n in names} == names and len(now) == len(names) + 1


def test_a_missing_file_for_an_nfe_is_one_error_before_any_sample(tmp_path):
    path = _files(tmp_path)
    path.write_text(path.read_text().replace("nfe = [2, 3]", "nfe = [2, 3, 4, 5]"))
    with pytest.raises(sweep.ConfigError, match=r"has no file for NFE 4, 5 of the sweep"):
        sweep.load_config(path, output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_flowmatch_schedulers_run_on_the_demo_flow_model(tmp_path):
    """FlowMatch schedulers have no ``init_noise_sigma`` / ``scale_model_input``: the UNet source runs them
    as a pipeline does (the demo flow sweep failed on them before)."""
    text = CONFIG.format(template="-").split("[[schedulers]]")[0].replace("demo-ddpm", "demo-flow")
    text += """
[[schedulers]]
name = "diffusers.FlowMatchEulerDiscreteScheduler"
label = "FlowMatch Euler"

[[schedulers]]
name = "fastsample.RectifiedFlowScheduler"
label = "Euler (ours)"
config = { solver = "euler" }
"""
    path = tmp_path / "flow.toml"
    path.write_text(text.replace("nfe = [2, 3]", "nfe = [3]"))
    cells = sweep.run_sweep(sweep.load_config(path, output=str(tmp_path / "out")), progress=False)
    assert [c["fd"] is not None and c["num_inference_steps"] == 3 for c in cells] == [True, True]


def test_cell_keys_are_the_same_in_every_process(tmp_path):
    """A rerun in a new process must find its cells: the keys may not depend on the hash seed (Diffusers'
    ``_use_default_values`` comes from a set)."""
    import os
    import subprocess
    import sys

    path = _files(tmp_path)
    code = (
        "import sys, json; from fastsample import sweep; from fastsample.sweep.runner import _cell_key, _prepare; "
        f"cfg = sweep.load_config({str(path)!r}, output={str(tmp_path / 'out')!r}); "
        "import diffusers; base = diffusers.DDPMScheduler().config; "
        "print(json.dumps([_cell_key(cfg, 'm', type('F', (), {'identity': {}, 'digest': 'f'}), 'r', s, c[3], 3, 1.0)"
        " for s, c, _ in _prepare(cfg, base)], sort_keys=True))"
    )
    keys = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.getcwd(),
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert keys[0] == keys[1] and "_use_default_values" in keys[0]
