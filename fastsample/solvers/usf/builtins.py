"""Diffusers' multistep solvers as solver schedules (DDIM, DPM-Solver++, UniPC, DEIS).

:func:`builtin` makes one by name for a step count; :func:`from_diffusers` reads a configured diffusers scheduler.

The executor reproduces each to float32 round-off (Liu et al., arXiv 2312.07243).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...formats.solver_schedule import Corrector, Derivative, SolverSchedule, Step
from ..base import final_order_cap

# --- converters: diffusers' multistep solvers as schedules -----------------------------------------


def _lags(k: int) -> tuple[int, ...]:
    return tuple(range(1, k + 1))


def _taylor_step(prediction: str, order: int, first_scaling: str = "none", factors=()) -> Step:
    """Exact Taylor step using the ``order - 1`` most recent points for every derivative."""
    pts = _lags(order - 1)
    ders = []
    for k in range(1, order):
        scaling = first_scaling if k == 1 else "none"
        factor = factors[k - 1] if k - 1 < len(factors) else 1.0
        ders.append(Derivative(pts, scaling, 0.0, factor))
    return Step(prediction, order, tuple(ders))


def _meta(name: str, **params) -> dict:
    return {"provenance": {"method": "converter", "solver": name, "params": params}}


def first_point_usable(noise_schedule, t_start) -> bool:
    """Whether a grid starting at ``t_start`` gives derivatives from its first point: not where alpha = 0 (a
    flow's t = 1, lambda = -inf); the builtins' ``first_usable``."""
    return bool(noise_schedule.alpha(t_start) > 0)


def _warmup(i: int, first_usable: bool) -> int:
    """Earlier grid points usable for derivatives at step i (the t = 1 point of a flow grid is not)."""
    return i if first_usable else max(i - 1, 0)


def ddim(
    num_steps: int, prediction: str = "data", first_usable: bool = True, grid=None, unit: str = "t"
) -> SolverSchedule:
    """DDIM (Song et al., arXiv 2010.02502): every step order 1 (data and noise forms are identical).

    ``first_usable`` (whether the first grid point may estimate derivatives) is accepted for a uniform
    converter signature; DDIM estimates none.
    """
    steps = tuple(Step(prediction, 1) for _ in range(num_steps))
    return SolverSchedule(steps, grid, unit, metadata=_meta("ddim"))


def dpmsolver_multistep(
    num_steps: int,
    order: int = 2,
    prediction: str = "data",
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    euler_at_final: bool = False,
    final_zero: bool = True,
    first_usable: bool = True,
    grid=None,
    unit: str = "t",
    exact_third_order: bool = False,
) -> SolverSchedule:
    """DPM-Solver++(2M/3M) (``prediction="data"``, Lu et al., arXiv 2211.01095) or DPM-Solver (``"noise"``).

    Reproduces diffusers' ``DPMSolverMultistepScheduler`` order rules; ``midpoint`` scales the first
    derivative term to h/2 times the zeroth-order one, ``heun`` is the exact Taylor term. Diffusers'
    third-order update (as the dpm-solver reference code) weights its second-derivative term by 1/2 of the
    exact Taylor weight (``factor`` 0.5), which leaves an O(h^3) local error: its fitted order falls toward 2
    (1/2 weight: 2.5, 2.3, 2.2 at 48-384 steps; exact weight 3.2, 3.2, 3.1; tests/test_flow_parity.py).
    ``exact_third_order=True`` uses the exact weight (:class:`~fastsample.solvers.multistep.ExpMultistepSolver`).
    """
    if order not in (1, 2, 3) or solver_type not in ("midpoint", "heun"):
        raise ValueError("DPM-Solver multistep: order 1-3, solver_type 'midpoint' or 'heun'")
    n, steps = num_steps, []
    for i in range(n):
        cap = final_order_cap(i, n) if lower_order_final else order
        if i == n - 1 and (euler_at_final or final_zero):
            cap = 1
        p = min(order, _warmup(i, first_usable) + 1, cap)
        if p == 2:
            steps.append(_taylor_step(prediction, 2, "midpoint" if solver_type == "midpoint" else "none"))
        else:
            steps.append(_taylor_step(prediction, p, factors=(1.0, 1.0 if exact_third_order else 0.5)))
    name = "dpmsolver++" if prediction == "data" else "dpmsolver"
    return SolverSchedule(tuple(steps), grid, unit, metadata=_meta(name, order=order, solver_type=solver_type))


def unipc(
    num_steps: int,
    order: int = 2,
    variant: str = "bh2",
    prediction: str = "data",
    lower_order_final: bool = True,
    disable_corrector=(),
    first_usable: bool = True,
    grid=None,
    unit: str = "t",
) -> SolverSchedule:
    """UniPC (Zhao et al., arXiv 2302.04867): UniP-p predictor with the UniC corrector, diffusers' rules.

    Orders >= 3 (predictor) and >= 2 (corrector) are exact Taylor expansions of the Lagrange
    interpolant; order 2 (predictor) and corrector order 1 use B(h) = h (bh1) or e^h - 1 (bh2).
    """
    if variant not in ("bh1", "bh2") or not 1 <= order <= 4:
        raise ValueError("UniPC: variant 'bh1' or 'bh2', order 1-4")
    n, steps = num_steps, []
    for i in range(n):
        q = min(order, n - i, i + 1) if lower_order_final else min(order, i + 1)  # diffusers' order at step i
        p = min(q, _warmup(i, first_usable) + 1)
        # B(h) enters only at diffusers' orders 2 (predictor) and 1 (corrector); where an unusable first point
        # (a flow's t = 1, lambda = -inf) lowers our order below q, diffusers' weights tend to the exact ones
        pred = _taylor_step(prediction, p, variant if q == 2 else "none")
        corr = None
        # from the unusable point itself only bh2's corrector has a finite limit (diffusers' at sigma = 1)
        if i < n - 1 and i not in disable_corrector and (first_usable or i > 0 or variant == "bh2"):
            pts = (-1,) + _lags(p - 1)
            scaling = variant if q == 1 else "none"
            corr = Corrector(p + 1, tuple(Derivative(pts, scaling if k == 0 else "none") for k in range(p)))
        steps.append(replace(pred, corrector=corr))
    return SolverSchedule(tuple(steps), grid, unit, metadata=_meta(f"unipc-{variant}", order=order))


def deis_logrho(
    num_steps: int,
    order: int = 3,
    lower_order_final: bool = True,
    first_usable: bool = True,
    grid=None,
    unit: str = "t",
) -> SolverSchedule:
    """DEIS log-rho AB (Zhang & Chen, arXiv 2204.13902) = noise prediction with exact Taylor terms; diffusers' rules."""
    if order not in (1, 2, 3):
        raise ValueError("DEIS log-rho: order 1-3")
    n, steps = num_steps, []
    for i in range(n):
        cap = final_order_cap(i, n) if lower_order_final else order
        steps.append(_taylor_step("noise", min(order, _warmup(i, first_usable) + 1, cap)))
    return SolverSchedule(tuple(steps), grid, unit, metadata=_meta("deis-logrho", order=order))


BUILTINS = {
    "ddim": lambda n, **kw: ddim(n, **kw),
    "dpmsolver++2m": lambda n, **kw: dpmsolver_multistep(n, 2, **kw),
    "dpmsolver++3m": lambda n, **kw: dpmsolver_multistep(n, 3, **kw),
    "unipc-bh1": lambda n, **kw: unipc(n, 2, "bh1", **kw),
    "unipc-bh2": lambda n, **kw: unipc(n, 2, "bh2", **kw),
    "unipc3-bh2": lambda n, **kw: unipc(n, 3, "bh2", **kw),
    "deis-logrho3": lambda n, **kw: deis_logrho(n, 3, **kw),
}
"""Named converter schedules for any number of steps (``S3Scheduler(builtin_schedule=...)``)."""


def builtin(name: str, num_steps: int, **kwargs) -> SolverSchedule:
    if name not in BUILTINS:
        raise ValueError(f"unknown builtin schedule {name!r}; allowed: {', '.join(BUILTINS)}")
    return BUILTINS[name](num_steps, **kwargs)


def from_diffusers(scheduler) -> SolverSchedule:
    """The schedule (with its grid in t) that a configured diffusers scheduler runs after ``set_timesteps``.

    Supports ``DDIMScheduler`` (eta = 0), ``DPMSolverMultistepScheduler`` (dpmsolver++ / dpmsolver),
    ``UniPCMultistepScheduler`` and ``DEISMultistepScheduler`` on discrete VP schedules.
    """
    from ...core.schedules import DiscreteVP

    name = type(scheduler).__name__
    c = scheduler.config
    if scheduler.timesteps is None or getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("call set_timesteps on the diffusers scheduler first")
    vp = DiscreteVP(scheduler.alphas_cumprod.double().numpy())
    ts = scheduler.timesteps.detach().cpu().double().numpy()
    n = len(ts)
    t = vp.t_of_timestep(ts)
    if name == "DDIMScheduler":
        end = 0.0 if c.set_alpha_to_one else float(vp.t_of_timestep(0.0))
        out = ddim(n)
    else:
        sigma_last = float(scheduler.sigmas[-1])
        end = float(vp.t_of_sigma_ve(np.array([sigma_last]))[0]) if sigma_last > 0 else 0.0
        final_zero = sigma_last == 0
        if name == "DPMSolverMultistepScheduler":
            algo = {"dpmsolver++": "data", "dpmsolver": "noise"}.get(c.algorithm_type)
            if algo is None:
                raise ValueError(
                    f"algorithm_type {c.algorithm_type!r} is not deterministic multistep; use dpmsolver++ or dpmsolver"
                )
            out = dpmsolver_multistep(
                n, c.solver_order, algo, c.solver_type, c.lower_order_final, c.euler_at_final, final_zero
            )
        elif name == "UniPCMultistepScheduler":
            if c.solver_p is not None:
                raise ValueError("UniPC with solver_p is not expressible as a schedule")
            out = unipc(
                n,
                c.solver_order,
                c.solver_type,
                "data" if c.predict_x0 else "noise",
                c.lower_order_final,
                tuple(c.disable_corrector),
            )
        elif name == "DEISMultistepScheduler":
            out = deis_logrho(n, c.solver_order, c.lower_order_final)
        else:
            raise ValueError(
                f"no converter for {name}; supported: DDIM, DPMSolverMultistep, UniPCMultistep, DEISMultistep"
            )
    grid = np.concatenate([t, [end]])
    return out.with_grid(grid, "t").with_metadata(
        model={"noise_schedule": vp.describe()}, provenance={"method": "from_diffusers", "scheduler": name}
    )

