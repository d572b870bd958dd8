"""Fit the Chinchilla loss law L(N, D) = E + A/N^alpha + B/D^beta to a ladder of runs (Hoffmann approach 3).

The fit minimises the Huber loss of log L_pred - log L_obs, with log L_pred written as a log-sum-exp of the three
terms, by L-BFGS-B started from the best points of a Hoffmann-style grid. Tolerances are tight and the objective
is scaled so the optimizer does not stop early (the flaw Epoch AI found in the original fit). Optional bootstrap
over runs gives parameter intervals and prediction intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
from scipy.optimize import minimize

from ._threads import single_blas_thread

PARAMS = ("E", "A", "B", "alpha", "beta")
# Hoffmann et al.'s initialisation grid: alpha, beta in {0, .5, ..., 2}, e in {-1, -.5, ..., 1}, a, b in {0, 5, ..., 25}
_GRID_ALPHA = (0.0, 0.5, 1.0, 1.5, 2.0)
_GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
_GRID_AB = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
_N_STARTS = 24  # L-BFGS-B runs from this many best grid points (all 4,500 cost seconds and rarely help)
_BOOT_STARTS = 2  # grid starts per bootstrap fit, besides the full fit's solution
# theta = (a, b, e, alpha, beta); loose bounds that only stop runaway values
_BOUNDS = ((-20.0, 80.0), (-20.0, 80.0), (-20.0, 20.0), (0.0, 5.0), (0.0, 5.0))
_OPTIONS = {"maxiter": 20_000, "maxfun": 100_000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 30}


def flops(N: Any, D: Any) -> Any:
    """Training compute of a dense transformer, C = 6 * N * D (scalars or arrays)."""
    out = 6.0 * np.asarray(N, dtype=float) * np.asarray(D, dtype=float)
    return float(out) if out.ndim == 0 else out


def _as_out(x: np.ndarray, scalar: bool) -> Any:
    return float(x) if scalar else x


@dataclass
class ScalingLaw:
    """A fitted L(N, D) = E + A/N^alpha + B/D^beta with its diagnostics and optional bootstrap fits."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    converged: bool
    residuals: list[float]  # log L_obs - log L_pred per run, in input order
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 2.5/97.5 % bootstrap, if any
    objective: float = float("nan")  # final mean Huber loss / delta^2
    delta: float = 1e-3
    boot: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)), repr=False)  # rows of E, A, B, alpha, beta

    def predict(self, N: Any, D: Any) -> Any:
        """Predicted loss for parameters N and tokens D (scalars give a float, arrays an ndarray)."""
        n, d = _positive(N, "N"), _positive(D, "D")
        out = self.E + self.A / n ** self.alpha + self.B / d ** self.beta
        return _as_out(out, np.ndim(N) == 0 and np.ndim(D) == 0)

    def compute_optimal(self, C: Any) -> tuple[Any, Any]:
        """Loss-minimising (N, D) under C = 6ND.

        N* = G (C/6)^(beta/(alpha+beta)) with G = (alpha A/(beta B))^(1/(alpha+beta)), and D* = C/(6 N*).
        """
        c = _positive(C, "C")
        if self.alpha <= 0 or self.beta <= 0:
            raise ValueError("compute_optimal needs alpha > 0 and beta > 0")
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        n = g * (c / 6.0) ** (self.beta / s)
        d = c / (6.0 * n)
        scalar = np.ndim(C) == 0
        return _as_out(n, scalar), _as_out(d, scalar)

    def predict_interval(self, N: Any, D: Any, level: float = 0.95) -> tuple[Any, Any]:
        """Central `level` interval of the bootstrap fits' predictions at (N, D)."""
        if len(self.boot) == 0:
            raise ValueError("no bootstrap fits: fit with bootstrap > 0 to get prediction intervals")
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        n, d = _positive(N, "N"), _positive(D, "D")
        E, A, B, al, be = (self.boot[:, i].reshape((-1,) + (1,) * np.ndim(n * d)) for i in range(5))
        preds = E + A / n ** al + B / d ** be
        q = 50 * (1 - level)
        lo, hi = np.percentile(preds, [q, 100 - q], axis=0)
        scalar = np.ndim(N) == 0 and np.ndim(D) == 0
        return _as_out(lo, scalar), _as_out(hi, scalar)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for reports (parameters, convergence, intervals)."""
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta,
                "converged": self.converged, "objective": self.objective, "bootstrap": len(self.boot),
                "intervals": {k: list(v) for k, v in self.intervals.items()}}


def _positive(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0")
    return arr


def _huber_objective(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray,
                     delta: float) -> tuple[float, np.ndarray]:
    """Mean Huber(delta) of log-space residuals, divided by delta^2, and its gradient in theta."""
    a, b, e, al, be = theta
    t = np.stack([a - al * logn, b - be * logd, np.full_like(logn, e)])
    m = t.max(axis=0)
    w = np.exp(t - m)
    s = w.sum(axis=0)
    r = m + np.log(s) - logl
    w /= s
    absr = np.abs(r)
    loss = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
    dr = np.clip(r, -delta, delta)
    scale = 1.0 / (len(r) * delta * delta)
    grad = np.array([dr @ w[0], dr @ w[1], dr @ w[2], -(dr * w[0]) @ logn, -(dr * w[1]) @ logd]) * scale
    return float(loss.sum() * scale), grad


def _grid_starts(logn: np.ndarray, logd: np.ndarray, logl: np.ndarray, delta: float, k: int) -> np.ndarray:
    """The `k` grid points with the lowest objective (evaluated all at once)."""
    grid = np.array(list(product(_GRID_AB, _GRID_AB, _GRID_E, _GRID_ALPHA, _GRID_ALPHA)))
    a, b, e, al, be = (grid[:, i:i + 1] for i in range(5))
    t1, t2 = a - al * logn[None, :], b - be * logd[None, :]
    t3 = np.broadcast_to(e, t1.shape)
    r = np.logaddexp(np.logaddexp(t1, t2), t3) - logl[None, :]
    absr = np.abs(r)
    obj = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum(axis=1)
    return grid[np.argsort(obj, kind="stable")[:k]]


def _fit_once(starts: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray,
              delta: float) -> tuple[np.ndarray, float, bool]:
    """Best L-BFGS-B solution over `starts`: (theta, objective, converged).

    Converged: no parameter of the best solution sits at a bound, and L-BFGS-B reported success or a second
    start reached the same optimum (with tolerances this tight, the line search often ends "abnormally" at the
    optimum itself, so agreement between starts is the better evidence).
    """
    sols: list[tuple[np.ndarray, float, bool]] = []
    for x0 in starts:
        res = minimize(_huber_objective, x0, args=(logn, logd, logl, delta), jac=True, method="L-BFGS-B",
                       bounds=_BOUNDS, options=_OPTIONS)
        if np.all(np.isfinite(res.x)) and np.isfinite(res.fun):
            sols.append((np.array(res.x), float(res.fun), bool(res.success)))
    if not sols:
        raise ValueError("the scaling-law fit produced no finite solution")
    x, fun, success = min(sols, key=lambda s: s[1])
    at_bound = any(abs(v - lo) < 1e-7 or abs(v - hi) < 1e-7 for v, (lo, hi) in zip(x, _BOUNDS))
    same = [s for s in sols if s[1] <= fun + 1e-9 * max(1.0, abs(fun)) and np.max(np.abs(s[0] - x)) < 1e-3]
    return x, fun, not at_bound and (success or len(same) >= 2)


def _theta_to_params(theta: np.ndarray) -> np.ndarray:
    a, b, e, al, be = theta
    return np.array([np.exp(e), np.exp(a), np.exp(b), al, be])


def _validate(N: Any, D: Any, loss: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d, l = (np.asarray(x, dtype=float).ravel() for x in (N, D, loss))
    if not (len(n) == len(d) == len(l)):
        raise ValueError(f"N, D and loss must have the same length, got {len(n)}, {len(d)}, {len(l)}")
    for arr, name in ((n, "N"), (d, "D"), (l, "loss")):
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must be finite and > 0")
    if len(n) < 5:
        raise ValueError(f"a scaling-law fit needs at least 5 runs, got {len(n)}")
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise ValueError("a scaling-law fit needs at least 2 distinct model sizes N and 2 distinct token counts D")
    return n, d, l


@single_blas_thread
def fit_scaling_law(N: Any, D: Any, loss: Any, *, delta: float = 1e-3, bootstrap: int = 0,
                    seed: int = 0) -> ScalingLaw:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to runs (N parameters, D tokens, final loss), Chinchilla approach 3.

    With `bootstrap` > 0, refit on that many resamples of the runs (with replacement, seeded; resamples with
    fewer than 2 distinct N or D are redrawn) for 2.5/97.5 % parameter intervals and `predict_interval`.
    """
    n, d, l = _validate(N, D, loss)
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if int(bootstrap) != bootstrap or bootstrap < 0:
        raise ValueError(f"bootstrap must be an integer >= 0, got {bootstrap}")
    logn, logd, logl = np.log(n), np.log(d), np.log(l)
    theta, obj, ok = _fit_once(_grid_starts(logn, logd, logl, delta, _N_STARTS), logn, logd, logl, delta)
    params = _theta_to_params(theta)
    law = ScalingLaw(*map(float, params), converged=ok, residuals=[], objective=obj, delta=delta)
    law.residuals = [float(v) for v in logl - np.log(law.predict(n, d))]

    if bootstrap:
        rng = np.random.default_rng(seed)
        rows = []
        for _ in range(int(bootstrap)):
            for _attempt in range(100):
                idx = rng.integers(0, len(n), len(n))
                if len(np.unique(n[idx])) >= 2 and len(np.unique(d[idx])) >= 2:
                    break
            else:
                raise ValueError("bootstrap could not draw resamples with 2 distinct N and D")
            bn, bd, bl = logn[idx], logd[idx], logl[idx]
            starts = np.vstack([theta[None, :], _grid_starts(bn, bd, bl, delta, _BOOT_STARTS)])
            bt, _, _ = _fit_once(starts, bn, bd, bl, delta)
            rows.append(_theta_to_params(bt))
        law.boot = np.array(rows)
        lo, hi = np.percentile(law.boot, [2.5, 97.5], axis=0)
        law.intervals = {name: (float(a), float(b)) for name, a, b in zip(PARAMS, lo, hi)}
    return law


def relative_errors(law: ScalingLaw, N: Any, D: Any, loss: Any) -> list[float]:
    """(predicted - observed) / observed per run."""
    n, d, l = (np.asarray(x, dtype=float).ravel() for x in (N, D, loss))
    if not (len(n) == len(d) == len(l)):
        raise ValueError(f"N, D and loss must have the same length, got {len(n)}, {len(d)}, {len(l)}")
    _positive(l, "loss")
    return [float(v) for v in (law.predict(n, d) - l) / l]
