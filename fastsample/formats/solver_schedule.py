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

Diffusers' multistep solvers as schedules: :mod:`fastsample.solvers.usf.builtins`; the importer of the
``.pth`` files the USF authors published: :mod:`fastsample.formats.usf_pth`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import numpy as np

from .._io import atomic_write
from ..core.grids import check_grid

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
            if self.grid.ndim != 1 or len(self.grid) != n + 1:
                raise ScheduleError(f"the grid must have {n + 1} values for {n} steps, got shape {self.grid.shape}")
            lam = self.grid_unit == "lambda"
            check_grid(
                self.grid, f"a {self.grid_unit} grid", increasing=lam, allow_inf=lam,
                least=None if lam else -1.0 if self.grid_unit == "timestep" else 0.0, error=ScheduleError,
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
    try:
        return SolverSchedule.from_dict(d)
    except ScheduleError as e:
        raise ScheduleError(f"{path}: {e}") from e


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

