"""Importer for the ``.pth`` decision files the USF authors published (Liu et al., arXiv 2312.07243): :func:`from_usf`.

Download them yourself; they are not shipped.
"""

from __future__ import annotations

import os

import numpy as np

from .solver_schedule import PREDICTIONS, Corrector, Derivative, ScheduleError, SolverSchedule, Step

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

