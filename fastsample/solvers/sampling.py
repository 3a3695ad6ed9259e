"""A minimal sampling loop over a denoiser: the reference use of a solver's :class:`Plan`.

``model_fn(x, t)`` takes a tensor x of any shape and a float time t in (0, 1] and returns the
model output named by ``prediction_type``. The Diffusers adapter runs the same plan one
``step()`` at a time; both share :func:`observe`, so their results agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.parameterization import check_prediction_type, to_x0_eps
from .base import History, Plan

__all__ = ["sample", "observe", "push", "NonFiniteModelOutput"]


class NonFiniteModelOutput(FloatingPointError, ValueError):
    """The model returned NaN or Inf at a sampling step."""


def observe(model_output, x, t, schedule, prediction_type):
    """(x0_hat, eps_hat) at time t from a model output; float32 or float64 working dtype."""
    return to_x0_eps(model_output, x, float(schedule.alpha(t)), float(schedule.sigma(t)), prediction_type)


def push(history: History | None, x, x0, eps, keep: int) -> History:
    """A new history with (x, x0, eps) appended, keeping the last ``keep`` entries."""
    if history is None:
        return History((x,), (x0,), (eps,))
    return History(
        tuple(history.x[-(keep - 1) :]) + (x,) if keep > 1 else (x,),
        tuple(history.x0[-(keep - 1) :]) + (x0,) if keep > 1 else (x0,),
        tuple(history.eps[-(keep - 1) :]) + (eps,) if keep > 1 else (eps,),
    )


@torch.no_grad()
def sample(
    model_fn: Callable,
    x: torch.Tensor,
    schedule,
    solver,
    grid,
    prediction_type: str = "epsilon",
    steering=None,
    check_finite: bool = True,
    callback=None,
) -> torch.Tensor:
    """Integrate from ``grid[0]`` to ``grid[-1]`` starting at x; returns x(grid[-1]) in x's dtype.

    ``steering``, if given, is called as ``steering(k, t, x, x0, eps) -> (x, x0, eps)`` after each
    model evaluation, before the solver step (FlowChef, thresholding). ``callback``, if given, is
    called as ``callback(k, t, x, model_output)`` after evaluation k (teacher trajectories record it).
    """
    ptype = check_prediction_type(prediction_type, schedule.is_flow)
    plan: Plan = solver.plan(schedule, grid)
    keep = plan.history_len
    dtype = x.dtype
    history = None
    for k, t in enumerate(plan.eval_times):
        out = model_fn(x, float(t))
        if check_finite and not torch.isfinite(out).all():
            raise NonFiniteModelOutput(f"model output is NaN or Inf at step {k} (t={float(t):.6g})")
        if callback is not None:
            callback(k, float(t), x, out)
        x0, eps = observe(out, x, t, schedule, ptype)
        xw = x.to(x0.dtype)
        if steering is not None:
            xw, x0, eps = steering(k, float(t), xw, x0, eps)
        history = plan.correct(k, push(history, xw, x0, eps, keep))
        x = plan.step(k, history).to(dtype)
    return x
