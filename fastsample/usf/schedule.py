"""Solver schedules: one USF solver strategy per step, as a versioned JSON file.

A solver schedule (Liu et al., "A Unified Sampling Framework for Solver Searching of Diffusion
Probabilistic Models", ICLR 2024, arXiv 2312.07243) fixes, for each step i from grid point t_i to
t_{i+1}:

- ``prediction``: ``"data"`` (x0, the DPM-Solver++ form) or ``"noise"`` (eps, the DPM-Solver form);
- ``order``: the number of Taylor terms of the prediction in lambda (1 = DDIM);
- ``derivatives``: for derivative k = 1 .. order-1, which earlier grid points estimate it by finite
  differences (``points``, as lags: lag j is grid point i - j) and how the Taylor term is scaled
  (``scaling``: ``none``, ``linear`` (1 + coef h), ``exp`` (1 + coef (e^{+-h} - 1)), ``midpoint`` /
  ``bh2`` (coefficient h/2 times the zeroth-order one: DPM-Solver++(2M), UniPC-bh2), ``bh1`` (h^2/2,
  UniPC-bh1); ``factor``: a constant multiplier). Fewer points than ``order - 1`` is USF's
  low-order estimation;
- ``start``: lag of the point the expansion starts from (0: multistep; > 0: singlestep-like);
- ``corrector``: ``null`` or a UniC-type corrector (Zhao et al., arXiv 2302.04867) re-doing the step
  from the same start with the same prediction once the model has been evaluated at t_{i+1}
  (lag -1 names that point); it costs no model call, except after the last step.

plus the time ``grid`` (n + 1 values in ``grid_unit``: ``t``, ``lambda``, ``sigma_ve`` or diffusers'
``timestep``), the analytical first step (``afs``: ``"none"`` or ``"zero_x0"``, which replaces the
first model call by eps = x_T / sigma_T), and ``metadata`` (model, guidance scale, nfe, provenance).

The converters :func:`ddim`, :func:`dpmsolver_multistep`, :func:`unipc` and :func:`deis_logrho`
express the diffusers schedulers as schedules (the executor reproduces them to float32 round-off);
:func:`from_diffusers` reads a configured diffusers scheduler; :func:`from_usf` imports the ``.pth``
decision files that the USF authors published (download them yourself; they are not shipped).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace

import numpy as np

from .._io import atomic_write

__all__ = [
    "FORMAT",
    "VERSION",
    "Derivative",
    "Corrector",
    "Step",
    "SolverSchedule",
    "ScheduleError",
    "load",
    "ddim",
    "dpmsolver_multistep",
    "unipc",
    "deis_logrho",
    "from_diffusers",
    "from_usf",
    "BUILTINS",
    "builtin",
]

FORMAT = "fastsample.solver_schedule"
VERSION = 1
PREDICTIONS = ("data", "noise")
SCALINGS = ("none", "linear", "exp", "midpoint", "bh1", "bh2")
GRID_UNITS = ("t", "lambda", "sigma_ve", "timestep")
AFS = ("none", "zero_x0")
MAX_ORDER = 6


class ScheduleError(ValueError):
    """A solver schedule that is malformed or cannot run (message says where and why)."""


@dataclass(frozen=True)
class Derivative:
    """Finite-difference estimate of one Taylor derivative: ``points`` (lags), ``scaling``, ``coef``, ``factor``."""

    points: tuple[int, ...]
    scaling: str = "none"
    coef: float = 0.0
    factor: float = 1.0

    def to_dict(self) -> dict:
        d = {"points": list(self.points)}
        if self.scaling != "none":
            d["scaling"] = self.scaling
        if self.scaling in ("linear", "exp"):
            d["coef"] = float(self.coef)
        if self.factor != 1.0:
            d["factor"] = float(self.factor)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Derivative:
        _check_keys(d, {"points", "scaling", "coef", "factor"}, where)
        if "points" not in d or not isinstance(d["points"], (list, tuple)):
            raise ScheduleError(f"{where}: 'points' must be a list of lags")
        return cls(
            tuple(int(p) for p in d["points"]),
            str(d.get("scaling", "none")),
            float(d.get("coef", 0.0)),
            float(d.get("factor", 1.0)),
        )


@dataclass(frozen=True)
class Corrector:
    """A UniC-type corrector: Taylor ``order`` with ``derivatives`` that may use lag -1 (the step's end point)."""

    order: int
    derivatives: tuple[Derivative, ...]

    def to_dict(self) -> dict:
        return {"order": self.order, "derivatives": [d.to_dict() for d in self.derivatives]}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Corrector:
        _check_keys(d, {"order", "derivatives"}, where)
        ders = d.get("derivatives", [])
        return cls(
            int(d["order"]), tuple(Derivative.from_dict(x, f"{where}.derivatives[{k}]") for k, x in enumerate(ders))
        )


@dataclass(frozen=True)
class Step:
    """One step's decisions (see the module docstring)."""

    prediction: str
    order: int
    derivatives: tuple[Derivative, ...] = ()
    start: int = 0
    corrector: Corrector | None = None

    def to_dict(self) -> dict:
        d = {"prediction": self.prediction, "order": self.order}
        if self.derivatives:
            d["derivatives"] = [x.to_dict() for x in self.derivatives]
        if self.start:
            d["start"] = self.start
        d["corrector"] = None if self.corrector is None else self.corrector.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Step:
        _check_keys(d, {"prediction", "order", "derivatives", "start", "corrector"}, where)
        for key in ("prediction", "order"):
            if key not in d:
                raise ScheduleError(f"{where}: missing {key!r}")
        ders = tuple(
            Derivative.from_dict(x, f"{where}.derivatives[{k}]") for k, x in enumerate(d.get("derivatives", []))
        )
        corr = d.get("corrector")
        corr = None if corr is None else Corrector.from_dict(corr, f"{where}.corrector")
        return cls(str(d["prediction"]), int(d["order"]), ders, int(d.get("start", 0)), corr)


def _check_keys(d, allowed, where):
    if not isinstance(d, dict):
        raise ScheduleError(f"{where}: expected an object, got {type(d).__name__}")
    extra = set(d) - set(allowed)
    if extra:
        raise ScheduleError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")


def _check_derivatives(ders, order, step, where, corrector):
    if len(ders) != order - 1:
        raise ScheduleError(f"{where}: order {order} needs {order - 1} derivative entries, got {len(ders)}")
    lo = -1 if corrector else 0
    for k, der in enumerate(ders, start=1):
        w = f"{where}.derivatives[{k - 1}]"
        if der.scaling not in SCALINGS:
            raise ScheduleError(f"{w}: unknown scaling {der.scaling!r}; allowed: {', '.join(SCALINGS)}")
        if der.scaling in ("midpoint", "bh1", "bh2") and k != 1:
            raise ScheduleError(f"{w}: scaling {der.scaling!r} is defined for the first derivative only")
        if not (math.isfinite(der.coef) and math.isfinite(der.factor)):
            raise ScheduleError(f"{w}: coef and factor must be finite")
        pts = der.points
        if len(set(pts)) != len(pts):
            raise ScheduleError(f"{w}: repeated points {list(pts)}")
        if len(pts) < k:
            raise ScheduleError(f"{w}: derivative {k} needs at least {k} points besides the start, got {list(pts)}")
        for j in pts:
            if j < lo or j == step.start:
                raise ScheduleError(f"{w}: lag {j} is not usable (the start has lag {step.start}; lags >= {lo})")
        if corrector and k == len(ders) and -1 not in pts and not any(-1 in d.points for d in ders):
            raise ScheduleError(f"{where}: a corrector must use the new point (lag -1)")


@dataclass(frozen=True)
class SolverSchedule:
    """A validated solver schedule; ``grid`` may be None for grid-free schedules (the converters)."""

    steps: tuple[Step, ...]
    grid: np.ndarray | None = None
    grid_unit: str = "t"
    afs: str = "none"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        if self.grid is not None:
            object.__setattr__(self, "grid", np.asarray(self.grid, dtype=np.float64))
        self.validate()

    # --- validation -------------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def nfe(self) -> int:
        """Model calls: one per grid point before the last, minus the AFS, plus one for a final corrector."""
        return self.num_steps - (self.afs != "none") + (self.steps[-1].corrector is not None)

    @property
    def order(self) -> int:
        return max(
            max(s.order for s in self.steps), max((s.corrector.order for s in self.steps if s.corrector), default=1)
        )

    def validate(self) -> None:
        n = len(self.steps)
        if n < 1:
            raise ScheduleError("a schedule needs at least one step")
        if self.afs not in AFS:
            raise ScheduleError(f"unknown afs {self.afs!r}; allowed: {', '.join(AFS)}")
        if self.grid_unit not in GRID_UNITS:
            raise ScheduleError(f"unknown grid_unit {self.grid_unit!r}; allowed: {', '.join(GRID_UNITS)}")
        if self.grid is not None:
            g = self.grid
            if g.ndim != 1 or len(g) != n + 1:
                raise ScheduleError(f"the grid must have {n + 1} values for {n} steps, got shape {g.shape}")
            d = np.diff(g)
            if self.grid_unit == "lambda":
                if np.any(np.isnan(g)) or np.any(d <= 0):
                    raise ScheduleError(f"a lambda grid must be strictly increasing, got {g.tolist()}")
            elif not np.all(np.isfinite(g)) or np.any(d >= 0) or g[-1] < (-1 if self.grid_unit == "timestep" else 0):
                raise ScheduleError(
                    f"a {self.grid_unit} grid must be finite, strictly decreasing and >= 0, got {g.tolist()}"
                )
        for i, step in enumerate(self.steps):
            where = f"steps[{i}]"
            if step.prediction not in PREDICTIONS:
                hint = (
                    " (DPM-Solver-v3 predictions need EMS statistics and are not in format v1)"
                    if "v3" in step.prediction
                    else ""
                )
                raise ScheduleError(f"{where}: unknown prediction {step.prediction!r}{hint}; allowed: data, noise")
            if not 1 <= step.order <= MAX_ORDER:
                raise ScheduleError(f"{where}: order must be 1..{MAX_ORDER}, got {step.order}")
            if not 0 <= step.start <= i:
                raise ScheduleError(f"{where}: start lag {step.start} reaches before the first grid point")
            _check_derivatives(step.derivatives, step.order, step, where, corrector=False)
            for der in step.derivatives:
                if max(der.points) > i:
                    raise ScheduleError(
                        f"{where}: order {step.order} uses lag {max(der.points)} but only {i} earlier grid point(s) "
                        f"exist at step {i}"
                    )
            if step.corrector is not None:
                c = step.corrector
                if not 2 <= c.order <= MAX_ORDER:
                    raise ScheduleError(f"{where}.corrector: order must be 2..{MAX_ORDER}, got {c.order}")
                _check_derivatives(c.derivatives, c.order, step, f"{where}.corrector", corrector=True)
                for der in c.derivatives:
                    if max(der.points) > i:
                        raise ScheduleError(
                            f"{where}.corrector: lag {max(der.points)} reaches before the first grid point"
                        )
            if i == 0 and self.afs != "none" and (step.order != 1 or step.start != 0):
                raise ScheduleError("steps[0]: the analytical first step needs order 1 from lag 0")
        if self.grid is not None and self.steps[-1].corrector is not None:
            end = self.grid[-1]
            if (self.grid_unit == "lambda" and np.isposinf(end)) or (self.grid_unit in ("t", "sigma_ve") and end <= 0):
                raise ScheduleError(
                    "a corrector on the last step evaluates the model at the end point, which must be > 0"
                )
        declared = self.metadata.get("nfe") if isinstance(self.metadata, dict) else None
        if declared is not None and int(declared) != self.nfe:
            raise ScheduleError(f"metadata.nfe = {declared} but the steps need {self.nfe} model evaluations")

    def check_nfe(self, num_inference_steps: int) -> None:
        """ValueError unless ``num_inference_steps`` equals this schedule's NFE (no silent fallback)."""
        if int(num_inference_steps) != self.nfe:
            raise ScheduleError(
                f"the schedule makes {self.nfe} model evaluations but num_inference_steps={num_inference_steps}; "
                f"pass num_inference_steps={self.nfe} or use a schedule searched for {num_inference_steps}"
            )

    # --- time grid --------------------------------------------------------------------------

    def times(self, noise_schedule) -> np.ndarray:
        """The grid as float64 continuous times t for ``noise_schedule``."""
        if self.grid is None:
            raise ScheduleError("this schedule has no time grid; pass one to the executor")
        g = self.grid
        if self.grid_unit == "t":
            return g.copy()
        if self.grid_unit == "lambda":
            return np.asarray(noise_schedule.t_of_lambda(g), dtype=np.float64)
        if self.grid_unit == "sigma_ve":
            return np.asarray(noise_schedule.t_of_sigma_ve(g), dtype=np.float64)
        return np.asarray(noise_schedule.t_of_timestep(g), dtype=np.float64)

    def with_grid(self, grid, unit: str = "t") -> SolverSchedule:
        return replace(self, grid=np.asarray(grid, dtype=np.float64), grid_unit=unit)

    def with_metadata(self, **entries) -> SolverSchedule:
        return replace(self, metadata={**self.metadata, **entries})

    def tail(self, j: int) -> SolverSchedule:
        """The schedule restarted at grid point j (img2img): points before j are unavailable, orders drop."""
        if j == 0:
            return self
        steps = []
        for i, s in enumerate(self.steps[j:]):
            steps.append(_truncate(s, i))
        grid = None if self.grid is None else self.grid[j:]
        return SolverSchedule(
            tuple(steps), grid, self.grid_unit, "none", {k: v for k, v in self.metadata.items() if k != "nfe"}
        )

    # --- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "version": VERSION}
        if self.grid is not None:
            d["grid"] = {"unit": self.grid_unit, "values": [float(v) for v in self.grid]}
        d["afs"] = self.afs
        d["nfe"] = self.nfe
        d["steps"] = [s.to_dict() for s in self.steps]
        d["metadata"] = _jsonable(self.metadata)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SolverSchedule:
        if not isinstance(d, dict):
            raise ScheduleError("a solver schedule file must hold a JSON object")
        if d.get("format") != FORMAT:
            raise ScheduleError(f"not a solver schedule: 'format' is {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("version") != VERSION:
            raise ScheduleError(
                f"unsupported solver schedule version {d.get('version')!r}; this library reads version {VERSION}"
            )
        _check_keys(d, {"format", "version", "grid", "afs", "nfe", "steps", "metadata"}, "schedule")
        steps = tuple(Step.from_dict(s, f"steps[{i}]") for i, s in enumerate(d.get("steps", [])))
        grid, unit = None, "t"
        if d.get("grid") is not None:
            _check_keys(d["grid"], {"unit", "values"}, "grid")
            grid, unit = np.asarray(d["grid"]["values"], dtype=np.float64), str(d["grid"].get("unit", "t"))
        out = cls(steps, grid, unit, str(d.get("afs", "none")), dict(d.get("metadata") or {}))
        if "nfe" in d and int(d["nfe"]) != out.nfe:
            raise ScheduleError(f"'nfe' is {d['nfe']} but the steps need {out.nfe} model evaluations")
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path) -> None:
        """Write atomically (temporary file, then rename; see :mod:`fastsample._io`)."""
        atomic_write(path, self.to_json() + "\n")


def load(path) -> SolverSchedule:
    """Read and validate a solver schedule file (ScheduleError with the reason otherwise)."""
    with open(path) as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as e:
            raise ScheduleError(f"{path}: not valid JSON ({e})") from e
    return SolverSchedule.from_dict(d)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _truncate(step: Step, i: int) -> Step:
    """``step`` at new index i with lags > i removed; the order drops to what the remaining points support."""
    order = step.order
    ders = []
    for k, d in enumerate(step.derivatives, start=1):
        pts = tuple(p for p in d.points if p <= i)
        if len(pts) < k:
            order = k
            break
        ders.append(replace(d, points=pts))
    corr = step.corrector
    if corr is not None:
        cd = []
        for k, d in enumerate(corr.derivatives, start=1):
            pts = tuple(p for p in d.points if p <= i)
            if len(pts) < k:
                break
            cd.append(replace(d, points=pts))
        corr = Corrector(len(cd) + 1, tuple(cd)) if cd and any(-1 in d.points for d in cd) else None
    return Step(step.prediction, order, tuple(ders[: order - 1]), min(step.start, i), corr)


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
) -> SolverSchedule:
    """DPM-Solver++(2M/3M) (``prediction="data"``, Lu et al., arXiv 2211.01095) or DPM-Solver (``"noise"``).

    Reproduces diffusers' ``DPMSolverMultistepScheduler`` order rules; ``midpoint`` scales the first
    derivative term to h/2 times the zeroth-order one, ``heun`` is the exact Taylor term. Diffusers'
    third-order update weights its second-derivative estimate by 1/2 (``factor`` 0.5).
    """
    if order not in (1, 2, 3) or solver_type not in ("midpoint", "heun"):
        raise ValueError("DPM-Solver multistep: order 1-3, solver_type 'midpoint' or 'heun'")
    n, steps = num_steps, []
    for i in range(n):
        last = i == n - 1 and (euler_at_final or (lower_order_final and n < 15) or final_zero)
        second = i == n - 2 and lower_order_final and n < 15
        avail = _warmup(i, first_usable)
        p = 1 if (order == 1 or avail < 1 or last) else 2 if (order == 2 or avail < 2 or second) else 3
        if p == 2:
            steps.append(_taylor_step(prediction, 2, "midpoint" if solver_type == "midpoint" else "none"))
        else:
            steps.append(_taylor_step(prediction, p, factors=(1.0, 0.5)))
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
        p = min(order, n - i) if lower_order_final else order
        p = min(p, _warmup(i, first_usable) + 1)
        pred = _taylor_step(prediction, p, variant if p == 2 else "none")
        corr = None
        if i < n - 1 and i not in disable_corrector and (first_usable or i > 0):
            pts = (-1,) + _lags(p - 1)
            scaling = variant if p == 1 else "none"
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
        last = i == n - 1 and lower_order_final and n < 15
        second = i == n - 2 and lower_order_final and n < 15
        avail = _warmup(i, first_usable)
        p = 1 if (order == 1 or avail < 1 or last) else 2 if (order == 2 or avail < 2 or second) else 3
        steps.append(_taylor_step("noise", p))
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
    from ..schedules import DiscreteVP

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


# --- importer for the schedule files published with USF -------------------------------------------

_USF_RELAX = {
    None: ("none", 0.0),
    "no_relaxation": ("none", 0.0),
    "dpmsolver-2": ("midpoint", 0.0),
    "unipc-bh2": ("midpoint", 0.0),
    "unipc-bh1": ("bh1", 0.0),
    "0.5exp": ("exp", 0.5),
    "-0.5exp": ("exp", -0.5),
}


def _usf_default_points(start_list: int, k: int, corrector: bool, n_avail: int) -> list[int]:
    """USF's default active points (list offsets): the new point for a corrector, then later, then earlier ones."""
    pts = [-1] if corrector else []
    right, left = start_list + 1, start_list - 1
    while len(pts) < k and right <= -1 and right not in pts:
        pts.append(right)
        right += 1
    while len(pts) < k and left >= -n_avail:
        if left not in pts:
            pts.append(left)
        left -= 1
    return pts


def _usf_derivatives(dtypes, order, start_list, corrector, n_avail, where, relax_first=True):
    ders = []
    for k in range(1, order):
        d = dtypes[k - 1]
        est = str(d.get("estimate", f"Difference_{order - 1}"))
        if not est.startswith("Difference_"):
            raise ScheduleError(f"{where}: derivative estimate {est!r} is not supported")
        kk = int(est.split("_")[1])
        pts = d.get("active_points")
        pts = _usf_default_points(start_list, kk, corrector, n_avail) if pts is None else list(pts)
        if len(pts) != kk:
            raise ScheduleError(f"{where}: {est} with {len(pts)} active points")
        shift = 2 if corrector else 1
        lags = tuple(-(p + shift) for p in pts)  # list offset -1 is the current point (or the new one in a corrector)
        scaling, coef = "none", 0.0
        if k == 1 and relax_first:
            r = d.get("relaxation")
            if r == "linear":
                scaling, coef = "linear", float(d.get("relaxation_coefficient", 0.0))
            elif r in _USF_RELAX:
                scaling, coef = _USF_RELAX[r]
            else:
                raise ScheduleError(f"{where}: unknown relaxation {r!r}")
        ders.append(Derivative(lags, scaling, coef))
    return tuple(ders)


def from_usf(
    source, unit: str = "auto", substitute: dict | None = None, metadata: dict | None = None
) -> SolverSchedule:
    """Import a decision file published with USF (a ``.pth`` path, or its loaded dict).

    ``unit``: the unit of USF's ``timesteps`` (``"sigma_ve"`` for their EDM code base, ``"t"`` for the
    VP ones; ``"auto"``: sigma_ve if the first value exceeds 1). Features this library does not run
    raise ScheduleError unless ``substitute`` names an explicit replacement:
    ``{"dpmsolver_v3_prediction": "data" | "noise", "average_x0": "zero_x0", "skip_coefficients": "ignore"}``.
    """
    substitute = dict(substitute or {})
    name = None
    if not isinstance(source, dict):
        import torch

        name = os.path.basename(os.fspath(source))
        source = torch.load(source, map_location="cpu", weights_only=True)
    d = source
    ts = np.asarray(
        d["timesteps"].double().numpy() if hasattr(d["timesteps"], "double") else d["timesteps"], dtype=np.float64
    )
    if unit == "auto":
        unit = "sigma_ve" if ts[0] > 1.0 + 1e-6 else "t"
    n = len(ts) - 1
    used = {}
    afs = d.get("afs", "no_afs")
    if afs == "average_x0":
        if substitute.get("average_x0") != "zero_x0":
            raise ScheduleError(
                "this USF schedule uses afs='average_x0' (the mean of the training images), which a linear "
                "executor cannot run; pass substitute={'average_x0': 'zero_x0'} to use x0 = 0 instead"
            )
        used["average_x0"] = "zero_x0"
        afs = "zero_x0"
    afs = {"no_afs": "none", "zero_x0": "zero_x0"}.get(afs)
    if afs is None:
        raise ScheduleError(f"unknown USF afs {d.get('afs')!r}")
    skip = d.get("skip_coefficients")
    if skip is not None and not np.allclose(np.asarray(skip, dtype=np.float64), 1.0):
        if substitute.get("skip_coefficients") != "ignore":
            raise ScheduleError(
                "this USF schedule rescales the U-Net skip connections (model-specific); pass "
                "substitute={'skip_coefficients': 'ignore'} to run it without"
            )
        used["skip_coefficients"] = "ignore"
    steps = []
    for i in range(n):
        where = f"USF step {i}"
        ptype = d["prediction_types"][i]
        if ptype == "dpmsolver_v3_prediction":
            sub = substitute.get("dpmsolver_v3_prediction")
            if sub not in PREDICTIONS:
                raise ScheduleError(
                    f"{where} uses the DPM-Solver-v3 prediction, which needs that model's EMS statistics; pass "
                    "substitute={'dpmsolver_v3_prediction': 'data'} (or 'noise') to run it with that prediction"
                )
            used["dpmsolver_v3_prediction"] = sub
            pred = sub
        else:
            pred = {"noise_prediction": "noise", "data_prediction": "data"}.get(ptype)
            if pred is None:
                raise ScheduleError(f"{where}: unknown prediction type {ptype!r}")
        order = int(d["orders"][i])
        start_list = int(d["start_points"][i])
        ders = _usf_derivatives(d["derivative_types"][i], order, start_list, False, i + 1, where)
        corr = None
        ct = d["corrector_types"][i]
        if ct["type"] == "pseudo":
            if int(ct["start_point"]) != start_list - 1:
                raise ScheduleError(f"{where}: a corrector must start where its predictor starts")
            corr = Corrector(
                int(ct["taylor_order"]),
                _usf_derivatives(
                    ct["derivative_type"], int(ct["taylor_order"]), start_list - 1, True, i + 2, where, False
                ),
            )
        elif ct["type"] != "no_corrector":
            raise ScheduleError(f"{where}: corrector type {ct['type']!r} is not supported (only 'pseudo')")
        steps.append(Step(pred, order, ders, -start_list - 1, corr))
    meta = {
        "provenance": {
            "method": "imported",
            "source": "USF (Liu et al., arXiv 2312.07243) published decision file",
            "file": name,
            "substitutions": used,
        }
    }
    meta.update(metadata or {})
    return SolverSchedule(tuple(steps), ts, unit, afs, meta)
