"""Solver schedules as genes for the S^3 search: steps, grid coordinates, surrogate features."""

from __future__ import annotations

import json

import numpy as np

from ..formats.solver_schedule import Corrector, Derivative, SolverSchedule, Step

MAX_ORDER = 3


# --- genotype helpers ---------------------------------------------------------------------------------


def _u_of_t(ns, t, t_start, t_end_pos):
    """Coordinate in [0, 1] of time t between t_start and the last positive time: Karras (rho = 7) for VP
    models; linear in t for flows (their sigma_ve is infinite at t = 1)."""
    if ns.is_flow:
        return (t_start - np.asarray(t, dtype=np.float64)) / (t_start - t_end_pos)
    rho = 7.0
    a, b = float(ns.sigma_ve(t_start)) ** (1 / rho), float(ns.sigma_ve(t_end_pos)) ** (1 / rho)
    return (np.asarray(ns.sigma_ve(t)) ** (1 / rho) - a) / (b - a)


def _t_of_u(ns, u, t_start, t_end_pos):
    if ns.is_flow:
        return np.asarray(t_start - np.asarray(u, dtype=np.float64) * (t_start - t_end_pos), dtype=np.float64)
    rho = 7.0
    a, b = float(ns.sigma_ve(t_start)) ** (1 / rho), float(ns.sigma_ve(t_end_pos)) ** (1 / rho)
    return np.asarray(ns.t_of_sigma_ve((a + np.asarray(u) * (b - a)) ** rho), dtype=np.float64)


def _make_step(i, n, prediction, order, npts, coef, corrector, final_zero, first_usable=True):
    """A step with valid decisions: order capped by history (without the first point where it gives no
    derivative: a flow's t = 1), no corrector there either, data order 1 into sigma = 0."""
    history = i + 1 if first_usable else i
    order = max(1, min(order, history, MAX_ORDER))
    last = i == n - 1
    if last and final_zero and prediction == "data":
        order = 1
    if last and final_zero:
        coef = 0.0
    ders = []
    for k in range(1, order):
        if k == 1:
            pts = tuple(range(1, max(1, min(npts, order - 1)) + 1))
            ders.append(Derivative(pts, "linear" if coef else "none", coef))
        else:
            ders.append(Derivative(tuple(range(1, order))))
    corr = None
    if corrector and not last and (first_usable or i > 0):
        cpts = (-1,) + tuple(range(1, order))
        corr = Corrector(order + 1, tuple(Derivative(cpts) for _ in range(order)))
    return Step(prediction, order, tuple(ders), 0, corr)


def _step_genes(step: Step):
    npts = len(step.derivatives[0].points) if step.derivatives else 1
    coef = step.derivatives[0].coef if step.derivatives and step.derivatives[0].scaling == "linear" else 0.0
    return [step.prediction, step.order, npts, coef, step.corrector is not None]


def _features(s: SolverSchedule, nfe: int, ns, t_start, t_end_pos) -> np.ndarray:
    """Fixed-length features for the surrogate: AFS flag, grid coordinates, per-step decisions."""
    n_max = nfe + 1
    f = [float(s.afs != "none"), float(s.num_steps)]
    inner = _u_of_t(ns, s.grid[1:-1], t_start, t_end_pos) if s.num_steps > 1 else np.zeros(0)
    f += list(np.pad(inner, (0, n_max - 1 - len(inner)), constant_values=1.0))
    for i in range(n_max):
        if i < s.num_steps:
            p, o, k, c, corr = _step_genes(s.steps[i])
            f += [float(p == "data"), o / MAX_ORDER, k / MAX_ORDER, c, float(corr)]
        else:
            f += [0.0] * 5
    return np.asarray(f, dtype=np.float64)


def _key(s: SolverSchedule) -> str:
    return json.dumps({"g": [round(float(v), 6) for v in s.grid], "s": [x.to_dict() for x in s.steps], "a": s.afs})
