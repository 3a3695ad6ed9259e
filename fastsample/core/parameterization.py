"""The one place that reads ``prediction_type``: model output -> (x0-hat, eps-hat).

With x_t = alpha x0 + sigma eps:
- ``epsilon``: output is eps.
- ``sample``: output is x0.
- ``v_prediction``: output is v = alpha eps - sigma x0 (Salimans & Ho, arXiv 2202.00512).
- ``flow_prediction`` (alias ``flow``, ``velocity``): output is u = eps - x0, defined for
  schedules with alpha + sigma = 1 (Liu et al., arXiv 2209.03003; diffusers' convention).
  Other published velocity conventions are mapped onto this one by the flow adapters.

All arithmetic runs in float32 (or float64 if the input is float64); shapes are unchanged.
"""

from __future__ import annotations

import torch

__all__ = ["PREDICTION_TYPES", "check_prediction_type", "to_x0_eps", "from_x0_eps"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
_ALIASES = {"flow": "flow_prediction", "velocity": "flow_prediction", "eps": "epsilon", "x0": "sample"}


def check_prediction_type(prediction_type: str, is_flow: bool | None = None) -> str:
    """Canonical name of ``prediction_type``; ValueError naming the allowed values otherwise."""
    p = _ALIASES.get(prediction_type, prediction_type)
    if p not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")
    if p == "flow_prediction" and is_flow is False:
        raise ValueError(
            "prediction_type 'flow_prediction' needs a flow schedule (alpha + sigma = 1); "
            "set use_flow_sigmas=True or use a flow scheduler"
        )
    return p


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def to_x0_eps(model_output: torch.Tensor, x: torch.Tensor, alpha: float, sigma: float, prediction_type: str):
    """Return (x0_hat, eps_hat) in the working dtype (float32, or float64 for float64 input).

    ``alpha`` and ``sigma`` are Python floats (no device synchronisation). At sigma = 0 the
    eps-hat of an epsilon model is the model output; x0-hat is x / alpha.
    """
    dt = _work_dtype(x)
    m = model_output.to(dt)
    xs = x.to(dt)
    if prediction_type == "epsilon":
        return (xs - sigma * m) / alpha, m
    if prediction_type == "sample":
        eps = (xs - alpha * m) / sigma if sigma > 0 else torch.zeros_like(xs)
        return m, eps
    if prediction_type == "v_prediction":
        # for VP (alpha^2 + sigma^2 = 1): x0 = alpha x - sigma v, eps = sigma x + alpha v
        r = alpha * alpha + sigma * sigma
        return (alpha * xs - sigma * m) / r, (sigma * xs + alpha * m) / r
    if prediction_type == "flow_prediction":
        return xs - sigma * m, xs + alpha * m
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha: float, sigma: float, prediction_type: str):
    """Inverse of :func:`to_x0_eps`: the model output a perfect model of this type would give."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction_type == "flow_prediction":
        return eps - x0
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")
