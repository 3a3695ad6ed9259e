"""The integrals of one DPM-Solver-v3 step (arXiv 2310.13268, sec. 3) and the derivative estimates.

The statistics l, s, b are piecewise linear in lambda (:class:`LinearStats`, L and S exact piecewise-quadratic
antiderivatives); the remaining integrals use Gauss-Legendre quadrature on sub-intervals that never straddle a
statistics grid point. Everything float64 numpy, per element (D,).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LinearStats", "b_integral", "step_integrals", "derivative_weights", "GL_NODES"]

GL_NODES = 6  # Gauss-Legendre nodes per sub-interval
_MAX_PIECE = 0.1  # longest quadrature sub-interval in lambda


class LinearStats:
    """l, s, b piecewise linear in lambda on increasing nodes; exact antiderivatives L, S.

    Args:
        lambdas: float64 (K + 1,), strictly increasing.
        l, s, b: (K + 1, D) arrays (D elements, flattened), converted to float64.
    """

    def __init__(self, lambdas, l, s, b):
        self.lam = np.asarray(lambdas, dtype=np.float64)
        self.l, self.s, self.b = (np.asarray(v, dtype=np.float64) for v in (l, s, b))
        if self.lam.ndim != 1 or len(self.lam) < 2 or np.any(np.diff(self.lam) <= 0):
            raise ValueError("statistics lambdas must be a strictly increasing 1-D array of >= 2 points")
        for v in (self.l, self.s, self.b):
            if v.shape[0] != len(self.lam) or v.ndim != 2:
                raise ValueError(f"statistics arrays must have shape ({len(self.lam)}, D), got {v.shape}")
        self.width = np.diff(self.lam)
        w = self.width[:, None]
        self.Lc = np.concatenate([np.zeros_like(self.l[:1]), np.cumsum(0.5 * w * (self.l[1:] + self.l[:-1]), 0)])
        self.Sc = np.concatenate([np.zeros_like(self.s[:1]), np.cumsum(0.5 * w * (self.s[1:] + self.s[:-1]), 0)])
        self.has_b = bool(np.any(self.b != 0))

    @classmethod
    def constant(cls, lo: float, hi: float, dim: int = 1) -> LinearStats:
        """No statistics: l = 1, s = b = 0 on [lo, hi]."""
        lam = np.array([lo, hi], dtype=np.float64)
        return cls(lam, np.ones((2, dim)), np.zeros((2, dim)), np.zeros((2, dim)))

    @property
    def dim(self) -> int:
        return self.l.shape[1]

    def chunk(self, sl: slice) -> LinearStats:
        return LinearStats(self.lam, self.l[:, sl], self.s[:, sl], self.b[:, sl])

    def _cell(self, r):
        r = np.asarray(r, dtype=np.float64)
        i = np.clip(np.searchsorted(self.lam, r, side="right") - 1, 0, len(self.lam) - 2)
        return i, r - self.lam[i]

    def value(self, v, r):
        """Interpolated v at lambdas r: (len(r), D)."""
        i, u = self._cell(r)
        w = (u / self.width[i])[:, None]
        return v[i] * (1 - w) + v[i + 1] * w

    def anti(self, which: str, r):
        """L (``which="l"``) or S at lambdas r, exactly: (len(r), D)."""
        v, cum = (self.l, self.Lc) if which == "l" else (self.s, self.Sc)
        i, u = self._cell(r)
        uu, wd = u[:, None], self.width[i][:, None]
        return cum[i] + v[i] * uu + (v[i + 1] - v[i]) * uu * uu / (2 * wd)

    def pieces(self, lo: float, hi: float) -> np.ndarray:
        """Sub-interval bounds of [lo, hi] (lo < hi): the statistics nodes inside, then at most _MAX_PIECE long."""
        inner = self.lam[(self.lam > lo) & (self.lam < hi)]
        bounds = np.concatenate([[lo], inner, [hi]])
        out = [bounds[:1]]
        for a, b in zip(bounds[:-1], bounds[1:]):
            k = max(1, math.ceil((b - a) / _MAX_PIECE))
            out.append(np.linspace(a, b, k + 1)[1:])
        return np.concatenate(out)


def _gauss_legendre(m: int):
    """Nodes, weights on [-1, 1] and the spectral cumulative-integration matrix Q[i, j] = int_{-1}^{x_i} ell_j."""
    x, w = np.polynomial.legendre.leggauss(m)
    q = np.empty((m, m))
    for j in range(m):
        y = np.zeros(m)
        y[j] = 1.0
        coef = np.polynomial.polynomial.polyfit(x, y, m - 1)
        anti = np.polynomial.polynomial.polyint(coef, lbnd=-1.0)
        q[:, j] = np.polynomial.polynomial.polyval(x, anti)
    return x, w, q


_GL = _gauss_legendre(GL_NODES)


def _nodes(bounds):
    """Quadrature nodes r (P, m), weights (P, m) and half-widths (P,) for sub-interval bounds (P + 1,)."""
    x, w, _ = _GL
    half = 0.5 * np.diff(bounds)
    mid = 0.5 * (bounds[1:] + bounds[:-1])
    return mid[:, None] + half[:, None] * x[None], half[:, None] * w[None], half


def _flat_value(stats, fn, r2d):
    """fn(stats, r) evaluated on a (P, m) grid of lambdas: (P, m, D)."""
    return fn(r2d.reshape(-1)).reshape(r2d.shape + (stats.dim,))


def b_integral(stats: LinearStats, lam_s: float, lam_i: float) -> np.ndarray:
    """B_s(lambda_i) = int_{lambda_s}^{lambda_i} exp(-(S(u) - S_s)) b(u) du, per element (D,)."""
    if not stats.has_b or lam_i == lam_s:
        return np.zeros(stats.dim)
    lo, hi = min(lam_s, lam_i), max(lam_s, lam_i)
    r, w, _ = _nodes(stats.pieces(lo, hi))
    S_s = stats.anti("s", [lam_s])[0]
    q = np.exp(-(_flat_value(stats, lambda u: stats.anti("s", u), r) - S_s)) * _flat_value(
        stats, lambda u: stats.value(stats.b, u), r
    )
    total = np.einsum("pm,pmd->d", w, q)
    return total if lam_i > lam_s else -total


def step_integrals(stats: LinearStats, lam_s: float, lam_t: float, degree: int):
    """Per-element integrals of one step lambda_s < lambda_t.

    Returns (dL, phi, cb): dL = L_t - L_s (D,); phi (degree + 1, D) with
    phi_j = int E(r) (r - lambda_s)^j / j! dr; cb = int E(r) B(r) dr (D,).
    """
    r, w, half = _nodes(stats.pieces(lam_s, lam_t))
    LS_s = stats.anti("l", [lam_s])[0] + stats.anti("s", [lam_s])[0]
    dL = stats.anti("l", [lam_t])[0] - stats.anti("l", [lam_s])[0]
    LS = _flat_value(stats, lambda u: stats.anti("l", u) + stats.anti("s", u), r)
    E = np.exp(LS - LS_s)
    u = r - lam_s
    phi = np.stack([np.einsum("pm,pmd->d", w * u**j / math.factorial(j), E) for j in range(degree + 1)])
    cb = np.zeros(stats.dim)
    if stats.has_b:
        S_s = stats.anti("s", [lam_s])[0]
        S = _flat_value(stats, lambda v: stats.anti("s", v), r)
        q = np.exp(-(S - S_s)) * _flat_value(stats, lambda v: stats.value(stats.b, v), r)
        _, _, Q = _GL
        local = np.einsum("ij,pjd->pid", Q, q) * half[:, None, None]
        totals = np.einsum("pm,pmd->pd", w, q)
        prefix = np.concatenate([np.zeros_like(totals[:1]), np.cumsum(totals, 0)[:-1]])
        B = prefix[:, None, :] + local
        cb = np.einsum("pm,pmd->d", w, E * B)
    return dL, phi, cb


def derivative_weights(lams, pseudo: bool = False) -> np.ndarray:
    """Weights W (n, n + 1) with g^(j)(lams[0]) ~ sum_i W[j - 1, i] g(lams[i]) for j = 1..n.

    ``pseudo=False``: the exact Taylor system at lams[0]; ``pseudo=True``: j! times Newton's divided
    differences over lams[0..j] (the pseudo-order estimate of arXiv 2310.13268 sec. 3.3).
    """
    lams = np.asarray(lams, dtype=np.float64)
    n = len(lams) - 1
    if n == 0:
        return np.zeros((0, 1))
    if pseudo:
        table = [np.eye(n + 1)]
        for i in range(1, n + 1):
            prev = table[-1]
            table.append(np.stack([(prev[j] - prev[j + 1]) / (lams[j] - lams[i + j]) for j in range(n - i + 1)]))
        return np.stack([table[i][0] * math.factorial(i) for i in range(1, n + 1)])
    d = lams[1:] - lams[0]
    R = np.stack([d**j for j in range(1, n + 1)], axis=1)  # (n points, n powers)
    inv = np.linalg.inv(R)  # Taylor coefficients c_j = g^(j) / j!
    W = np.zeros((n, n + 1))
    for j in range(1, n + 1):
        W[j - 1, 1:] = math.factorial(j) * inv[j - 1]
        W[j - 1, 0] = -W[j - 1, 1:].sum()
    return W

