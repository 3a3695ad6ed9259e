"""Every solver in one registry, with one fitted-order test and one host-sync test over all of them.

A new :class:`~fastsample.solvers.base.Solver` subclass anywhere in the package fails
``test_registry_covers_every_solver`` until it has an entry in ``REGISTRY``; the entry then gets the
order and host-sync tests with no more code.

Order: max error (8 samples, float64) against the exact Gaussian-mixture ODE solution
(``GaussianMixture.ode_solve``, about 1e-10) at three or more step counts; the fitted slope of log error
vs log steps must reach ``order - tol``. Each entry names the schedule, grid and range where its order
shows at these step counts (see tests/test_deis_order.py for why DEIS needs grids from t = 1, iPNDM a
grid uniform in rho, rhoAB a wider tolerance).

Host sync: one step of every plan on ``meta`` tensors, which hold no data, so any read of a tensor
value on the host (``.item()``, ``float(t)``, ``bool(t)``, a data-dependent branch) raises.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import fastsample
from fastsample.core.grids import uniform_lambda, uniform_t
from fastsample.solvers.base import Solver
from fastsample.solvers.ddim import DDIMSolver
from fastsample.solvers.deis import DEISSolver
from fastsample.solvers.dpmsolver_v3 import DPMSolverV3
from fastsample.solvers.flow import FlowEulerSolver, FlowRKSolver
from fastsample.solvers.multistep import ExpMultistepSolver
from fastsample.solvers.sampling import advance
from fastsample.solvers.usf.builtins import BUILTINS, builtin
from fastsample.solvers.usf.executor import USFSolver

MULTISTEP = (48, 96, 192)
RK = (20, 40, 80)
FEW = (16, 24, 32, 48)


def _rho_grid(schedule, n, t_start, t_end):
    """n steps equal in rho = sigma / alpha (iPNDM's weights assume them)."""
    rho = schedule.sigma_ve(np.array([t_start, t_end]))
    grid = schedule.t_of_sigma_ve(np.linspace(rho[0], rho[1], n + 1))
    grid[0], grid[-1] = t_start, t_end
    return grid


@dataclass(frozen=True)
class Entry:
    """A solver configuration and where its order shows: ``make(num_steps)``, schedule, grid, range, steps."""

    make: Callable[[int], Solver]
    order: float
    schedule: str = "linear_vp"
    grid: Callable = uniform_lambda
    t_range: tuple = (1.0, 0.03)
    steps: tuple = MULTISTEP
    tol: float = 0.4


def _fixed(solver: Solver) -> Callable[[int], Solver]:
    return lambda n: solver


REGISTRY: dict[str, Entry] = {"ddim": Entry(_fixed(DDIMSolver()), 1, steps=FEW)}
for _variant in ("tab", "rhoab", "logrho"):
    for _order in (2, 3, 4):
        for _name, _t in (("linear_vp", (1.0, 0.03)), ("flow", (0.999, 0.05))):
            REGISTRY[f"deis_{_variant}{_order}_{_name}"] = Entry(
                _fixed(DEISSolver(_variant, _order)), _order, _name, t_range=_t, tol=0.6 if _variant == "rhoab" else 0.4
            )
for _order in (2, 3, 4):
    # from t = 0.5 iPNDM's warm-start floor shows for order 4 at the finest grids: it must reach 3
    REGISTRY[f"deis_ipndm{_order}"] = Entry(
        _fixed(DEISSolver("ipndm", _order)), min(_order, 3), grid=_rho_grid, t_range=(0.5, 0.03)
    )
    for _name, _t in (("linear_vp", (1.0, 0.03)), ("flow", (0.999, 0.05))):
        REGISTRY[f"deis_rhork{_order}_{_name}"] = Entry(
            _fixed(DEISSolver("rhork", _order)), _order, _name, t_range=_t, steps=RK
        )
REGISTRY["flow_euler"] = Entry(_fixed(FlowEulerSolver()), 1, "flow", uniform_t, (0.999, 0.05), FEW, 0.3)
for _method, _order in (("heun", 2), ("midpoint", 2), ("rk3", 3), ("rk4", 4)):
    REGISTRY[f"flow_{_method}"] = Entry(
        _fixed(FlowRKSolver(_method)), _order, "flow", uniform_t, (0.999, 0.05), FEW, 0.3
    )
for _order in (2, 3):
    REGISTRY[f"multistep{_order}_flow"] = Entry(
        _fixed(ExpMultistepSolver(_order)), _order, "flow", t_range=(0.999, 0.05)
    )
    REGISTRY[f"multistep{_order}_vp"] = Entry(_fixed(ExpMultistepSolver(_order)), _order)
for _order in (1, 2, 3):
    REGISTRY[f"dpmsolver_v3_{_order}"] = Entry(
        _fixed(DPMSolverV3(order=_order, lower_order_final=False)), _order, "discrete_vp", t_range=(0.9, 0.05),
    )
for _opts in ({"use_corrector": True}, {"use_corrector": True, "corrector_pseudo": True}, {"predictor_pseudo": True}):
    REGISTRY["dpmsolver_v3_2_" + "_".join(_opts)] = Entry(
        _fixed(DPMSolverV3(order=2, lower_order_final=False, **_opts)), 2, "discrete_vp", t_range=(0.9, 0.05),
    )
# Diffusers' UniPC lowers its last steps' order at every step count (order n - i): the final first-order
# step caps UniPC-3's global order at 2. Diffusers' DPM-Solver++(3M) weights its second-derivative term by half
# the exact weight: second order as the steps grow (tests/test_flow_parity.py fits it).
_USF_ORDERS = {"ddim": 1, "dpmsolver++2m": 2, "dpmsolver++3m": 2, "unipc-bh1": 2, "unipc-bh2": 2}
_USF_ORDERS |= {"unipc3-bh2": 2, "deis-logrho3": 3}
for _name in BUILTINS:
    REGISTRY[f"usf_{_name}"] = Entry(
        lambda n, name=_name: USFSolver(builtin(name, n)), _USF_ORDERS[_name]
    )


def _solver_classes() -> set[type]:
    """Every Solver subclass defined in the fastsample package (modules importable without an app)."""
    for m in pkgutil.walk_packages(fastsample.__path__, "fastsample."):
        if m.name.startswith(("fastsample.solvers", "fastsample.schedulers")):
            importlib.import_module(m.name)
    out, todo = set(), [Solver]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.add(sub)
            todo.append(sub)
    return {c for c in out if c.__module__.startswith("fastsample.") and not inspect.isabstract(c)}


def test_registry_covers_every_solver():
    """Private subclasses (S3's builtin wrapper, the AFS shift) delegate to USFSolver, which the registry holds."""
    covered = {type(e.make(10)) for e in REGISTRY.values()}
    missing = {c for c in _solver_classes() - covered if not c.__name__.startswith("_")}
    assert not missing, f"solvers without a registry entry (add one to REGISTRY): {sorted(c.__name__ for c in missing)}"


_REFERENCE: dict = {}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_order(name, mixture, schedules, sampler):
    e = REGISTRY[name]
    schedule = schedules[e.schedule]
    t0, t1 = e.t_range
    key = (e.schedule, t0, t1)
    if key not in _REFERENCE:
        x = mixture.prior_sample(8, schedule, t_start=t0)
        _REFERENCE[key] = mixture.ode_solve(x, schedule, t0, t1)
    errs = []
    for n in e.steps:
        out, _ = sampler(mixture, schedule, e.make(n), e.grid(schedule, n, t_start=t0, t_end=t1))
        errs.append(np.abs(out - _REFERENCE[key]).max())
    assert min(errs) > 1e-9, f"errors {errs} reach the oracle's accuracy; use fewer steps"
    slope = -np.polyfit(np.log(e.steps), np.log(errs), 1)[0]
    assert slope >= e.order - e.tol, f"{name}: slope {slope:.2f} < order {e.order} - {e.tol}, errors {errs}"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_step_never_reads_a_tensor_on_the_host(name, schedules):
    """Every step of the plan (corrector included) runs on data-free meta tensors."""
    e = REGISTRY[name]
    schedule = schedules[e.schedule]
    t0, t1 = e.t_range
    plan = e.make(6).plan(schedule, e.grid(schedule, 6, t_start=t0, t_end=t1))
    x, history = torch.empty(2, 3, device="meta"), None
    for k, t in enumerate(plan.eval_times.tolist()):
        x, x0, history = advance(plan, k, t, torch.empty(2, 3, device="meta"), x, history, schedule, "epsilon")
    assert x.device.type == "meta" and x.shape == (2, 3)
