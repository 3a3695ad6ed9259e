"""The sweep runner: results files, resume without recomputation, interruption, seeds, bad input."""

import json

import pytest

from fastsample import sweep

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
    original = sweep.UNetSource.generate

    def counted(self, *args, **kwargs):
        calls.append(args[1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sweep.UNetSource, "generate", counted)
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
    original = sweep.UNetSource.generate
    calls, armed = [], [True]

    def dies_on_third_batch(self, *args, **kwargs):
        calls.append(1)
        if armed[0] and len(calls) == 3:
            armed[0] = False
            raise Interrupted
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sweep.UNetSource, "generate", dies_on_third_batch)
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


def test_corrupt_cell_file_is_a_clear_error(tmp_path):
    cfg = _config(tmp_path)
    sweep.run_sweep(cfg, progress=False)
    victim = sorted((cfg.output / "cells").glob("DDIM-*.json"))[0]
    victim.write_text(victim.read_text()[:20])
    with pytest.raises(ValueError, match=f"{victim.name}.*corrupt.*delete it"):
        sweep.run_sweep(cfg, progress=False)
    victim.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="not a sweep cell"):
        sweep.run_sweep(cfg, progress=False)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda t: t.replace('[model]\nkind = "demo-ddpm"', "[model]"), "missing key 'kind'"),
        (lambda t: t.replace("diffusers.DDIMScheduler", "diffusers.NoSuchScheduler"), "has no class"),
        (lambda t: t.replace('label = "DEIS rk4"', 'label = "DDIM"'), "labels must be unique"),
        (lambda t: t.replace("nfe = [2, 3]", "nfe = [0]"), "positive integers"),
        (lambda t: t.replace('features = "demo-classifier"', 'features = "clip"'), "allowed"),
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
