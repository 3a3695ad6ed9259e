"""DPM-Solver-v3 (Zheng, Lu, Chen, Zhu; NeurIPS 2023; arXiv 2310.13268): multistep predictor-corrector
with empirical model statistics (EMS).

Notation (paper sec. 3): lambda = log(alpha / sigma); l, s, b are per-element functions of lambda (the
EMS, see :mod:`fastsample.ems`), L and S antiderivatives of l and s. With the rescaled data prediction
f = (sigma eps - l x) / alpha and, for a step starting at lambda_s,

    g(r) = exp(-(S(r) - S_s)) f(r) - B(r),   B(r) = int_{lambda_s}^r exp(-(S(u) - S_s)) b(u) du,
    E(r) = exp((L + S)(r) - (L + S)_s),

the exact solution of the probability-flow ODE from lambda_s to lambda_t is

    x_t = alpha_t exp(-(L_t - L_s)) [ x_s / alpha_s - int_{lambda_s}^{lambda_t} E(r) (g(r) + B(r)) dr ].

The predictor of order p replaces g by its Taylor polynomial of degree p - 1 at lambda_s, with the
derivatives estimated from the last p evaluations (the exact Taylor system, or Newton divided differences
for the "pseudo-order" variant, paper sec. 3.3). The corrector redoes the step s -> t once the model has
been evaluated at t (no extra model call, UniC-style): the corrected state replaces x_t before the next
predictor, while f at t stays the one computed from the model at the uncorrected state. The
half-corrector applies it only where t > 0.5.

Everything is linear in (x_s, eps_j, x0_j), since f_j = (1 - l_j) (sigma_j / alpha_j) eps_j - l_j x0_j, so a
step is x_next = a * x_ref + sum_j (w_eps_j * eps_j + w_x0_j * x0_j) + c with per-element float64
coefficients computed once per grid (:class:`ElementwisePlan`). With no statistics (l = 1, s = b = 0)
the solver is the data-prediction exponential integrator: DDIM at order 1, DPM-Solver++(2M) with exact
Taylor weights (diffusers' ``solver_type="heun"``) at order 2, 3M at order 3.

The statistics are first shrunk by their standard errors toward l = 1, s = b = 0 and bounded
(:func:`regularize`), so that noisy or wrong statistics degrade toward DPM-Solver++ and cannot make it diverge.
They are piecewise linear in lambda between their grid points (L and S then piecewise quadratic,
exactly integrated); the remaining integrals use Gauss-Legendre quadrature on sub-intervals that never
straddle a statistics grid point, accurate to float64 round-off. A step with an infinite end (t = 0, or a
flow's t = 1 where alpha = 0) is the statistics-free first-order step x' = (sigma'/sigma) x +
alpha' (1 - e^{-h}) x0, i.e. x0-hat at t = 0.

The package splits along the jobs: :mod:`.statistics` (the statistics as the solver uses them: shrunk,
bounded, validated range), :mod:`.integrals` (piecewise-linear statistics, the per-step integrals and the
derivative estimates), :mod:`.solver` (the schedule of orders and the plan); the step kernel with per-element
coefficients and a corrector is :class:`fastsample.solvers.elementwise.ElementwisePlan`.
"""

from ..elementwise import ElementwisePlan, elementwise_step
from .integrals import LinearStats, derivative_weights
from .solver import DPMSolverV3, StatisticsResolutionError, preset
from .statistics import S_RANGE, regularize, shrink, validated_start

__all__ = [
    "DPMSolverV3",
    "ElementwisePlan",
    "LinearStats",
    "elementwise_step",
    "derivative_weights",
    "preset",
    "shrink",
    "regularize",
    "validated_start",
    "S_RANGE",
    "StatisticsResolutionError",
]
