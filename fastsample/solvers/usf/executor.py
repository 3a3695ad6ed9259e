"""The USF executor: a :class:`~fastsample.solvers.base.Solver` that turns a solver schedule into a Plan.

Every USF update (Liu et al., arXiv 2312.07243, Sec. 3) is linear in the stored history. From
the start point s to t' with h = lambda_{t'} - lambda_s, the prediction f (x0 for ``data``, eps for
``noise``) is expanded in lambda, f(lambda_s + u) = sum_k f^(k) u^k / k!, and integrated exactly:

    data:  x' = (sigma'/sigma_s) x_s + alpha' sum_k h^{k+1} phi_{k+1}(-h) f^(k)     (DPM-Solver++ form)
    noise: x' = (alpha'/alpha_s) x_s - sigma' sum_k h^{k+1} phi_{k+1}(h) f^(k)      (DPM-Solver form)

with phi_k(z) = sum_j z^j / (j + k)!. Derivative f^(k) is estimated from the points named in the
schedule by solving the Taylor system sum_m (Delta_j)^m / m! d_m = f_j - f_s (USF's estimator), then
scaled (``linear``, ``exp``, ``midpoint``/``bh2``, ``bh1``, ``factor``; see :mod:`.schedule`).

A corrector re-does the step from the same start with the same prediction, so the corrected state
is the predicted one plus a combination of predictions: it is folded into the next step's weights
and :class:`~fastsample.solvers.base.Plan` needs no extension. With the analytical first step
(``afs="zero_x0"``) the first state is x_1 = (sigma_1 / sigma_0) x_T: the plan starts at t_1 and
``plan.info["x_scale"]`` is that factor (use :func:`run_schedule`, or ``S3Scheduler``, which apply it).

All coefficients are float64 numpy, computed once per grid.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from ...core.grids import check_grid
from ...formats.solver_schedule import ScheduleError, SolverSchedule
from ..base import Plan, Solver
from ..sampling import sample as _sample

__all__ = ["USFSolver", "run_schedule", "phi", "taylor_coefficients"]


def phi(k: int, z: float) -> float:
    """phi_k(z) = sum_{j>=0} z^j / (j + k)! for k >= 1 (float64; series for |z| < 1, closed form otherwise)."""
    if abs(z) < 1.0:
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(40):
            total += term
            term *= z / (j + k + 1)
        return total
    return (math.exp(z) - sum(z**j / math.factorial(j) for j in range(k))) / z**k


def taylor_coefficients(prediction: str, order: int, h: float, a_s, s_s, a_t, s_t):
    """(a, C): x' = a x_s + sum_k C[k] f^(k), k < order, for one exact step in lambda (float64).

    ``h`` may be +inf (a step into sigma = 0): the noise form stays finite (C[k] = -alpha' sigma_s / alpha_s),
    the data form only for order 1. A start with alpha_s = 0 (t = 1 of a flow) is the data form of order 1.
    """
    if prediction == "data" or a_s == 0:
        a = s_t / s_s
        if math.isinf(h):
            return a, np.array([a_t] + [math.inf] * (order - 1))
        return a, np.array([a_t * h ** (k + 1) * phi(k + 1, -h) for k in range(order)])
    a = a_t / a_s
    if s_t == 0:
        return a, np.full(order, -a_t * s_s / a_s)
    return a, np.array([-s_t * h ** (k + 1) * phi(k + 1, h) for k in range(order)])


def _scale(der, data: bool, h: float, C) -> float:
    """The multiplier of a derivative's Taylor term under its scaling rule (C: the step's Taylor coefficients)."""
    f = der.factor
    if der.scaling == "none" or (der.scaling in ("linear", "exp") and der.coef == 0):
        return f
    hh = -h if data else h
    if der.scaling == "linear":
        return f * (1.0 + der.coef * h)
    if der.scaling == "exp":
        return f * (1.0 + der.coef * math.expm1(hh))
    if der.scaling in ("midpoint", "bh2"):  # first-derivative coefficient (h / 2) C[0]
        return f * 0.5 * h * C[0] / C[1]
    # bh1: first-derivative coefficient (h^2 / 2) alpha' (data) or -(h^2 / 2) sigma' (noise); C[0] = +-(.) h phi_1(hh)
    return f * 0.5 * h * C[0] / (C[1] * phi(1, hh))


def _derivative_weights(lam, s: int, pts, k: int) -> np.ndarray:
    """g with d_k = sum_j g_j (f_j - f_s): USF's estimate from sum_i Delta_j^i / i! d_i = f_j - f_s, i = 1..len(pts)."""
    delta = np.array([lam[q] - lam[s] for q in pts], dtype=np.float64)
    m = len(pts)
    A = np.stack([delta ** (i + 1) / math.factorial(i + 1) for i in range(m)], axis=1)  # A[j, i]
    e = np.zeros(m)
    e[k - 1] = 1.0
    try:
        return np.linalg.solve(A.T, e)
    except np.linalg.LinAlgError as err:
        raise ScheduleError(f"derivative estimate from coincident points {list(pts)}") from err


class _Form(defaultdict):
    """A linear combination of history entries: keys ("x" | "eps" | "x0", evaluation index)."""

    def __init__(self, items=None):
        super().__init__(float)
        if items:
            for key, v in items.items():
                self[key] += v

    def add(self, other, c=1.0):
        for key, v in other.items():
            self[key] += c * v
        return self


class USFSolver(Solver):
    """Executes a :class:`~.schedule.SolverSchedule` (USF, Liu et al., arXiv 2312.07243) as a linear Plan.

    ``plan(schedule, grid)`` takes the float64 t-grid (n + 1 times, n = the schedule's steps); omit
    ``grid`` to use the schedule's own (see :meth:`grid`). ``order`` is the highest Taylor order.
    """

    name = "usf"
    stages = 1

    def __init__(self, schedule: SolverSchedule):
        if not isinstance(schedule, SolverSchedule):
            raise TypeError("USFSolver needs a SolverSchedule")
        self.schedule = schedule
        self.order = schedule.order

    def nfe(self, num_steps: int | None = None, final_zero: bool = False) -> int:
        if num_steps is not None and num_steps != self.schedule.num_steps:
            raise ScheduleError(f"this schedule has {self.schedule.num_steps} steps, not {num_steps}")
        return self.schedule.nfe

    def grid(self, noise_schedule) -> np.ndarray:
        return self.schedule.times(noise_schedule)

    def plan(self, noise_schedule, grid=None) -> Plan:
        return self.prepare(noise_schedule, check_grid(self.grid(noise_schedule) if grid is None else grid))

    def prepare(self, noise_schedule, grid) -> Plan:
        sch, ns = self.schedule, noise_schedule
        n = sch.num_steps
        grid = np.asarray(grid, dtype=np.float64)
        if len(grid) != n + 1:
            raise ScheduleError(f"this schedule has {n} steps and needs a grid of {n + 1} times, got {len(grid)}")
        alpha, sigma = np.asarray(ns.alpha(grid), dtype=np.float64), np.asarray(ns.sigma(grid), dtype=np.float64)
        with np.errstate(divide="ignore"):
            lam = np.log(alpha) - np.log(sigma)
        afs = sch.afs != "none"
        final_corr = sch.steps[-1].corrector is not None
        if final_corr and sigma[-1] == 0:
            raise ScheduleError(
                "a corrector on the last step evaluates the model at the end point, which must have sigma > 0"
            )
        points = [p for p in range(n) if not (afs and p == 0)] + ([n] if final_corr else [])
        if not points:
            raise ScheduleError("this schedule makes no model evaluation")
        ev = {p: e for e, p in enumerate(points)}
        rows: list[_Form] = []
        Y: dict[int, _Form] = {}  # effective state at each grid point (corrected where a corrector ran)

        def pred(kind, q):
            if q in ev:
                return _Form({(kind, ev[q]): 1.0})
            # AFS virtual evaluation at point 0: x0 = 0, eps = x_T / sigma_0
            return _Form() if kind == "x0" else _Form().add(Y[0], 1.0 / sigma[0])

        def taylor(i, order, ders, target, where):
            step = sch.steps[i]
            s = i - step.start
            data = step.prediction == "data" or alpha[s] == 0  # from alpha = 0 only the data form is finite
            kind = "x0" if data else "eps"
            used = {s} | {i - j for d in ders for j in d.points}
            for q in used:
                if not np.isfinite(lam[q]) and q != s:
                    raise ScheduleError(
                        f"{where}: grid point {q} (t={grid[q]:.6g}) has infinite lambda: no derivative estimate"
                    )
            # From alpha = 0 (lambda = -inf) the only finite derivative term is the h -> inf limit of a
            # first derivative from the new point scaled by h / 2 (bh2 / midpoint): UniC's trapezoid at sigma = 1
            limit = len(ders) == 1 and ders[0].scaling in ("bh2", "midpoint") and tuple(ders[0].points) == (-1,)
            if ders and alpha[s] == 0 and not limit:
                raise ScheduleError(
                    f"{where}: a step from alpha = 0 (t = 1 of a flow) must have order 1 and no corrector other "
                    "than the bh2 / midpoint one from the new point"
                )
            h = lam[target] - lam[s]
            a, C = taylor_coefficients(step.prediction, order, h, alpha[s], sigma[s], alpha[target], sigma[target])
            out = _Form().add(pred(kind, s), C[0])
            for k, der in enumerate(ders, start=1):
                if alpha[s] == 0:  # C[1] * (h C[0] / (2 C[1])) * (f_t - f_s) / h
                    out.add(pred(kind, target), 0.5 * der.factor * C[0]).add(pred(kind, s), -0.5 * der.factor * C[0])
                    continue
                w = C[k] * _scale(der, data, h, C)
                g = _derivative_weights(lam, s, [i - j for j in der.points], k)
                for gj, j in zip(g, der.points):
                    out.add(pred(kind, i - j), w * gj)
                out.add(pred(kind, s), -w * g.sum())
            vals = np.array(list(out.values()) + [a])
            if not np.all(np.isfinite(vals)):
                raise ScheduleError(
                    f"{where}: non-finite coefficients (a {step.prediction}-prediction step of order {order} from "
                    f"t={grid[s]:.6g} to t={grid[target]:.6g}); steps into sigma = 0 need order 1 for data "
                    "prediction and h-free scalings"
                )
            return a, s, out

        def reduce(form: _Form) -> _Form:
            while True:
                xs = sorted(k[1] for k in form if k[0] == "x")
                if len(xs) <= 1:
                    return form
                e = xs[-1]
                c = form.pop(("x", e))
                form.add(rows[e - 1], c)

        x_scale = 1.0
        for i in range(n):
            step = sch.steps[i]
            where = f"steps[{i}]"
            if i == 0:
                if afs:
                    # x0 = 0 and eps = x_T / sigma_0 make either first-order form x_1 = (sigma_1 / sigma_0) x_T
                    x_scale = float(sigma[1] / sigma[0])
                    Y[0] = _Form({("x", 0): 1.0 / x_scale})
                else:
                    Y[0] = _Form({("x", 0): 1.0})
            a, s, P = taylor(i, step.order, step.derivatives, i + 1, where)
            nxt = reduce(_Form().add(Y[s], a).add(P))
            if step.corrector is not None:
                _, _, Cc = taylor(i, step.corrector.order, step.corrector.derivatives, i + 1, where + ".corrector")
                delta = _Form().add(Cc).add(P, -1.0)
            else:
                delta = _Form()
            if i + 1 in ev:
                if not (afs and i == 0):
                    rows.append(nxt)
                Y[i + 1] = reduce(_Form({("x", ev[i + 1]): 1.0}).add(delta))
            else:
                rows.append(nxt)
        if final_corr:
            rows.append(Y[n])
        return self._to_plan(rows, points, grid, x_scale)

    def _to_plan(self, rows, points, grid, x_scale) -> Plan:
        nfe = len(points)
        if len(rows) != nfe:
            raise AssertionError(f"internal: {len(rows)} update rows for {nfe} evaluations")
        ref, a = np.zeros(nfe, dtype=np.int64), np.zeros(nfe)
        cols = []
        for k, row in enumerate(rows):
            xs = [key[1] for key, v in row.items() if key[0] == "x"]
            if xs:
                ref[k], a[k] = k - xs[0], row[("x", xs[0])]
            idx = [key[1] for key in row if key[0] != "x"]
            if any(j > k or j < 0 for j in idx + xs):
                raise AssertionError(f"internal: update {k} reads outside the history")
            cols.append(max([k - j for j in idx], default=0) + 1)
        m = max(cols)
        w_eps, w_x0 = np.zeros((nfe, m)), np.zeros((nfe, m))
        for k, row in enumerate(rows):
            for (kind, j), v in row.items():
                if kind == "eps":
                    w_eps[k, k - j] += v
                elif kind == "x0":
                    w_x0[k, k - j] += v
        step_of_eval = np.array([min(p, len(grid) - 2) for p in points], dtype=np.int64)
        return Plan(
            eval_times=grid[np.array(points)].copy(),
            grid=grid,
            step_of_eval=step_of_eval,
            ref=ref,
            a=a,
            w_eps=w_eps,
            w_x0=w_x0,
            order=self.order,
            info={"solver": "usf", "x_scale": x_scale, "afs": self.schedule.afs},
        )

    def __repr__(self) -> str:
        return f"USFSolver(steps={self.schedule.num_steps}, nfe={self.schedule.nfe})"


@torch.no_grad()
def run_schedule(
    model_fn, x: torch.Tensor, noise_schedule, schedule: SolverSchedule, grid=None, prediction_type="epsilon", **kw
):
    """Run ``schedule`` from x = x(grid[0]) (with the AFS scaling) by :func:`fastsample.solvers.sampling.sample`."""
    solver = USFSolver(schedule)
    grid = solver.grid(noise_schedule) if grid is None else np.asarray(grid, dtype=np.float64)
    if schedule.afs != "none":
        x_scale = float(noise_schedule.sigma(grid[1]) / noise_schedule.sigma(grid[0]))
        return _sample(model_fn, x * x_scale, noise_schedule, _Shifted(solver, grid), grid[1:], prediction_type, **kw)
    return _sample(model_fn, x, noise_schedule, solver, grid, prediction_type, **kw)


class _Shifted(Solver):
    """A USF plan with AFS, presented to the generic loop as a plan on grid[1:]."""

    def __init__(self, solver: USFSolver, full_grid):
        self.solver, self.full_grid = solver, full_grid
        self.order = solver.order

    def plan(self, schedule, grid) -> Plan:
        return self.solver.plan(schedule, self.full_grid)
