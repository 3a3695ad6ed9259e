"""The sweep runner: results files, resume without recomputation, interruption, seeds, bad input."""

import json

import pytest
import torch

from fastsample import sweep
from fastsample.sweep import sources

CONFIG = """
[sweep]
name = "tiny"
nfe = [2, 3]
num_samples = 12
batch_size = {batch}
seed = 3

[model]
kind = "demo-ddpm"

[metric]
features = "demo-classifier"
reference = "demo-heldout"

[[schedulers]]
name = "diffusers.DDIMScheduler"
label = "DDIM"
config = {{ timestep_spacing = "trailing", set_alpha_to_one = true }}

[[schedulers]]
name = "fastsample.DEISScheduler"
label = "DEIS rk4"
config = {{ deis_variant = "rhork", solver_order = 4 }}
"""


def _config(tmp_path, batch=6, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(CONFIG.format(batch=batch))
    return sweep.load_config(path, output=str(tmp_path / f"out-{batch}"))


@pytest.fixture
def count_generate(monkeypatch):
    calls = []
    original = sources.UNetSource.generate

    def counted(self, *args, **kwargs):
        calls.append(args[1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sources.UNetSource, "generate", counted)
    return calls


def test_sweep_writes_results_and_resumes_without_recomputing(tmp_path, count_generate):
    cfg = _config(tmp_path)
    cells = sweep.run_sweep(cfg, progress=False)
    assert len(cells) == 4
    for name in ("results.json", "results.csv", "results.md", "fd_vs_nfe.png"):
        assert (cfg.output / name).stat().st_size > 0
    ddim = [c for c in cells if c["scheduler"] == "DDIM"]
    assert all(c["fd"] > 0 for c in ddim)
    rk4 = {c["nfe"]: c for c in cells if c["scheduler"] == "DEIS rk4"}
    assert rk4[2]["fd"] is None and "cannot make exactly 2" in rk4[2]["skipped"]
    assert rk4[3]["fd"] > 0 and rk4[3]["num_inference_steps"] == 1  # one step into sigma = 0: 3 stages
    assert "| DDIM |" in (cfg.output / "results.md").read_text()
    n_calls = len(count_generate)
    again = sweep.run_sweep(cfg, progress=False)
    assert len(count_generate) == n_calls  # every cell came from its file
    assert [c["fd"] for c in again] == [c["fd"] for c in cells]


class Interrupted(Exception):
    """Stands for a killed run (KeyboardInterrupt would stop pytest itself)."""


def test_interrupted_sweep_keeps_finished_cells_and_resumes(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    original = sources.UNetSource.generate
    calls, armed = [], [True]

    def dies_on_third_batch(self, *args, **kwargs):
        calls.append(1)
        if armed[0] and len(calls) == 3:
            armed[0] = False
            raise Interrupted
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sources.UNetSource, "generate", dies_on_third_batch)
    with pytest.raises(Interrupted):
        sweep.run_sweep(cfg, progress=False)
    finished = sorted(p.name for p in (cfg.output / "cells").glob("*.json"))
    assert len(finished) == 2  # DDIM NFE 2 (two batches) and the skipped rk4 NFE 2 cell
    assert not list(cfg.output.rglob("*.tmp"))
    calls.clear()
    cells = sweep.run_sweep(cfg, progress=False)
    assert len(calls) == 4  # only the NFE 3 cells ran: two batches each
    assert len(cells) == 4


def test_images_do_not_depend_on_batch_size(tmp_path):
    a = sweep.run_sweep(_config(tmp_path, batch=4), progress=False)
    b = sweep.run_sweep(_config(tmp_path, batch=12), progress=False)
    for x, y in zip(a, b):
        assert x["fd"] == pytest.approx(y["fd"], rel=1e-6, abs=1e-9) if x["fd"] is not None else y["fd"] is None


def test_corrupt_cell_file_is_recomputed_with_a_message(tmp_path, capsys, count_generate):
    cfg = _config(tmp_path)
    first = sweep.run_sweep(cfg, progress=False)
    victim = sorted((cfg.output / "cells").glob("DDIM-*.json"))[0]
    for bad, why in ((victim.read_text()[:20], "truncated or corrupt"), (json.dumps({"format_version": 99}), "not a")):
        victim.write_text(bad)
        n_calls = len(count_generate)
        again = sweep.run_sweep(cfg, progress=False)
        err = capsys.readouterr().err
        assert f"{victim.name} is" in err and why in err
        assert len(count_generate) == n_calls + 2  # that cell alone, two batches
        assert [c["fd"] for c in again] == [c["fd"] for c in first]


def test_threads_key_runs_the_sweep_on_that_many_threads_and_cells_are_reused_across_it(tmp_path, monkeypatch):
    def config(threads, out):
        path = tmp_path / f"threads{threads}.toml"
        path.write_text(CONFIG.format(batch=6).replace("seed = 3", f"seed = 3\nthreads = {threads}"))
        return sweep.load_config(path, output=str(tmp_path / out))

    original, during = sources.UNetSource.generate, []

    def recorded(self, *args, **kwargs):
        during.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sources.UNetSource, "generate", recorded)
    before = torch.get_num_threads()
    one = config(1, "a")
    assert one.threads == 1
    cells = sweep.run_sweep(one, progress=False)
    assert during and set(during) == {1}
    assert torch.get_num_threads() == before  # restored after the sweep
    computed = [c for c in cells if c["fd"] is not None]
    assert computed and all(c["threads"] == 1 for c in computed)
    rows = json.loads((one.output / "results.json").read_text())["cells"]
    assert [r["threads"] for r in rows if r["fd"] is not None] == [1] * len(computed)

    during.clear()
    again = sweep.run_sweep(config(2, "a"), progress=False)  # same folder, other thread count: every cell reused
    assert during == [] and [c["fd"] for c in again] == [c["fd"] for c in cells]
    fresh = sweep.run_sweep(config(2, "b"), progress=False)  # computed on 2 threads: the same to round-off
    assert set(during) == {2} and all(c["threads"] == 2 for c in fresh if c["fd"] is not None)
    for x, y in zip(cells, fresh):  # float32 UNet outputs differ in the last bits between thread counts
        assert x["fd"] == pytest.approx(y["fd"], rel=1e-5) if x["fd"] is not None else y["fd"] is None


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda t: t.replace('[model]\nkind = "demo-ddpm"', "[model]"), "missing key 'kind'"),
        (lambda t: t.replace("diffusers.DDIMScheduler", "diffusers.NoSuchScheduler"), "has no class"),
        (lambda t: t.replace('label = "DEIS rk4"', 'label = "DDIM"'), "labels must be unique"),
        (lambda t: t.replace("nfe = [2, 3]", "nfe = [0]"), "positive integers"),
        (lambda t: t.replace('features = "demo-classifier"', 'features = "clip"'), "allowed"),
        (lambda t: t.replace("seed = 3", "seed = 3\nthreads = 0"), "threads must be an integer >= 1, got 0"),
        (lambda t: t.replace("seed = 3", "seed = 3\nthreads = '2'"), "threads must be an integer >= 1, got '2'"),
    ],
)
def test_bad_configs(tmp_path, edit, match):
    path = tmp_path / "bad.toml"
    path.write_text(edit(CONFIG.format(batch=6)))
    with pytest.raises(ValueError, match=match):
        cfg = sweep.load_config(path, output=str(tmp_path / "out"))
        sweep.run_sweep(cfg, progress=False)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sweep.load_config(tmp_path / "nope.toml")


@pytest.mark.slow
def test_accelerate_two_processes_match_one(tmp_path):
    """`accelerate launch --cpu --num_processes 2`: disjoint seeds per rank, all-reduced sums.

    The feature sums are reduced exactly (tests/test_fid_stats.py checks that to float64 round-off);
    end to end the two runs differ only by the UNet's float32 batch-composition round-off.
    """
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    cfg_path = tmp_path / "sweep.toml"
    cfg_path.write_text(CONFIG.format(batch=4))
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is not installed beside this Python"
    out2 = tmp_path / "two"
    cmd = [accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "-m", "fastsample", "sweep", str(cfg_path), "--output", str(out2)]
    cmd += ["--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    one = sweep.run_sweep(sweep.load_config(cfg_path, output=str(tmp_path / "one")), progress=False)
    two = json.loads((out2 / "results.json").read_text())["cells"]
    assert len(two) == len(one) == 4
    for a, b in zip(one, two):
        assert (a["scheduler"], a["nfe"]) == (b["scheduler"], b["nfe"])
        if a["fd"] is None:
            assert b["fd"] is None
        else:
            assert b["fd"] == pytest.approx(a["fd"], rel=1e-4)  # 12 samples, 64 dims: an ill-conditioned FD
    counts = [json.loads(p.read_text()).get("count") for p in (out2 / "cells").glob("*.json")]
    assert sorted(c for c in counts if c) == [12, 12, 12]  # both ranks' samples in each of the 3 computed cells
