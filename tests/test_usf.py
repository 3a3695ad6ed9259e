"""S^3 / USF (Liu et al., arXiv 2312.07243): schedule format, executor parity and semantics, S3Scheduler, search."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from scipy.integrate import quad
from scipy.linalg import sqrtm

from fastsample.core.analytic import GaussianMixture
from fastsample.core.grids import uniform_lambda, uniform_t
from fastsample.core.schedules import DiscreteVP, LinearVP, RectifiedFlow, betas_for_schedule
from fastsample.formats import solver_schedule
from fastsample.formats.solver_schedule import Corrector, Derivative, ScheduleError, SolverSchedule, Step, load
from fastsample.formats.usf_pth import from_usf
from fastsample.schedulers import S3Scheduler
from fastsample.solvers.usf import builtins as S
from fastsample.solvers.usf.builtins import from_diffusers
from fastsample.solvers.usf.executor import USFSolver, run_schedule


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids oversubscribing the shared CPU cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- parity with diffusers' schedulers (their own loop, same timesteps, float32) ---------------------


def _diffusers_loop(scheduler, mixture, n):
    scheduler.set_timesteps(n)
    vp = DiscreteVP(scheduler.alphas_cumprod.double().numpy())
    model = mixture.model_fn(vp)
    x = torch.from_numpy(mixture.prior_sample(4, vp, t_start=1.0, seed=0)).float()
    y = x.clone()
    for ts in scheduler.timesteps:
        y = scheduler.step(model(y, float(vp.t_of_timestep(float(ts)))), ts, y).prev_sample
    return vp, model, x, y


PARITY = [
    (DDIMScheduler, {"set_alpha_to_one": True, "timestep_spacing": "trailing", "clip_sample": False}),
    (DDIMScheduler, {"set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False}),
    (DPMSolverMultistepScheduler, {"solver_order": 2}),
    (DPMSolverMultistepScheduler, {"solver_order": 3}),
    (DPMSolverMultistepScheduler, {"solver_order": 2, "solver_type": "heun"}),
    (DPMSolverMultistepScheduler, {"solver_order": 3, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    (UniPCMultistepScheduler, {"solver_order": 2}),
    (UniPCMultistepScheduler, {"solver_order": 3}),
    (UniPCMultistepScheduler, {"solver_order": 2, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    (UniPCMultistepScheduler, {"solver_order": 3, "predict_x0": False, "final_sigmas_type": "sigma_min"}),
    (UniPCMultistepScheduler, {"solver_order": 2, "disable_corrector": [1, 3]}),
    (DEISMultistepScheduler, {"solver_order": 2}),
    (DEISMultistepScheduler, {"solver_order": 3}),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "cls,kw", PARITY, ids=lambda v: v.__name__ if isinstance(v, type) else "-".join(map(str, v.values()))
)
@pytest.mark.parametrize("n", [5, 10])
def test_converted_schedule_matches_diffusers(cls, kw, n, mixture):
    scheduler = cls(beta_schedule="linear", **kw)
    vp, model, x, y = _diffusers_loop(scheduler, mixture, n)
    sch = from_diffusers(scheduler)
    assert sch.nfe == n and sch.grid_unit == "t"
    ours = run_schedule(model, x, vp, sch).double()
    exact = run_schedule(model, x.double(), vp, sch)
    # float32 round-off, as measured: our own float32 run against float64 (large for noise prediction into small sigma)
    roundoff = float((ours - exact).abs().max())
    assert float((ours - y.double()).abs().max()) < 3e-6 * float(y.abs().max()) + 4 * roundoff


# --- an independent step-by-step USF reference (quadrature, USF's relaxation formulas) ----------------


def _usf_reference(model_fn, x, ns, sch: SolverSchedule, grid):
    """USF's sampling loop written out: states and predictions per grid point, corrector replaces the state."""
    alpha, sigma = ns.alpha(grid), ns.sigma(grid)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    X, P = {}, {"noise": {}, "data": {}}

    def observe(p, xp):
        eps = model_fn(xp, float(grid[p])).double()
        P["noise"][p], P["data"][p] = eps, (xp - sigma[p] * eps) / alpha[p]

    def update(step, order, ders, i, target):
        s = i - step.start
        f = P[step.prediction]
        h = lam[target] - lam[s]
        data = step.prediction == "data"
        hh = -h if data else h
        if math.isinf(h) and data and order == 1:  # DDIM into sigma = 0 returns x0-hat
            return alpha[target] * f[s]

        def coef(k):
            g = (
                (lambda u: math.exp(-(h - u)) * u**k / math.factorial(k))
                if data
                else (lambda u: math.exp(h - u) * u**k / math.factorial(k))
            )
            val = quad(g, 0, h, epsabs=0, epsrel=1e-13)[0]
            return alpha[target] * val if data else -sigma[target] * val

        out = (sigma[target] / sigma[s] if data else alpha[target] / alpha[s]) * X[s] + coef(0) * f[s]
        for k, der in enumerate(ders, start=1):
            pts = [i - j for j in der.points]
            dl = np.array([lam[q] - lam[s] for q in pts])
            A = np.array([[d ** (m + 1) / math.factorial(m + 1) for m in range(len(pts))] for d in dl])
            dF = torch.stack([f[q] - f[s] for q in pts])
            d = torch.einsum("j,j...->...", torch.from_numpy(np.linalg.solve(A, np.eye(len(pts)))[k - 1]), dF)
            factor = {
                "none": 1.0,
                "linear": 1 + der.coef * h,
                "exp": 1 + der.coef * math.expm1(hh),
                "midpoint": 0.5 * hh * math.expm1(hh) / (math.expm1(hh) - hh),
                "bh1": 0.5 * hh * hh / (math.expm1(hh) - hh),
            }[der.scaling]
            out = out + coef(k) * factor * der.factor * d
        return out

    n = sch.num_steps
    X[0] = x
    if sch.afs == "zero_x0":
        P["noise"][0], P["data"][0] = x / sigma[0], torch.zeros_like(x)
    else:
        observe(0, x)
    for i, step in enumerate(sch.steps):
        nxt = update(step, step.order, step.derivatives, i, i + 1)
        if i + 1 < n or step.corrector is not None:
            observe(i + 1, nxt)
        X[i + 1] = nxt
        if step.corrector is not None:
            X[i + 1] = update(step, step.corrector.order, step.corrector.derivatives, i, i + 1)
    return X[n]


def _rich_schedule(afs: bool, final_corrector: bool) -> SolverSchedule:
    D = Derivative
    steps = [
        Step("data", 1, (), 0, Corrector(2, (D((-1,), "bh1"),))),
        Step("noise", 2, (D((1,), "linear", 0.3),), 0, Corrector(3, (D((-1, 1)), D((-1, 1))))),
        Step("data", 3, (D((1,), "midpoint"), D((1, 2), factor=0.5))),
        Step("noise", 3, (D((1, 2), "exp", -0.2), D((2, 1)))),
        Step("data", 2, (D((0,)),), 1),  # singlestep-like: expand from the point before
        Step("data", 2, (D((1,), "linear", -0.4),), 0, Corrector(3, (D((-1, 1)), D((-1, 2))))),
        Step("noise", 2, (D((2,)),), 0, Corrector(2, (D((-1,)),)) if final_corrector else None),
    ]
    return SolverSchedule(tuple(steps), afs="zero_x0" if afs else "none")


@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("final_corrector", [False, True])
def test_executor_matches_stepwise_usf(afs, final_corrector, mixture):
    ns = LinearVP()
    sch = _rich_schedule(afs, final_corrector)
    grid = uniform_lambda(ns, 7, t_start=1.0, t_end=2e-3)
    x = torch.from_numpy(mixture.prior_sample(6, ns, t_start=1.0, seed=3))
    model = mixture.model_fn(ns)
    ref = _usf_reference(model, x, ns, sch, grid)
    ours = run_schedule(model, x, ns, sch, grid)
    assert float((ours - ref).abs().max()) < 1e-9 * float(ref.abs().max())
    plan = USFSolver(sch).plan(ns, grid)
    assert plan.nfe == sch.nfe == 7 - afs + final_corrector
    assert plan.history_len <= 4


def test_step_into_sigma_zero(mixture, schedules):
    ns = schedules["discrete_vp"]
    grid = uniform_t(ns, 5, final_zero=True)
    x = torch.from_numpy(mixture.prior_sample(4, ns, seed=1))
    ok = SolverSchedule(S.deis_logrho(5, 3, lower_order_final=False).steps)
    ref = _usf_reference(mixture.model_fn(ns), x, ns, replace(ok, steps=ok.steps[:-1] + (Step("data", 1),)), grid)
    out = run_schedule(mixture.model_fn(ns), x, ns, replace(ok, steps=ok.steps[:-1] + (Step("data", 1),)), grid)
    assert float((out - ref).abs().max()) < 1e-9
    out = run_schedule(mixture.model_fn(ns), x, ns, ok, grid)  # noise prediction of order 3 into sigma = 0 is finite
    assert torch.isfinite(out).all()
    bad = replace(ok, steps=ok.steps[:-1] + (Step("data", 2, (Derivative((1,)),)),))
    with pytest.raises(ScheduleError, match="sigma = 0"):
        USFSolver(bad).plan(ns, grid)


def test_flow_model_from_t1(mixture):
    fl = RectifiedFlow()
    grid = np.linspace(1.0, 0.0, 7)
    x = torch.from_numpy(mixture.prior_sample(8, fl, t_start=1.0, seed=0))
    exact = mixture.ode_solve(x.numpy(), fl, 1.0, 0.0)
    errs = []
    for n in (24, 48, 96):
        sch = S.unipc(n, 2, first_usable=False)
        out = run_schedule(
            mixture.model_fn(fl, "flow_prediction"), x, fl, sch, np.linspace(1.0, 0.0, n + 1), "flow_prediction"
        )
        errs.append(float(np.abs(out.numpy() - exact).max()))
    # second order from the alpha = 0 start, against the exact solution: halving the step cuts the error by
    # nearly 4 (more than 2^1.5, an observed order above 1.5)
    assert all(a / b > 2**1.5 for a, b in zip(errs, errs[1:])) and errs[0] < 0.05, errs
    with pytest.raises(ScheduleError, match="alpha = 0|infinite lambda"):
        USFSolver(S.unipc(6, 2)).plan(fl, grid)


# --- format and validation ---------------------------------------------------------------------------


def test_round_trip(tmp_path):
    sch = _rich_schedule(True, True).with_grid(np.linspace(1, 0.01, 8)).with_metadata(model={"name": "m"})
    path = tmp_path / "s.json"
    sch.save(path)
    back = load(path)
    assert back.to_dict() == sch.to_dict()
    d = json.loads(path.read_text())
    assert d["format"] == solver_schedule.FORMAT and d["version"] == solver_schedule.VERSION
    assert d["nfe"] == sch.nfe == 7


def _write(tmp_path, d):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    return p


def test_bad_files(tmp_path):
    good = S.dpmsolver_multistep(4, 2).with_grid(np.linspace(1, 0, 5)).to_dict()
    with pytest.raises(ScheduleError, match="version 2"):
        load(_write(tmp_path, {**good, "version": 2}))
    with pytest.raises(ScheduleError, match="not a solver schedule"):
        load(_write(tmp_path, {**good, "format": "other"}))
    steps = [dict(s) for s in good["steps"]]
    steps[1] = {"prediction": "data", "order": 3, "derivatives": [{"points": [1, 2]}, {"points": [1, 2]}]}
    with pytest.raises(ScheduleError, match=r"steps\[1\]: order 3 uses lag 2 but only 1 earlier grid point"):
        load(_write(tmp_path, {**good, "steps": steps}))
    with pytest.raises(ScheduleError, match="'nfe' is 5"):
        load(_write(tmp_path, {**good, "nfe": 5}))
    for values, unit, fault in (
        ([1.0, float("nan"), 0.5, 0.2, 0.0], "t", "a t grid must run from noise to data .*no NaN"),
        ([1.0, 0.5, 0.6, 0.2, 0.0], "t", "a t grid .*strictly decreasing"),
        ([999, 700, 400, 100, -2], "timestep", "a timestep grid .*>= -1"),
        ([-3.0, -1.0, -2.0, 1.0, float("inf")], "lambda", "a lambda grid .*strictly increasing"),
    ):
        path = _write(tmp_path, {**good, "grid": {"unit": unit, "values": values}})
        with pytest.raises(ScheduleError, match=f"^{re.escape(str(path))}: {fault}") as err:
            load(path)
        assert "\n" not in str(err.value)
    lam = {**good, "grid": {"unit": "lambda", "values": [-float("inf"), -1.0, 0.0, 1.0, float("inf")]}}
    assert load(_write(tmp_path, lam)).grid[-1] == float("inf")
    with pytest.raises(ScheduleError, match="unknown key"):
        load(_write(tmp_path, {**good, "extra": 1}))
    with pytest.raises(ScheduleError, match="needs 1 derivative"):
        Step("data", 2) and SolverSchedule((Step("data", 1), Step("data", 2)))
    with pytest.raises(ScheduleError, match="grid must have 3 values"):
        SolverSchedule((Step("data", 1), Step("data", 1)), np.linspace(1, 0, 4))
    with pytest.raises(ScheduleError, match="must use the new point"):
        SolverSchedule((Step("data", 1, corrector=Corrector(2, (Derivative((1,)),))), Step("data", 1)))
    with pytest.raises(ScheduleError, match="end point, which must be > 0"):
        SolverSchedule((Step("data", 1, corrector=Corrector(2, (Derivative((-1,)),))),), np.array([1.0, 0.0]))
    sch = load(_write(tmp_path, good))
    with pytest.raises(ScheduleError, match="makes 4 model evaluations but num_inference_steps=5"):
        sch.check_nfe(5)


def test_importer_maps_usf_decisions():
    """A decision dict in USF's published layout (written here, not copied) maps lag by lag."""
    linear = {"estimate": "Difference_1", "active_points": [-2], "relaxation": "linear", "relaxation_coefficient": 0.1}
    d = {
        "timesteps": torch.tensor([80.0, 10.0, 2.0, 0.5, 0.01]),
        "orders": [1, 2, 3, 2],
        "prediction_types": ["noise_prediction", "data_prediction", "noise_prediction", "dpmsolver_v3_prediction"],
        "start_points": [-1, -1, -1, -1],
        "derivative_types": [
            [],
            [linear],
            [
                {"estimate": "Difference_2", "active_points": [-3, -2], "relaxation": "unipc-bh2"},
                {"estimate": "Difference_2", "active_points": [-3, -2], "relaxation": None},
            ],
            [{"estimate": "Difference_1", "active_points": None, "relaxation": "unipc-bh1"}],
        ],
        "corrector_types": [
            {
                "type": "pseudo",
                "start_point": -2,
                "taylor_order": 2,
                "derivative_type": [{"estimate": "Difference_1", "active_points": [-1], "relaxation": None}],
            },
            {"type": "no_corrector"},
            {
                "type": "pseudo",
                "start_point": -2,
                "taylor_order": 3,
                "derivative_type": [
                    {"estimate": "Difference_2", "active_points": [-3, -1], "relaxation": None},
                    {"estimate": "Difference_2", "active_points": [-3, -1], "relaxation": None},
                ],
            },
            {"type": "no_corrector"},
        ],
        "afs": "zero_x0",
        "skip_coefficients": torch.ones(15),
    }
    with pytest.raises(ScheduleError, match="DPM-Solver-v3"):
        from_usf(d)
    s = from_usf(d, substitute={"dpmsolver_v3_prediction": "data"})
    assert s.grid_unit == "sigma_ve" and s.afs == "zero_x0" and s.nfe == 3
    assert [st.prediction for st in s.steps] == ["noise", "data", "noise", "data"]
    assert s.steps[1].derivatives[0] == Derivative((1,), "linear", 0.1)
    assert s.steps[2].derivatives[0] == Derivative((2, 1), "midpoint")
    assert s.steps[3].derivatives[0] == Derivative((1,), "bh1")
    assert s.steps[0].corrector == Corrector(2, (Derivative((-1,)),))
    assert s.steps[2].corrector == Corrector(3, (Derivative((1, -1)), Derivative((1, -1))))
    assert s.metadata["provenance"]["substitutions"] == {"dpmsolver_v3_prediction": "data"}
    with pytest.raises(ScheduleError, match="average_x0"):
        from_usf({**d, "afs": "average_x0"}, substitute={"dpmsolver_v3_prediction": "data"})
    with pytest.raises(ScheduleError, match="skip connections"):
        from_usf({**d, "skip_coefficients": torch.full((15,), 0.9)}, substitute={"dpmsolver_v3_prediction": "noise"})


# --- S3Scheduler ---------------------------------------------------------------------------------------


def _loop(sched, model, vp, x):
    x = x * sched.init_noise_sigma
    for ts in sched.timesteps:
        x = sched.step(model(x, float(vp.t_of_timestep(float(ts)))), ts, x).prev_sample
    return x


def test_s3_scheduler_runs_schedule_file(tmp_path, mixture):
    vp = DiscreteVP.from_betas(betas_for_schedule("linear"))
    grid = vp.t_of_timestep(np.array([999.0, 700, 420, 230, 90, 40, 15]))
    sch = _rich_schedule(True, False).with_grid(np.concatenate([grid, [0.0]]))
    sch = replace(sch, steps=sch.steps[:-1] + (Step("noise", 2, (Derivative((2,)),)),))
    path = tmp_path / "sched.json"
    sch.save(path)
    sched = S3Scheduler.from_schedule(path, beta_schedule="linear")
    with pytest.raises(ScheduleError, match="num_inference_steps=7"):
        sched.set_timesteps(7)
    sched.set_timesteps(sch.nfe)
    assert len(sched.timesteps) == sch.nfe == 6 and sched.timesteps.tolist() == [700, 420, 230, 90, 40, 15]
    assert sched.init_noise_sigma == pytest.approx(float(vp.sigma(grid[1]) / vp.sigma(grid[0])))
    model = mixture.model_fn(vp)
    x = torch.from_numpy(mixture.prior_sample(4, vp, seed=0)).float()
    ours = _loop(sched, model, vp, x)
    ref = run_schedule(model, x.double(), vp, sch)
    assert float((ours.double() - ref).abs().max()) < 1e-5
    sched.save_pretrained(tmp_path / "cfg")
    again = S3Scheduler.from_pretrained(tmp_path / "cfg")  # the schedule travels inside the folder
    assert again.config.schedule_file == str((tmp_path / "cfg" / path.name).resolve())
    assert again.solver_schedule.to_dict() == sch.to_dict()


@pytest.mark.parametrize("name", sorted(S.BUILTINS))
def test_s3_builtin_matches_converter(name, mixture):
    sched = S3Scheduler(beta_schedule="linear", builtin_schedule=name, timestep_spacing="trailing")
    vp = sched.schedule
    model = mixture.model_fn(vp)
    x = torch.from_numpy(mixture.prior_sample(4, vp, seed=0)).float()
    for n in (3, 6):
        sched.set_timesteps(n)
        out = _loop(sched, model, vp, x)
        ref = run_schedule(model, x, vp, S.builtin(name, n), sched._grid)
        assert float((out - ref).abs().max()) < 1e-5


def test_s3_unknown_builtin():
    with pytest.raises(ValueError, match="unknown builtin schedule"):
        S3Scheduler(builtin_schedule="nope")


# --- search ----------------------------------------------------------------------------------------------


def test_tiny_search_checkpoint_resume(tmp_path):
    from fastsample.search.baselines import BASELINE_GRIDS, baseline_solvers
    from fastsample.search.evolution import report, search
    from fastsample.search.problem import SearchProblem

    mix = GaussianMixture.random(dim=4, components=3, seed=0)
    prob = SearchProblem.analytic(mix, DiscreteVP.from_betas(betas_for_schedule("linear")))
    kw = dict(
        offspring=30,
        evaluate_per_generation=4,
        promote=1,
        low_fidelity=16,
        high_fidelity=32,
        progress=False,
        predictor="ridge",
    )
    ckpt, out = tmp_path / "ckpt.json", tmp_path / "best.json"
    first = search(prob, 4, generations=2, checkpoint=ckpt, **kw)
    state = json.loads(ckpt.read_text())
    assert state["generation"] == 2
    second = search(prob, 4, generations=3, checkpoint=ckpt, out=out, **kw)
    assert json.loads(ckpt.read_text())["generation"] == 3 and second.evaluations >= first.evaluations
    best = load(out)
    assert best.nfe == 4 and best.metadata["provenance"]["fitness"]["metric"] == "rmse"
    assert second.fitness <= first.fitness + 1e-12
    with pytest.raises(ValueError, match="another search"):
        search(prob, 5, generations=3, checkpoint=ckpt, **kw)
    rep = report(prob, best, seeds=(7,), n=32)
    # held-out fitness: the RMS error of the found schedule against the mixture's exact ODE solution, seed 7
    ns = prob.noise_schedule
    x = torch.from_numpy(mix.prior_sample(32, ns, t_start=1.0, seed=7))
    exact = mix.ode_solve(x.numpy(), ns, 1.0, 0.0)
    rmse = float(np.sqrt(np.mean((run_schedule(mix.model_fn(ns), x, ns, best).numpy() - exact) ** 2)))
    assert rep["found"] == pytest.approx(rmse, rel=1e-9) and rmse > 1e-6  # NFE 4 is not exact
    # every baseline solver on every standard grid, sorted best first
    fits = [r["fitness"] for r in rep["baselines"]]
    assert len(fits) == len(baseline_solvers()) * len(BASELINE_GRIDS) and fits == sorted(fits)
    assert rep["best_baseline"] == rep["baselines"][0] and rep["ratio"] == pytest.approx(rmse / fits[0], rel=1e-9)


def test_timestep_only_search_keeps_decisions():
    from fastsample.search.evolution import search
    from fastsample.search.problem import SearchProblem

    mix = GaussianMixture.random(dim=4, components=3, seed=1)
    prob = SearchProblem.analytic(mix, LinearVP())
    res = search(
        prob,
        4,
        generations=2,
        offspring=20,
        evaluate_per_generation=4,
        promote=1,
        low_fidelity=16,
        high_fidelity=16,
        timestep_only=True,
        base="dpmsolver++2m",
        progress=False,
    )
    assert [s.to_dict() for s in res.schedule.steps] == [s.to_dict() for s in S.dpmsolver_multistep(4, 2).steps]


def test_cli_search(tmp_path, capsys):
    from fastsample.cli import main

    out = tmp_path / "g.json"
    rc = main(
        [
            "search",
            "--model",
            "gmm",
            "--gmm-dim",
            "3",
            "--gmm-components",
            "2",
            "--nfe",
            "3",
            "--out",
            str(out),
            "--generations",
            "1",
            "--offspring",
            "10",
            "--evaluate",
            "2",
            "--low-fidelity",
            "8",
            "--high-fidelity",
            "8",
            "--predictor",
            "ridge",
            "--quiet",
        ]
    )
    assert rc == 0 and load(out).nfe == 3 and "wrote" in capsys.readouterr().out


def test_noise_prediction_step_from_alpha_zero(mixture):
    """At t = 1 of a flow the first-order step of either prediction type is DDIM's prediction form."""
    fl = RectifiedFlow()
    grid = np.linspace(1.0, 0.0, 5)
    x = torch.from_numpy(mixture.prior_sample(4, fl, t_start=1.0, seed=0))
    model = mixture.model_fn(fl, "flow_prediction")
    a = run_schedule(model, x, fl, S.ddim(4, "noise"), grid, prediction_type="flow_prediction")
    b = run_schedule(model, x, fl, S.ddim(4, "data"), grid, prediction_type="flow_prediction")
    assert float((a - b).abs().max()) < 1e-12


def test_s3_file_schedule_img2img_restart(tmp_path, mixture):
    """Starting part-way runs the schedule's tail with the unavailable history dropped (orders fall back)."""
    vp = DiscreteVP.from_betas(betas_for_schedule("linear"))
    grid = np.concatenate([vp.t_of_timestep(np.array([999.0, 800, 600, 400, 200, 100])), [0.0]])
    sch = S.unipc(6, 3).with_grid(grid)
    sch.save(tmp_path / "u.json")
    sched = S3Scheduler.from_schedule(tmp_path / "u.json", beta_schedule="linear")
    sched.set_timesteps(6)
    sched.set_begin_index(2)
    model = mixture.model_fn(vp)
    x = torch.from_numpy(mixture.prior_sample(4, vp, t_start=float(grid[2]), seed=0)).float()
    out = x
    for ts in sched.timesteps[2:]:
        out = sched.step(model(out, float(vp.t_of_timestep(float(ts)))), ts, out).prev_sample
    tail = sch.tail(2)
    assert [s.order for s in tail.steps] == [1, 2, 2, 1] and tail.steps[0].corrector.order == 2
    ref = run_schedule(model, x, vp, tail, grid[2:])
    assert float((out - ref).abs().max()) < 1e-5


def test_fid_fitness_search():
    """The Frechet-distance fitness (fastsample.fid) against the reference samples, raw coordinates as features."""
    from fastsample.search.evolution import search
    from fastsample.search.problem import SearchProblem, fitness_of

    mix = GaussianMixture.random(dim=3, components=2, seed=2)
    prob = SearchProblem.analytic(mix, LinearVP())
    x, ref = prob.batch(0, 64)
    assert fitness_of(prob, ref, ref, "fid") == pytest.approx(0.0, abs=1e-9)
    res = search(
        prob,
        3,
        generations=1,
        offspring=10,
        evaluate_per_generation=2,
        promote=1,
        low_fidelity=32,
        high_fidelity=32,
        metric="fid",
        predictor="ridge",
        progress=False,
    )
    # the reported fitness is the returned schedule's Frechet distance on the high-fidelity batch (32 samples of
    # seed search_seed + 1 = 1001), recomputed here from the closed form |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2)
    x_hi, ref_hi = prob.batch(1001, 32)
    a, b = prob.run(res.schedule, x_hi).double().numpy(), ref_hi.numpy()
    ca, cb = np.cov(a.T), np.cov(b.T)
    expected = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * sqrtm(ca @ cb).real))
    assert res.fitness == pytest.approx(expected, rel=1e-6) and expected > 1e-6  # NFE 3 is not exact
    assert res.schedule.metadata["provenance"]["fitness"] == {
        "metric": "fid",
        "value": res.fitness,
        "samples": 32,
        "seed": 1001,
    }
    with pytest.raises(ValueError, match="unknown fitness"):
        fitness_of(prob, ref, ref, "lpips")


def test_search_baselines_keep_diffusers_deis_beside_ours():
    """Diffusers' DEIS log-rho (builtin "deis-logrho3") and our DEIS log-rho 3 are both compared, not one overwriting
    the other: every fixed schedule and every DEIS variant x order has its own entry."""
    from fastsample.search.baselines import SCHEDULE_BASELINES, baseline_solvers

    b = baseline_solvers()
    assert b["deis-logrho3"] == ("schedule", "deis-logrho3")
    assert b["deis-logrho3 (fastsample)"][0] == "solver"
    assert len(b) == len(SCHEDULE_BASELINES) + 4 * 3


def test_search_without_surrogate_picks_at_random_and_needs_no_sklearn(monkeypatch):
    """``predictor="none"`` (the no-surrogate search, arXiv 2312.07243): runs with scikit-learn unimportable, where
    the surrogate searches fail once they fit; an unknown predictor is one clear error."""
    import sys

    from fastsample.search.evolution import search
    from fastsample.search.problem import SearchProblem

    mix = GaussianMixture.random(dim=4, components=3, seed=0)
    prob = SearchProblem.analytic(mix, DiscreteVP.from_betas(betas_for_schedule("linear")))
    kw = dict(generations=2, offspring=20, evaluate_per_generation=4, promote=1, low_fidelity=8, high_fidelity=16)
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")] + ["sklearn"]:
        monkeypatch.setitem(sys.modules, name, None)
    res = search(prob, 3, predictor="none", progress=False, **kw)
    assert res.schedule.nfe == 3 and res.schedule.metadata["provenance"]["predictor"] == "none"
    with pytest.raises(ImportError):
        search(prob, 3, predictor="ridge", progress=False, **kw)
    with pytest.raises(ValueError, match="unknown predictor 'random'; allowed: mlp, ridge, none"):
        search(prob, 3, predictor="random", progress=False, **kw)
