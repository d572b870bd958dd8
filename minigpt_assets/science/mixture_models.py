"""Regress an objective (e.g. a proxy model's validation loss) on data-mixture weights, choosing the model by CV.

Three kinds: "linear" (ridge-stabilised least squares on the weights), "mixing_law" (Ye et al. 2024:
L = c + k * exp(sum_j t_j r_j)) and "lightgbm" (RegMix's gradient-boosted trees). "auto" scores every kind by
k-fold cross-validated Spearman on held-out points and keeps the best (ties go to the simpler kind).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import spearmanr

from ._threads import single_blas_thread

KINDS = ("linear", "mixing_law", "lightgbm")  # simplest first: ties in CV Spearman go to the earlier kind
LGB_MAX_ROUNDS = 1000
LGB_EARLY_STOP = 50  # rounds without improvement of the inner-CV l2 (at learning rate 0.01)
_LAW_MAX_NFEV = 300  # a start heading the wrong way (e.g. the wrong sign of k) drifts; cut it short
_LAW_START_OFFSETS = (0.05, 0.5, 5.0)  # c starts at min(y) - f*span (and max(y) + f*span for k < 0)


@dataclass
class _Fitted:
    predict: Callable[[np.ndarray], np.ndarray]
    importances: np.ndarray
    converged: bool
    details: dict[str, Any]


@dataclass
class MixtureModel:
    """A fitted objective(weights) model: predictions, CV quality, importances and fit diagnostics."""

    kind: str
    sources: list[str]
    cv_spearman: float  # pooled out-of-fold Spearman of the chosen kind
    cv_scores: dict[str, float]  # the same for every kind that was scored
    importances: dict[str, float]  # per source, normalised to sum 1 (all 0 when the model ignores every source)
    converged: bool
    residuals: list[float]  # in-sample observed - predicted
    details: dict[str, Any] = field(default_factory=dict)  # kind-specific: rounds, mixing-law c/k/t, ridge coefs
    _predict: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    def predict(self, weights: list[dict[str, float]] | dict[str, float] | np.ndarray) -> np.ndarray:
        """Predicted objective per mixture: dicts (missing sources count 0) or an array with columns in `sources`."""
        if self._predict is None:
            raise ValueError("this MixtureModel holds no fitted predictor")
        return self._predict(_matrix(weights, self.sources))


def _matrix(weights: list[dict[str, float]] | dict[str, float] | np.ndarray, sources: list[str]) -> np.ndarray:
    if isinstance(weights, dict):
        weights = [weights]
    if isinstance(weights, np.ndarray):
        x = np.asarray(weights, dtype=float)
        if x.ndim != 2 or x.shape[1] != len(sources):
            raise ValueError(f"weight array must have shape (m, {len(sources)}), got {x.shape}")
    else:
        known = set(sources)
        for w in weights:
            extra = set(w) - known
            if extra:
                raise ValueError(f"unknown sources {sorted(extra)}; the model knows {sources}")
        x = np.array([[float(w.get(s, 0.0)) for s in sources] for w in weights], dtype=float).reshape(-1, len(sources))
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("mixture weights must be finite and >= 0")
    return x


# Predictors are small classes rather than closures so a fitted MixtureModel pickles (e.g. through an IO manager).
@dataclass
class _Linear:
    intercept: float
    coef: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + x @ self.coef


@dataclass
class _Law:
    mu: float
    sd: float
    c: float
    sign: float
    theta: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.mu + self.sd * (self.c + self.sign * _law_parts(self.theta, x))


@dataclass
class _Booster:
    booster: Any  # lightgbm.Booster (pickles as its model string)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_threads=2), dtype=float)


# ---------------------------------------------------------------------------------------------------- linear
def _fit_linear(x: np.ndarray, y: np.ndarray, seed: int) -> _Fitted:
    """Least squares with an intercept and a tiny ridge (weights sum to 1, so plain OLS is rank-deficient)."""
    del seed
    xm, ym = x.mean(axis=0), y.mean()
    xc = x - xm
    gram = xc.T @ xc
    lam = 1e-8 * (np.trace(gram) / x.shape[1] + 1e-12)
    coef = np.linalg.solve(gram + lam * np.eye(x.shape[1]), xc.T @ (y - ym))
    intercept = float(ym - xm @ coef)
    return _Fitted(_Linear(intercept, coef), np.abs(coef), True,
                   {"intercept": float(intercept), "coef": [float(c) for c in coef]})


# ---------------------------------------------------------------------------------------------------- mixing law
def _law_parts(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.exp(np.clip(x @ theta[1:], -700.0, 700.0))


def _fit_mixing_law(x: np.ndarray, y: np.ndarray, seed: int) -> _Fitted:
    """Fit y = c + s * exp(x @ t) (s = +1 or -1; k = s * exp(mean t) after centring t) by least squares.

    y is standardised first. Starts: for each sign and several offsets c0 beyond the observed range, t0 solves the
    linear problem log(s (y - c0)) = x @ t (exact for the law), plus one seeded perturbation of each.
    """
    mu, sd = float(y.mean()), float(y.std()) or 1.0  # a constant CV training fold still gets a (flat) fit
    z = (y - mu) / sd
    span = float(z.max() - z.min()) or 1.0
    rng = np.random.default_rng(seed)

    def resid(theta: np.ndarray, s: float) -> np.ndarray:
        return theta[0] + s * _law_parts(theta, x) - z

    def jac(theta: np.ndarray, s: float) -> np.ndarray:
        e = s * _law_parts(theta, x)
        return np.hstack([np.ones((len(z), 1)), e[:, None] * x])

    best: tuple[float, np.ndarray, float, bool] | None = None
    for s in (1.0, -1.0):
        for f in _LAW_START_OFFSETS:
            c0 = z.min() - f * span if s > 0 else z.max() + f * span
            t0, *_ = np.linalg.lstsq(x, np.log(s * (z - c0)), rcond=None)
            for start in (np.r_[c0, t0], np.r_[c0, t0 + rng.normal(0.0, 0.5, len(t0))]):
                res = least_squares(resid, start, jac=jac, args=(s,), method="trf", x_scale="jac",
                                    ftol=1e-12, xtol=1e-12, gtol=1e-12, max_nfev=_LAW_MAX_NFEV)
                if not np.all(np.isfinite(res.fun)):
                    continue
                sse = float(res.fun @ res.fun)
                if best is None or sse < best[0] - 1e-12:
                    best = (sse, res.x, s, bool(res.status > 0))
    if best is None:
        raise ValueError("the mixing-law fit produced no finite solution")
    _, theta, s, ok = best
    c, t = float(theta[0]), theta[1:]
    tc = t - t.mean()
    details = {"c": mu + sd * c, "k": s * sd * float(np.exp(t.mean())), "t": [float(v) for v in tc]}
    return _Fitted(_Law(mu, sd, c, s, theta), np.abs(tc), ok, details)


# ---------------------------------------------------------------------------------------------------- lightgbm
def _lgb_params(n: int, seed: int) -> dict[str, Any]:
    """Trees for 10-500 points: min_data_in_leaf n // 10 (2..20); one thread (20x faster than two on tiny data)."""
    return {"objective": "regression", "boosting_type": "gbdt", "learning_rate": 0.01, "num_leaves": 15,
            "min_data_in_leaf": max(2, min(20, n // 10)), "min_sum_hessian_in_leaf": 1e-6, "min_data_in_bin": 1,
            "feature_fraction": 1.0, "bagging_fraction": 1.0, "lambda_l2": 0.0, "verbose": -1,
            "deterministic": True, "force_row_wise": True, "num_threads": 1, "seed": seed}


def _fit_lightgbm(x: np.ndarray, y: np.ndarray, seed: int) -> _Fitted:
    """RegMix's regressor; the number of rounds (<= 1000) comes from early stopping in an inner k-fold CV.

    `converged` means early stopping saw LGB_EARLY_STOP rounds without gain; False means the CV error was still
    falling near the round cap.
    """
    import lightgbm as lgb

    params = _lgb_params(len(y), seed)
    data = lgb.Dataset(x, y, params={"feature_pre_filter": False, "min_data_in_bin": 1, "verbose": -1},
                       free_raw_data=False)
    nfold = min(5, len(y))
    cv = lgb.cv(params, data, num_boost_round=LGB_MAX_ROUNDS, nfold=nfold, stratified=False, shuffle=True,
                seed=seed, callbacks=[lgb.early_stopping(LGB_EARLY_STOP, verbose=False)])
    rounds = len(next(iter(cv.values())))
    booster = lgb.train(params, data, num_boost_round=rounds)
    gain = booster.feature_importance(importance_type="gain").astype(float)
    stopped = rounds + LGB_EARLY_STOP <= LGB_MAX_ROUNDS  # the inner CV saw LGB_EARLY_STOP rounds without gain
    return _Fitted(_Booster(booster), gain, stopped,
                   {"rounds": rounds, "max_rounds": LGB_MAX_ROUNDS, "min_data_in_leaf": params["min_data_in_leaf"]})


_FITTERS: dict[str, Callable[[np.ndarray, np.ndarray, int], _Fitted]] = {
    "linear": _fit_linear, "mixing_law": _fit_mixing_law, "lightgbm": _fit_lightgbm}


# ---------------------------------------------------------------------------------------------------- selection
def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(spearmanr(a, b).statistic)


def _cv_spearman(kind: str, x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    """Pooled Spearman of out-of-fold predictions (leave-one-out when there are fewer points than folds)."""
    n = len(y)
    k = min(folds, n)
    order = np.random.default_rng(seed).permutation(n)
    oof = np.empty(n)
    for held in np.array_split(order, k):
        train = np.setdiff1d(order, held)
        oof[held] = _FITTERS[kind](x[train], y[train], seed).predict(x[held])
    return _spearman(oof, y)


@single_blas_thread
def fit_mixture_model(weights: list[dict[str, float]], objective: list[float], kind: str = "auto", *,
                      folds: int = 5, seed: int = 0) -> MixtureModel:
    """Fit objective ~ f(mixture weights). `kind`: "auto", "linear", "mixing_law" or "lightgbm".

    Sources are the weight keys in first-seen order (a missing key counts as weight 0). Needs at least
    len(sources) + 2 points. "auto" picks the kind with the highest CV Spearman (ties: linear, then mixing_law).
    """
    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"kind must be 'auto' or one of {KINDS}, got {kind!r}")
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds}")
    if not weights:
        raise ValueError("no mixtures given")
    sources: list[str] = list(dict.fromkeys(k for w in weights for k in w))
    x = _matrix(weights, sources)
    y = np.asarray(objective, dtype=float).ravel()
    if len(y) != len(x):
        raise ValueError(f"got {len(x)} mixtures but {len(y)} objective values")
    if not np.all(np.isfinite(y)):
        raise ValueError("objective values must be finite")
    if len(y) < len(sources) + 2:
        raise ValueError(f"need at least len(sources) + 2 = {len(sources) + 2} points for {len(sources)} sources, "
                         f"got {len(y)}")
    if np.all(y == y[0]):
        raise ValueError("the objective is constant: nothing to fit")

    candidates = KINDS if kind == "auto" else (kind,)
    scores = {c: _cv_spearman(c, x, y, int(folds), seed) for c in candidates}
    chosen = candidates[0]
    for c in candidates[1:]:
        if _rank_key(scores[c]) > _rank_key(scores[chosen]) + 1e-9:
            chosen = c
    fitted = _FITTERS[chosen](x, y, seed)
    imp = np.asarray(fitted.importances, dtype=float)
    imp = imp / imp.sum() if imp.sum() > 0 else np.zeros_like(imp)
    return MixtureModel(kind=chosen, sources=sources, cv_spearman=scores[chosen], cv_scores=scores,
                        importances={s: float(v) for s, v in zip(sources, imp)}, converged=fitted.converged,
                        residuals=[float(v) for v in y - fitted.predict(x)], details=fitted.details,
                        _predict=fitted.predict)


def _rank_key(score: float) -> float:
    return -math.inf if math.isnan(score) else score
