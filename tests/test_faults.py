"""Fault injection and hostile input (issue 13): stale or foreign results are never used, bad input is
one line, user files are not overwritten, and killed runs resume to the bit-identical result.

The SIGKILL tests run the real command in a subprocess through ``tests/fault_runner.py``, which kills
it at the K-th event (a file write before or after its rename, a sweep batch, a search evaluation, an
EMS batch); K is drawn from a seeded generator in a bounded loop.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastsample import _io, cli, demo, sweep
from fastsample.fid import FeatureStatistics
from fastsample.fid import cli as fid_cli
from fastsample.search.evolution import search
from fastsample.search.problem import SearchProblem
from fastsample.sweep import sources

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "fault_runner.py"


def _run(event, k, args, cwd=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    return subprocess.run(
        [sys.executable, str(RUNNER), event, str(k), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )


def _one_line_error(err: str, *words):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


def _no_temp_files(folder: Path):
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --- the shared file module ------------------------------------------------------------------------------


def test_atomic_write_honours_umask_and_cleans_up(tmp_path):
    old = os.umask(0o027)
    try:
        _io.atomic_write(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640

    class Boom(Exception):
        pass

    with pytest.raises(Boom), _io.atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_temp_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    r = _run(
        "write", 1, ["-c", f"from fastsample._io import atomic_write; atomic_write({str(tmp_path / 'c.json')!r}, 'x')"]
    )
    assert r.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".c.json.tmp-*"))) == 1
    _io.atomic_write(tmp_path / "c.json", "y")
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_refuse_existing_checks_the_final_name(tmp_path):
    (tmp_path / "stats.npz").write_bytes(b"mine")
    with pytest.raises(_io.UserError, match="exists; not overwriting"):
        _io.refuse_existing(tmp_path / "stats", suffix=".npz")
    with pytest.raises(_io.UserError, match="is a folder"):
        _io.refuse_existing(tmp_path, force=True)
    assert _io.refuse_existing(tmp_path / "stats", force=True, suffix=".npz") == tmp_path / "stats.npz"


# --- sweep --------------------------------------------------------------------------------------------

BASE = """
[sweep]
name = "faults"
nfe = {nfe}
num_samples = 8
batch_size = 4
seed = 1

[model]
{model}

[metric]
features = "demo-classifier"
reference = "{reference}"
"""

DDIM = """
[[schedulers]]
name = "diffusers.DDIMScheduler"
label = "{label}"
config = {{ timestep_spacing = "trailing", set_alpha_to_one = true }}
"""


def _config(folder: Path, nfe="[2]", model='kind = "demo-ddpm"', reference="demo-heldout", schedulers=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.toml"
    text = BASE.format(nfe=nfe, model=model, reference=reference)
    path.write_text(text + (schedulers if schedulers is not None else DDIM.format(label="DDIM")))
    return path


@pytest.fixture
def generated(monkeypatch):
    """Sample indices of every sweep batch drawn in this process."""
    calls = []
    original = sources.UNetSource.generate

    def counted(self, scheduler, n_steps, indices, guidance):
        calls.append(list(indices))
        return original(self, scheduler, n_steps, indices, guidance)

    monkeypatch.setattr(sources.UNetSource, "generate", counted)
    return calls


def _fds(path: Path, out: Path) -> list:
    return [c["fd"] for c in sweep.run_sweep(sweep.load_config(path, output=str(out)), progress=False)]


def _edit_schedule(folder: Path):
    d = json.loads((folder / "sched.json").read_text())
    d["grid"]["values"][2] *= 0.8
    (folder / "sched.json").write_text(json.dumps(d))


def _rescale_weights(folder: Path):
    from safetensors.torch import load_file, save_file

    f = folder / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v * 1.25 if v.is_floating_point() else v for k, v in load_file(f).items()}, f)


def _shift_reference(folder: Path):
    ref = FeatureStatistics.load(folder / "ref.npz")
    shifted = FeatureStatistics.from_moments(ref.mean.numpy() + 1.0, ref.cov.numpy())
    shifted.save(folder / "ref.npz", metadata={"features": "demo-classifier"})


@pytest.mark.parametrize("edit", [_edit_schedule, _rescale_weights, _shift_reference])
def test_edited_input_file_is_not_served_from_a_stale_cell(tmp_path, edit):
    """Why: a schedule file, the model weights or the reference statistics edited in place gave the old FD."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    shutil.copy(ROOT / "eval" / "schedules" / "demo_ddpm_s3_nfe5.json", folder / "sched.json")
    shutil.copytree(demo.WEIGHTS_DIR / "ddpm", folder / "model")
    net = sources.FeatureNet({"features": "demo-classifier"}, "cpu")
    sources.reference_statistics({"reference": "demo-heldout"}, net, tmp_path)  # caches the held-out digits'
    shutil.copy(next(tmp_path.glob("reference_stats-*.npz")), folder / "ref.npz")
    s3 = '[[schedulers]]\nname = "fastsample.S3Scheduler"\nlabel = "S3"\nconfig = { schedule_file = "sched.json" }\n'
    # relative paths everywhere (resolved against the config file, not the current folder)
    path = _config(folder, nfe="[5]", model='kind = "unet"\npath = "model"', reference="ref.npz", schedulers=s3)
    before = _fds(path, tmp_path / "out")
    edit(folder)
    after = _fds(path, tmp_path / "out")
    fresh = _fds(path, tmp_path / "fresh")
    assert after == fresh
    assert after != before


def test_each_input_file_is_hashed_once_per_run(tmp_path, monkeypatch):
    """Large files are hashed once per run, not once per cell."""
    shutil.copy(ROOT / "eval" / "schedules" / "demo_ddpm_s3_nfe5.json", tmp_path / "sched.json")
    s3 = '[[schedulers]]\nname = "fastsample.S3Scheduler"\nlabel = "{}"\nconfig = {{ schedule_file = "sched.json" }}\n'
    path = _config(tmp_path, nfe="[5]", schedulers=s3.format("S3 a") + s3.format("S3 b"))
    hashed = []
    real_open = open

    def counting_open(file, *a, **kw):
        if not str(file).endswith(".tmp"):  # (atomic writes open their temporary files to fsync them)
            hashed.append(Path(file).resolve())
        return real_open(file, *a, **kw)

    monkeypatch.setattr(_io, "_DIGESTS", {})
    monkeypatch.setattr(_io, "open", counting_open, raising=False)
    _fds(path, tmp_path / "out")
    names = [p.name for p in hashed]
    assert names.count("sched.json") == 1  # two cells use it
    assert names.count("diffusion_pytorch_model.safetensors") == 2  # the UNet's and the classifier's
    assert len(hashed) == len(set(hashed))


def test_typos_are_refused_with_the_nearest_key(tmp_path, generated):
    """Why: `num_sample = 24` ran 1,000 samples; `config = { solver_ordr = 2 }` ran order 3."""
    path = _config(tmp_path)
    path.write_text(path.read_text().replace("num_samples = 8", "num_sample = 24"))
    with pytest.raises(sweep.ConfigError, match=r"unknown key 'num_sample' in \[sweep\]; did you mean 'num_samples'"):
        sweep.load_config(path)
    deis = '[[schedulers]]\nname = "fastsample.DEISScheduler"\nlabel = "DEIS"\nconfig = { solver_ordr = 2 }\n'
    path = _config(tmp_path / "b", schedulers=DDIM.format(label="DDIM") + deis)
    with pytest.raises(sweep.ConfigError, match="no config key 'solver_ordr'; did you mean 'solver_order'"):
        sweep.run_sweep(sweep.load_config(path), progress=False)
    assert generated == []  # refused before the first sample, though DDIM came first
    for old, new, where in [
        ('kind = "demo-ddpm"', 'kind = "demo-ddpm"\npaht = "x"', r"\[model\]"),
        ('reference = "demo-heldout"', 'reference = "demo-heldout"\nrezise = "clean-fid"', r"\[metric\]"),
        ('label = "DDIM"', 'lable = "DDIM"', r"\[schedulers\]"),
        ("[sweep]", "[sweeep]\n[sweep]", r"\[top level\]"),
    ]:
        path = _config(tmp_path / "c")
        path.write_text(path.read_text().replace(old, new, 1))
        with pytest.raises(sweep.ConfigError, match="unknown key .* in " + where):
            sweep.load_config(path)


def test_copied_foreign_and_malformed_cells_are_recomputed(tmp_path, generated, capsys):
    """Why: a cell copied over another gave rc 0 with a duplicated and a missing row; "fd": "abc"
    crashed after rewriting results.json/csv."""
    path = _config(tmp_path, nfe="[2, 3]")
    first = _fds(path, tmp_path / "out")
    cells = sorted((tmp_path / "out" / "cells").glob("DDIM-*.json"))
    results = tmp_path / "out" / "results.json"
    shutil.copy(cells[0], cells[1])  # NFE 2's cell under NFE 3's name
    bad = json.loads(cells[0].read_text())
    bad["fd"] = "abc"
    cells[0].write_text(json.dumps(bad))
    n = len(generated)
    again = sweep.run_sweep(sweep.load_config(path, output=str(tmp_path / "out")), progress=False)
    err = capsys.readouterr().err
    assert f"{cells[1].name} was computed from other inputs" in err and "differs in nfe" in err
    assert f"{cells[0].name} has malformed values" in err
    assert len(generated) == n + 4  # both cells again, two batches each
    assert [(c["nfe"], c["fd"]) for c in again] == [(2, first[0]), (3, first[1])]
    rows = json.loads(results.read_text())["cells"]
    assert [(r["nfe"], r["fd"]) for r in rows] == [(2, first[0]), (3, first[1])]
    # a cell of another sweep (other seed) put under this one's name is foreign
    other = _config(tmp_path / "other", nfe="[2, 3]")
    other.write_text(other.read_text().replace("seed = 1", "seed = 2"))
    _fds(other, tmp_path / "other" / "out")
    shutil.copy(sorted((tmp_path / "other" / "out" / "cells").glob("DDIM-nfe2*.json"))[0], cells[0])
    assert _fds(path, tmp_path / "out") == first
    assert "differs in seed" in capsys.readouterr().err


def test_labels_that_collide_in_file_names_are_refused(tmp_path):
    path = _config(tmp_path, schedulers=DDIM.format(label="DEIS 3") + DDIM.format(label="DEIS_3"))
    with pytest.raises(sweep.ConfigError, match="'DEIS 3' and 'DEIS_3' give the same cell file name"):
        sweep.load_config(path)


def test_paths_resolve_against_the_config_file_and_missing_is_missing(tmp_path, monkeypatch):
    """Why: metric.reference and weights resolved against the current folder; missing said 'corrupt?'."""
    folder = tmp_path / "cfg"
    path = _config(folder, reference="stats/ref.npz")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(sweep.ConfigError, match="metric.reference 'stats/ref.npz' is missing") as e:
        sweep.load_config(path)
    assert "corrupt" not in str(e.value)
    (folder / "stats").mkdir()
    FeatureStatistics.from_moments(np.zeros(2), np.eye(2)).save(folder / "stats" / "ref.npz")
    assert sweep.load_config(path).metric["reference"] == str(folder / "stats" / "ref.npz")
    path.write_text(
        path.read_text().replace('features = "demo-classifier"', 'features = "inception"\nweights = "w.pth"')
    )
    with pytest.raises(sweep.ConfigError, match="metric.weights 'w.pth' is missing"):
        sweep.load_config(path)


def test_errors_come_before_any_cell_and_as_one_line(tmp_path, generated, capsys):
    """Why: an unknown class or a missing schedule_file failed when reached, after earlier cells, as tracebacks."""
    s3 = '[[schedulers]]\nname = "fastsample.S3Scheduler"\nlabel = "S3"\nconfig = { schedule_file = "no.json" }\n'
    for extra, words in [
        (DDIM.format(label="x").replace("DDIMScheduler", "NoSuchScheduler"), ["has no class 'NoSuchScheduler'"]),
        (s3, ["schedule_file 'no.json' is missing"]),
    ]:
        path = _config(tmp_path, schedulers=DDIM.format(label="DDIM") + extra)
        assert cli.main(["sweep", str(path), "--no-progress"]) == 1
        _one_line_error(capsys.readouterr().err, "fastsample sweep: error:", *words)
        assert generated == []
    with pytest.raises(sweep.ConfigError):
        cli.main(["--debug", "sweep", str(path)])
    assert cli.main(["sweep", str(path), "--num-samples", "0"]) == 2
    _one_line_error(capsys.readouterr().err, "--num-samples")
    path = _config(tmp_path / "d")
    path.write_text(path.read_text().replace("seed = 1", 'seed = 1\ndevice = "cuda:7"'))
    if not torch.cuda.is_available():
        assert cli.main(["sweep", str(path)]) == 1
        _one_line_error(capsys.readouterr().err, "CUDA is not available")


def test_results_are_world_readable_and_a_rerun_computes_nothing(tmp_path, generated):
    """Why: results and cells were written with mode 0600."""
    path = _config(tmp_path)
    first = _fds(path, tmp_path / "out")
    n = len(generated)
    assert _fds(path, tmp_path / "out") == first and len(generated) == n
    mask = os.umask(0)
    os.umask(mask)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(files) >= 6
    assert {p.stat().st_mode & 0o777 for p in files} == {0o666 & ~mask}


@pytest.mark.slow
def test_two_sweeps_into_one_folder_do_the_work_once(tmp_path):
    """Why: two sweeps into one folder duplicated all work."""
    path = _config(tmp_path, nfe="[2, 3]")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    cmd = [sys.executable, str(RUNNER), "generate", "0", "sweep", str(path), "--no-progress"]
    procs = [
        subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    events = sorted(int(err.split("EVENTS ")[-1].split()[0]) for _, err in outs)
    assert events == [0, 4]  # 2 cells x 2 batches, once
    assert outs[0][0] == outs[1][0]  # the same table


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL before and after file renames and during sampling, then resume: the same numbers, no temp files."""
    path = _config(tmp_path, nfe="[2, 3]", schedulers=DDIM.format(label="DDIM") + DDIM.format(label="DDIM b"))
    reference = sweep.run_sweep(sweep.load_config(path, output=str(tmp_path / "ref")), progress=False)
    rng = random.Random(13)
    plan = [("write", rng.randint(1, 3)), ("generate", rng.randint(2, 5)), ("renamed", rng.randint(1, 2))]
    kills = 0
    for event, k in plan + [("write", 0)] * 2:
        r = _run(event, k, ["sweep", path, "--output", tmp_path / "out", "--no-progress"])
        if r.returncode == 0:
            break
        assert r.returncode == -signal.SIGKILL, r.stderr
        kills += 1
    assert r.returncode == 0 and kills == len(plan)
    _no_temp_files(tmp_path / "out")
    got = json.loads((tmp_path / "out" / "results.json").read_text())["cells"]
    want = [{k: c.get(k) for k in ("scheduler", "nfe", "guidance", "fd", "num_inference_steps")} for c in reference]
    assert [{k: c[k] for k in want[0]} for c in got] == want


# --- search ------------------------------------------------------------------------------------------

SEARCH = ["search", "--model", "gmm", "--nfe", "4", "--offspring", "30", "--evaluate", "4", "--low-fidelity", "32"]
SEARCH += ["--high-fidelity", "64", "--quiet", "--gmm-dim", "4", "--gmm-components", "3"]


def _gmm_problem(seed=0):
    from fastsample.core.analytic import GaussianMixture
    from fastsample.core.schedules import DiscreteVP, betas_for_schedule

    mix = GaussianMixture.random(4, 3, seed=seed, width=(0.01, 0.1))
    return SearchProblem.analytic(mix, DiscreteVP.from_betas(betas_for_schedule("linear")))


def _search(problem, generations, checkpoint=None, **kw):
    opts = dict(offspring=30, evaluate_per_generation=4, low_fidelity=32, high_fidelity=64, progress=False)
    return search(problem, 4, generations=generations, checkpoint=checkpoint, **{**opts, **kw})


def _without_seconds(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    d.pop("seconds", None)
    d.get("metadata", {}).get("provenance", {}).pop("seconds", None)
    return d


def test_resumed_search_is_bit_identical(tmp_path):
    """Why: a resumed search differed from an uninterrupted one (the stall history was not saved)."""
    full = _search(_gmm_problem(), 9, tmp_path / "full.ckpt")
    _search(_gmm_problem(), 3, tmp_path / "part.ckpt")
    resumed = _search(_gmm_problem(), 9, tmp_path / "part.ckpt")
    assert resumed.fitness == full.fitness
    assert _without_seconds(resumed.schedule.to_dict()) == _without_seconds(full.schedule.to_dict())
    assert json.dumps(resumed.history) == json.dumps(full.history)
    a, b = (json.loads((tmp_path / f"{n}.ckpt").read_text()) for n in ("full", "part"))
    assert _without_seconds(a) == _without_seconds(b)


def test_foreign_or_broken_checkpoint_is_refused(tmp_path):
    """Why: a checkpoint from another model (--gmm-seed) was reused silently; bad ones gave tracebacks."""
    ck = tmp_path / "s.ckpt"
    _search(_gmm_problem(0), 1, ck)
    with pytest.raises(_io.UserError, match="written for another search .*differs in model"):
        _search(_gmm_problem(1), 2, ck)
    with pytest.raises(_io.UserError, match="differs in offspring"):
        _search(_gmm_problem(0), 2, ck, offspring=31)
    with _io.file_lock(f"{ck}.lock"), pytest.raises(_io.UserError, match="another search .* holds"):
        _search(_gmm_problem(0), 2, ck)
    ck.write_text(ck.read_text()[:100])
    with pytest.raises(_io.UserError, match="not a readable search checkpoint"):
        _search(_gmm_problem(0), 2, ck)


def test_search_command_checks_arguments_and_output_first(tmp_path, capsys):
    """Why: --high-fidelity 0 / --threads 0 gave tracebacks; --out to a folder failed after the search;
    --out overwrote an existing file."""
    for bad in (["--high-fidelity", "0"], ["--threads", "0"], ["--nfe", "x"]):
        assert cli.main([*SEARCH, *bad, "--out", str(tmp_path / "o.json")]) == 2
        _one_line_error(capsys.readouterr().err, "fastsample search: error: argument")
    ck = tmp_path / "c.ckpt"
    assert cli.main([*SEARCH, "--generations", "1", "--out", str(tmp_path), "--checkpoint", str(ck)]) == 1
    _one_line_error(capsys.readouterr().err, "is a folder")
    assert not ck.exists()  # refused before the search started
    mine = tmp_path / "mine.json"
    mine.write_text("precious")
    assert cli.main([*SEARCH, "--generations", "1", "--out", str(mine), "--checkpoint", str(ck)]) == 1
    _one_line_error(capsys.readouterr().err, "exists; not overwriting it")
    assert mine.read_text() == "precious" and not ck.exists()
    ck.write_text("{")
    assert cli.main([*SEARCH, "--generations", "1", "--out", str(tmp_path / "n.json"), "--checkpoint", str(ck)]) == 1
    _one_line_error(capsys.readouterr().err, "not a readable search checkpoint")
    assert cli.main([*SEARCH, "--generations", "1", "--out", str(mine), "--force"]) == 0
    assert json.loads(mine.read_text())["nfe"] == 4


@pytest.mark.slow
def test_killed_search_resumes_bit_identical(tmp_path):
    """SIGKILL during checkpoint writes and evaluations, resume: the uninterrupted result, no temp files."""
    args = [*SEARCH, "--generations", "6", "--checkpoint"]
    assert _run("write", 0, [*args, tmp_path / "full.ckpt", "--out", tmp_path / "full.json"]).returncode == 0
    # SIGTERM while a checkpoint's temporary file is complete: it is removed on the way out
    r = _run("write:term", 1, [*args, tmp_path / "res.ckpt", "--out", tmp_path / "res.json"])
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert not (tmp_path / "res.ckpt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".res")] == []
    rng = random.Random(7)
    plan = [("write", rng.randint(1, 2)), ("evaluate", rng.randint(5, 15)), ("renamed", rng.randint(1, 2))]
    kills = 0
    for event, k in plan + [("write", 0)]:
        r = _run(event, k, [*args, tmp_path / "res.ckpt", "--out", tmp_path / "res.json"])
        if r.returncode == 0:
            break
        assert r.returncode == -signal.SIGKILL, r.stderr
        kills += 1
    assert r.returncode == 0 and kills == len(plan)
    _no_temp_files(tmp_path)
    for a, b in (("full.json", "res.json"), ("full.ckpt", "res.ckpt")):
        x, y = (json.loads((tmp_path / n).read_text()) for n in (a, b))
        assert _without_seconds(x) == _without_seconds(y)


# --- ems ------------------------------------------------------------------------------------------------

EMS_CHILD = """
import sys, torch
from diffusers import DDPMScheduler
from fastsample.core.analytic import GaussianMixture
from fastsample.ems import analytic_model_fn, compute_ems
mix = GaussianMixture.random(dim=3, components=2, seed=1)
cfg = DDPMScheduler().config
ems = compute_ems(analytic_model_fn(mix, cfg), cfg, torch.from_numpy(mix.sample(16)), grid_size=4, num_samples=8,
                  batch_size=4, progress=False, checkpoint=sys.argv[-2])
ems.save(sys.argv[-1])
"""


@pytest.mark.slow
def test_killed_ems_resumes_bit_identical(tmp_path):
    from fastsample.formats.ems_file import EMS

    assert _run("jvp", 0, ["-c", EMS_CHILD, tmp_path / "full.ckpt", tmp_path / "full.st"]).returncode == 0
    rng = random.Random(3)
    kills = 0
    for event, k in [("write", rng.randint(1, 3)), ("jvp", rng.randint(2, 6)), ("write", 0)]:
        r = _run(event, k, ["-c", EMS_CHILD, tmp_path / "res.ckpt", tmp_path / "res.st"])
        if r.returncode == 0:
            break
        assert r.returncode == -signal.SIGKILL, r.stderr
        kills += 1
    assert r.returncode == 0 and kills == 2
    _no_temp_files(tmp_path)
    a, b = EMS.load(tmp_path / "full.st"), EMS.load(tmp_path / "res.st")
    for name in ("lambdas", "l", "s", "b"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))


def test_ems_checkpoint_of_other_data_or_broken_is_refused(tmp_path):
    from diffusers import DDPMScheduler

    from fastsample.core.analytic import GaussianMixture
    from fastsample.ems.estimation import compute_ems
    from fastsample.ems.models import analytic_model_fn

    mix = GaussianMixture.random(dim=3, components=2, seed=1)
    cfg = DDPMScheduler().config
    opts = dict(grid_size=2, num_samples=4, batch_size=4, progress=False, checkpoint=tmp_path / "e.ckpt")
    compute_ems(analytic_model_fn(mix, cfg), cfg, torch.from_numpy(mix.sample(8)), **opts)
    with pytest.raises(ValueError, match="other settings"):
        compute_ems(analytic_model_fn(mix, cfg), cfg, torch.from_numpy(mix.sample(8)) + 1, **opts)
    (tmp_path / "e.ckpt").write_bytes((tmp_path / "e.ckpt").read_bytes()[:50])
    with pytest.raises(_io.UserError, match="unreadable or truncated"):
        compute_ems(analytic_model_fn(mix, cfg), cfg, torch.from_numpy(mix.sample(8)), **opts)


def test_ems_command_refuses_to_overwrite_before_working(tmp_path, capsys):
    """Why: `fastsample ems --out F` overwrote F."""
    mine = tmp_path / "mine.safetensors"
    mine.write_text("precious")
    assert cli.main(["ems", "--model", "demo-ddpm", "--out", str(mine)]) == 1
    _one_line_error(capsys.readouterr().err, "exists; not overwriting it")
    assert mine.read_text() == "precious"
    assert cli.main(["ems", "--model", "demo-ddpm", "--out", str(tmp_path / "x"), "--grid-size", "0"]) == 2
    _one_line_error(capsys.readouterr().err, "--grid-size")
    if not torch.cuda.is_available():
        assert cli.main(["ems", "--model", "demo-ddpm", "--out", str(tmp_path / "x"), "--device", "cuda"]) == 2
        _one_line_error(capsys.readouterr().err, "CUDA is not available")


# --- fid ------------------------------------------------------------------------------------------------

FID = ["--weights", "random", "--device", "cpu", "--num-workers", "0", "--dims", "64"]


def _images(folder: Path, n=3, seed=0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_truncated_image_is_named_or_skipped(tmp_path, capsys):
    """Why: a truncated PNG gave a 63-line traceback that did not name the file."""
    a = _images(tmp_path / "a", 4)
    good = _images(tmp_path / "good", 4)
    (good / "3.png").unlink()
    data = (a / "3.png").read_bytes()
    (a / "3.png").write_bytes(data[: len(data) // 2])
    assert cli.main(["fid", "--save-stats", str(a), str(tmp_path / "a.npz"), *FID]) == 1
    _one_line_error(capsys.readouterr().err, "3.png", "cannot read image")
    assert not (tmp_path / "a.npz").exists()
    assert cli.main(["fid", "--save-stats", str(a), str(tmp_path / "a.npz"), "--skip-bad-images", *FID]) == 0
    assert "skipped 1 unreadable image(s) of 4" in capsys.readouterr().err
    assert cli.main(["fid", "--save-stats", str(good), str(tmp_path / "good.npz"), *FID]) == 0
    x, y = (FeatureStatistics.load(tmp_path / n) for n in ("a.npz", "good.npz"))
    assert torch.equal(x.mean, y.mean) and torch.equal(x.cov, y.cov)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    """Why: 16-bit PNGs were clipped to 255."""
    v = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(v).save(tmp_path / "deep.png")
    got = fid_cli.read_image(tmp_path / "deep.png")
    want = np.rint(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert got.shape == (3, 8, 8) and got.dtype == torch.uint8
    for c in range(3):
        np.testing.assert_array_equal(got[c].numpy(), want)
    assert len(np.unique(got[0].numpy())) == 64  # clipping made all but five of them 255


def _stats_file(path, sigma):
    np.savez(path, mu=np.zeros(len(sigma)), sigma=sigma)
    return path


def _eye_with(i, j, v):
    s = np.eye(64)
    s[i, j] = v
    return s


def test_statistics_that_are_not_a_covariance_are_refused(tmp_path, capsys):
    """Why: a covariance that is not positive semi-definite gave a number."""
    ok = _stats_file(tmp_path / "ok.npz", np.eye(64))
    for name, sigma, words in [
        ("neg.npz", _eye_with(5, 5, -0.5), "not positive semi-definite"),
        ("asym.npz", _eye_with(0, 1, 0.5), "not symmetric"),
        ("nan.npz", _eye_with(2, 2, np.nan), "NaN or inf"),
    ]:
        bad = _stats_file(tmp_path / name, sigma)
        assert cli.main(["fid", str(ok), str(bad), "--dims", "64"]) == 1
        _one_line_error(capsys.readouterr().err, name, words)
    # round-off of a rank-deficient covariance stored in float32 passes
    c = np.cov(np.random.default_rng(0).normal(size=(64, 10))).astype(np.float32)
    assert np.linalg.eigvalsh(c.astype(np.float64))[0] < 0
    assert cli.main(["fid", str(ok), str(_stats_file(tmp_path / "f32.npz", c)), "--dims", "64"]) == 0


def test_save_stats_refuses_the_name_numpy_writes(tmp_path, capsys, monkeypatch):
    """Why: `--save-stats A statsA` overwrote statsA.npz."""
    a = _images(tmp_path / "a")
    (tmp_path / "statsA.npz").write_text("precious")
    computed = []
    monkeypatch.setattr(fid_cli, "compute_statistics", lambda *a, **k: computed.append(1))
    assert cli.main(["fid", "--save-stats", str(a), str(tmp_path / "statsA"), *FID]) == 1
    _one_line_error(capsys.readouterr().err, "statsA.npz exists; not overwriting it")
    assert computed == [] and (tmp_path / "statsA.npz").read_text() == "precious"
    monkeypatch.undo()
    assert cli.main(["fid", "--save-stats", str(a), str(tmp_path / "statsA"), "--force", *FID]) == 0
    assert FeatureStatistics.load(tmp_path / "statsA.npz").n == 3


def test_fid_device_errors_are_one_line(tmp_path, capsys):
    """Why: --device cuda without CUDA gave a traceback."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main(["fid", "a", "b", "--device", "cuda"]) == 2
    _one_line_error(capsys.readouterr().err, "CUDA is not available")
