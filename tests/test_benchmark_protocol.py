"""The benchmark comparison protocol (benchmarks/protocol.py): grids reach every Diffusers class exactly,
selection and held-out seeds stay apart, counts come from the data, intervals cover, timing is fair."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import protocol as P  # noqa: E402

from fastsample import DEISScheduler, RectifiedFlowScheduler  # noqa: E402
from fastsample.fid import ReferenceStatistics  # noqa: E402
from fastsample.fid.bootstrap import fd_difference  # noqa: E402

VP_CONFIG = DDIMScheduler(beta_schedule="linear").config
FLOW_CONFIG = FlowMatchEulerDiscreteScheduler().config


@pytest.mark.parametrize("n", [4, 7])
def test_every_vp_baseline_gets_exactly_each_grid_or_is_refused(n):
    grids = P.vp_grids(VP_CONFIG, n)
    assert {"trailing", "linspace", "quadratic_t", "uniform_lambda", "karras"} <= set(grids)
    refused = set()
    for b in P.vp_roster() + [P.Baseline("ours", DEISScheduler)]:
        for grid in grids.values():
            s = b.make(VP_CONFIG)
            try:
                P.set_grid(s, grid, is_flow=False)
            except P.GridRefused:
                refused.add(b.cls)
                continue
            np.testing.assert_array_equal(s.timesteps.numpy().astype(np.int64), grid)
            if not isinstance(s, DEISScheduler):  # Diffusers' noise levels at exactly those timesteps
                ac = s.alphas_cumprod.double().numpy()[grid]
                np.testing.assert_allclose(s.sigmas[:-1].double().numpy(), ((1 - ac) / ac) ** 0.5, rtol=1e-6)
    assert {c.__name__ for c in refused} == {"DDIMScheduler", "IPNDMScheduler"}


def test_every_flow_baseline_gets_exactly_each_grid_or_is_refused():
    grids = P.flow_grids(6)
    refused = set()
    for b in P.flow_roster() + [P.Baseline("ours", RectifiedFlowScheduler)]:
        for grid in grids.values():
            s = b.make(FLOW_CONFIG)
            try:
                P.set_grid(s, grid, is_flow=True)
            except P.GridRefused:
                refused.add(b.cls.__name__)
                continue
            np.testing.assert_allclose(s.sigmas[:-1].double().numpy(), grid, rtol=2e-6)
            assert float(s.sigmas[-1]) == 0.0
    assert refused == {"FlowMatchHeunDiscreteScheduler"}


def _run(s, x):
    def model(x, ts):  # any smooth function of the input and the label
        return torch.sin(x + ts / 1000.0)

    return P.sample(s, model, x)


@pytest.mark.parametrize(
    "cls, options, is_flow",
    [
        (UniPCMultistepScheduler, {"solver_order": 3, "timestep_spacing": "trailing"}, False),
        (DEISMultistepScheduler, {"solver_order": 3, "timestep_spacing": "leading"}, False),
        (DPMSolverMultistepScheduler, {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, True),
    ],
)
def test_state_route_reproduces_the_class_own_set_timesteps_bit_for_bit(cls, options, is_flow):
    """Where set_timesteps takes no custom grid, set_grid builds its state; on the class's own grid that state and
    the samples equal those of its own set_timesteps."""
    config = FLOW_CONFIG if is_flow else VP_CONFIG
    own = cls.from_config(config, **options)
    own.set_timesteps(6)
    # flow: Diffusers' own float64 sigmas for 6 steps (its float32 copy would round differently)
    grid = np.flip(1 - np.linspace(1, 1 / 1000, 7))[:-1].copy() if is_flow else own.timesteps.numpy()
    ours = cls.from_config(config, **{k: v for k, v in options.items() if k != "timestep_spacing"})
    assert P.set_grid(ours, grid, is_flow) == "state"
    if not is_flow:
        torch.testing.assert_close(ours.sigmas, own.sigmas, rtol=0, atol=0)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_run(ours, x.clone()), _run(own, x.clone()), rtol=0, atol=0)


def test_argument_route_gives_dpmsolver_what_its_timesteps_argument_gives():
    grid = P.vp_grids(VP_CONFIG, 5)["quadratic_t"]
    a = DPMSolverMultistepScheduler.from_config(VP_CONFIG)
    assert P.set_grid(a, grid, False) == "argument"
    b = DPMSolverMultistepScheduler.from_config(VP_CONFIG)
    b.set_timesteps(timesteps=grid.tolist())
    torch.testing.assert_close(a.sigmas, b.sigmas, rtol=0, atol=0)


def test_configurations_keep_within_the_nfe_budget_and_skip_refused_grids():
    grids_for = lambda k: P.vp_grids(VP_CONFIG, k)  # noqa: E731
    ddim = P.configurations(lambda **kw: DDIMScheduler.from_config(VP_CONFIG, **kw), 5, False, grids_for,
                            P.own_grid_options(DDIMScheduler, False))  # fmt: skip
    assert sorted(ddim) == ["leading (own)", "linspace (own)", "trailing (own)"]
    ours = P.configurations(lambda **kw: DEISScheduler.from_config(VP_CONFIG, **kw), 5, False, grids_for)
    assert set(ours) == set(P.vp_grids(VP_CONFIG, 5))
    for build in list(ddim.values()) + list(ours.values()):
        assert len(build().timesteps) == 5


def test_choice_uses_only_selection_seeds_and_reports_heldout():
    calls = []
    # config "a" is best on selection, "b" would be best on held-out: the choice must still be "a"
    table = {"a": {0: 1.0, 1: 1.0, 100: 9.0, 101: 9.0}, "b": {0: 2.0, 1: 2.0, 100: 0.5, 101: 0.5}, "c": None}

    def evaluate(cfg, seeds):
        calls.append((cfg, tuple(seeds)))
        if table[cfg] is None:
            return None
        return np.array([table[cfg][s] for s in seeds])

    ch = P.choose("m", {k: k for k in table}, evaluate, selection_seeds=(0, 1), heldout_seeds=(100, 101))
    assert (ch.config, ch.selection, ch.heldout, ch.count) == ("a", 1.0, 9.0, 2)
    heldout_calls = [c for c in calls if set(c[1]) & {100, 101}]
    assert heldout_calls == [("a", (100, 101))]
    with pytest.raises(ValueError, match="overlap"):
        P.choose("m", {"a": "a"}, evaluate, selection_seeds=(0, 1), heldout_seeds=(1, 2))
    assert not set(P.SELECTION_SEEDS) & set(P.HELDOUT_SEEDS)


def test_table_counts_and_labels_come_from_the_data():
    rng = np.random.default_rng(0)
    choices = {}
    for method, n_cfg in (("alpha", 3), ("beta", 5)):
        for col in (4, 6):
            cfgs = {f"cfg{i}": i for i in range(n_cfg + col)}  # counts differ by column
            ch = P.choose(method, cfgs, lambda c, seeds: rng.random(4) + c, (0,), (1,))
            choices[method, col] = ch.to_dict()
    md = P.comparison_table(choices, [4, 6], ratio=("alpha", "beta"))
    assert "| alpha | chose from 7-9 |" in md and "| beta | chose from 9-11 |" in md
    assert "ratio alpha / beta" in md
    r = P.ratios(choices, [4, 6], "alpha", "beta")
    assert r[4] == pytest.approx(choices["alpha", 4]["heldout"] / choices["beta", 4]["heldout"])


def test_bootstrap_interval_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    hits = 0
    trials = 200
    for i in range(trials):
        x = rng.exponential(2.0, size=80)  # skewed, true mean 2
        lo, hi = P.bootstrap_ci(x, n_boot=400, level=0.9, seed=i)
        hits += lo <= 2.0 <= hi
    assert 0.82 <= hits / trials <= 0.96


def test_paired_fd_difference_is_the_difference_of_the_two_distances_with_an_interval_around_it():
    def features(seed):
        return torch.from_numpy(np.random.default_rng(seed).standard_normal((200, 8)))

    ref = ReferenceStatistics.from_features(features(1))
    exact = features(2)
    same = fd_difference(exact, exact, ref, n_boot=50, level=0.95)
    assert same == {"value": 0.0, "ci95": [0.0, 0.0]}  # the same rows on both sides: no noise left
    shifted = exact + 0.5  # every noise moved the same way: a difference well beyond the sampling noise
    d = fd_difference(shifted, exact, ref, n_boot=50, level=0.95)
    want = float(ref.distance_tensor_features(shifted) - ref.distance_tensor_features(exact))
    assert d["value"] == pytest.approx(want, rel=1e-12)
    lo, hi = d["ci95"]
    assert 0 < lo <= d["value"] <= hi
    with pytest.raises(ValueError, match="same shape"):
        fd_difference(exact[:-1], exact, ref, n_boot=5, level=0.95)


@pytest.mark.parametrize("n, dim", [(200, 4), (80, 32)])
def test_fd_bootstrap_interval_is_around_the_distance_even_when_resampling_biases_it(n, dim):
    """With n not much above D a resample's distance is biased upwards; the interval is corrected for it, and its
    width follows the spread of the distance over fresh sample sets."""
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(2000, dim))
    gen = rng.normal(loc=0.3, size=(n, dim))
    r = P.fd_bootstrap(gen, ref, n_boot=100)
    assert r["ci95"][0] <= r["fd"] <= r["ci95"][1] and r["n"] == n
    assert r["resampling_bias"] > 0
    fresh = [P.fd_bootstrap(rng.normal(loc=0.3, size=(n, dim)), ref, n_boot=2)["fd"] for _ in range(40)]
    width = r["ci95"][1] - r["ci95"][0]
    assert 0.4 < width / (np.quantile(fresh, 0.975) - np.quantile(fresh, 0.025)) < 2.5


def test_interleaved_timing_gives_every_contestant_the_same_repeats_in_turn():
    order = []
    contestants = {name: (lambda name=name: order.append(name)) for name in ("A", "B", "C")}
    t = P.interleaved_timing(contestants, repeats=4, warmup=1)
    assert order == ["A", "B", "C"] * 5
    assert {v["repeats"] for v in t.values()} == {4}
    for v in t.values():
        assert v["min"] <= v["q1"] <= v["median"] <= v["q3"] <= v["max"]


def test_converged_reference_reports_the_change_between_two_step_counts():
    x = torch.ones(3, 2)
    ref, info = P.converged_reference(lambda n: x * (1 + 1.0 / n), (10, 100))
    torch.testing.assert_close(ref, x * 1.01)
    assert info == {"steps": [10, 100], "mean_rmse_between": pytest.approx(0.09)}
    np.testing.assert_allclose(P.per_sample_rmse(torch.zeros(2, 3, 4), torch.ones(2, 3, 4)), [1.0, 1.0])


def test_readme_benchmark_section_is_what_the_results_files_give():
    """README.md quotes benchmarks/results/*.json through benchmarks/readme_tables.py, never by hand."""
    import readme_tables

    assert readme_tables.main(["--check"]) == 0
