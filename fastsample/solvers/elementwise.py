"""A plan whose linear update has per-element coefficients, plus an optional UniC-style corrector.

The scalar :class:`~fastsample.solvers.base.Plan` steps with Python-float coefficients, one per evaluation (no
device tensors, no host sync). Solvers whose coefficients vary per element of the sample (DPM-Solver-v3's
empirical model statistics, arXiv 2310.13268) need coefficient tensors, moved to the device once per run, a
constant term and a corrector; :class:`ElementwisePlan` adds those to :class:`Plan` and keeps its
constructor (:meth:`Plan.multistep`), history length and place in the sampling loop (``correct`` then ``step``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .base import History, Plan

__all__ = ["ElementwisePlan", "elementwise_step"]


@dataclass(frozen=True)
class ElementwisePlan(Plan):
    """A :class:`Plan` whose linear update has per-element coefficients, and an optional corrector.

    Predictor after evaluation k:
    x_next = a[k] * x[k] + sum_j (w_eps[k, j] * eps[k - j] + w_x0[k, j] * x0[k - j]) + c[k].
    Corrector at evaluation k (where ``corrects[k]``): the stored state x[k] becomes
    ca[k] * x[k - 1] + sum_j (cw_eps[k, j] * eps[k - j] + cw_x0[k, j] * x0[k - j]) + cc[k].
    Shapes: a, c, ca, cc (nfe, *S); w_* (nfe, m, *S); S is the sample shape without batch, or () when
    the coefficients are the same for every element. All float64 numpy; moved to the device once per run.
    """

    c: np.ndarray | None = None
    corrects: np.ndarray | None = None
    ca: np.ndarray | None = None
    cw_eps: np.ndarray | None = None
    cw_x0: np.ndarray | None = None
    cc: np.ndarray | None = None
    _device: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        n = len(self.eval_times)
        for name in ("step_of_eval", "ref", "corrects"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"ElementwisePlan.{name} must have shape ({n},)")
        for name in ("a", "c", "ca", "cc", "w_eps", "w_x0", "cw_eps", "cw_x0"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"ElementwisePlan.{name} must have {n} rows")
        if np.any(self.eval_times <= 0):
            raise ValueError("a plan may not evaluate the model at t <= 0")

    @property
    def history_len(self) -> int:
        m = max(self.w_eps.shape[1], self.cw_eps.shape[1] if np.any(self.corrects) else 1)
        return max(m, 2 if np.any(self.corrects) else 1)

    def _tensors(self, like: torch.Tensor) -> dict:
        """Coefficients as tensors on ``like``'s device in the working dtype (built once, no host sync)."""
        dt = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (str(like.device), dt)
        if key not in self._device:
            out = {}
            for name in ("a", "w_eps", "w_x0", "c", "ca", "cw_eps", "cw_x0", "cc"):
                t = torch.from_numpy(np.ascontiguousarray(getattr(self, name))).to(dt)
                if like.device.type == "cuda":
                    t = t.pin_memory().to(like.device, non_blocking=True)
                out[name] = t.to(like.device)
            out["active"] = np.any(self.w_eps != 0, axis=tuple(range(2, self.w_eps.ndim))) | np.any(
                self.w_x0 != 0, axis=tuple(range(2, self.w_x0.ndim))
            )
            out["cactive"] = np.any(self.cw_eps != 0, axis=tuple(range(2, self.cw_eps.ndim))) | np.any(
                self.cw_x0 != 0, axis=tuple(range(2, self.cw_x0.ndim))
            )
            self._device[key] = out
        return self._device[key]

    def step(self, k: int, history: History) -> torch.Tensor:
        t = self._tensors(history.eps[-1])
        return elementwise_step(t["a"][k], t["w_eps"][k], t["w_x0"][k], t["c"][k], t["active"][k], 0, history)

    def correct(self, k: int, history: History) -> History:
        if not self.corrects[k]:
            return history
        t = self._tensors(history.eps[-1])
        xk = elementwise_step(t["ca"][k], t["cw_eps"][k], t["cw_x0"][k], t["cc"][k], t["cactive"][k], 1, history)
        return History(tuple(history.x[:-1]) + (xk,), history.x0, history.eps)


def elementwise_step(a, w_eps, w_x0, c, active, ref: int, history: History) -> torch.Tensor:
    """a * x[-1 - ref] + sum_j (w_eps[j] * eps[-1 - j] + w_x0[j] * x0[-1 - j]) + c, broadcasting over the batch.

    Coefficient tensors have the sample shape without batch (or are 0-d); ``active`` is a numpy bool
    (m,) saying which history slots are used. Arithmetic in the predictions' dtype; pure.
    """
    out = history.x[-1 - ref].to(history.eps[-1].dtype) * a + c
    for j in np.flatnonzero(active):
        out = out + w_eps[j] * history.eps[-1 - j] + w_x0[j] * history.x0[-1 - j]
    return out
