"""Draw candidate data mixtures around a prior, RegMix style (Dirichlet with log-spaced concentrations).

A mixture is a weight per source that sums to 1. `natural_prior` turns token counts into a tempered prior;
`sample_mixture_array` draws many mixtures at once (vectorised, for search); `sample_mixtures` returns a
small set of distinct mixtures as dicts (for proxy runs).
"""

from __future__ import annotations

import math

import numpy as np

DECIMALS = 6  # mixtures are rounded to this many decimals before deduplication
_POOL_CAP = 1_000_000  # oversampling never holds more than this many candidate rows
_BATCH_MIN = 4096
_BATCH_MAX = 250_000  # rows drawn at once (bounds memory)
_MAX_DRAW_FACTOR = 50  # give up after drawing this many times the wanted pool (plus _MAX_DRAW_FLOOR)
_MAX_DRAW_FLOOR = 100_000
_MAX_DRAWS = 10_000_000  # hard cap on raw draws per call
_MIN_YIELD = 0.1  # a batch whose accepted rows are less than this share new counts as saturated


def _hash_weights(k: int) -> np.ndarray:
    """Fixed odd 64-bit multipliers that fold an integer row into one int64 (collisions are negligible)."""
    return np.random.default_rng(20240701).integers(1, 2**62, size=k, dtype=np.int64) * 2 + 1


def natural_prior(token_counts: dict[str, float], temperature: float = 0.5) -> dict[str, float]:
    """Token shares raised to `temperature` and renormalized (temperature 1: token shares; 0: uniform)."""
    if not token_counts:
        raise ValueError("natural_prior needs at least one source")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    counts = np.array([float(v) for v in token_counts.values()])
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("token counts must be finite and >= 0")
    if counts.sum() <= 0:
        raise ValueError("token counts must not all be 0")
    shares = counts / counts.sum()
    tempered = np.where(shares > 0, shares ** temperature, 0.0)
    tempered = tempered / tempered.sum()
    return {k: float(v) for k, v in zip(token_counts, tempered)}


def _prior_vector(prior: dict[str, float]) -> np.ndarray:
    if not prior:
        raise ValueError("the prior needs at least one source")
    p = np.array([float(v) for v in prior.values()])
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("prior weights must be finite, >= 0 and not all 0")
    return p / p.sum()


def _check_kwargs(n: int, concentration: tuple[float, float], concentration_steps: int, max_ratio_to_prior: float,
                  min_weight: float, oversample: int, k: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    lo, hi = concentration
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"concentration must be (low, high) with 0 < low <= high, got {concentration}")
    if int(concentration_steps) != concentration_steps or concentration_steps < 1:
        raise ValueError(f"concentration_steps must be a positive integer, got {concentration_steps}")
    if not max_ratio_to_prior > 0:
        raise ValueError(f"max_ratio_to_prior must be > 0, got {max_ratio_to_prior}")
    if not (0 <= min_weight and min_weight * k < 1):
        raise ValueError(f"min_weight must be >= 0 and below 1/{k} for {k} sources, got {min_weight}")
    if int(oversample) != oversample or oversample < 1:
        raise ValueError(f"oversample must be a positive integer, got {oversample}")


def _dirichlet_rows(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    """One Dirichlet draw per row of `alpha` (rows may differ), stable for tiny alphas.

    Uses Gamma(a) = Gamma(a + 1) * U^(1/a) in log space, so shapes like 1e-3 do not underflow to all-zero rows.
    """
    log_g = np.log(rng.gamma(alpha + 1.0)) + np.log(rng.random(alpha.shape)) / alpha
    log_g -= log_g.max(axis=1, keepdims=True)
    g = np.exp(log_g)
    return g / g.sum(axis=1, keepdims=True)


def _round_rows(w: np.ndarray) -> np.ndarray:
    """Round to DECIMALS and move the rounding remainder onto each row's largest weight (rows sum to 1)."""
    r = np.round(w, DECIMALS)
    top = np.argmax(r, axis=1)
    rows = np.arange(len(r))
    r[rows, top] += 1.0 - r.sum(axis=1)
    return r


def _draw_batch(rng: np.random.Generator, p: np.ndarray, size: int, scales: np.ndarray, max_ratio: float,
                min_weight: float) -> np.ndarray:
    """Draw `size` raw candidates and return the accepted, cleaned, rounded rows."""
    pos = p > 0
    s = scales[rng.integers(0, len(scales), size)]
    alpha = p[pos][None, :] * s[:, None]
    w = np.zeros((size, len(p)))
    w[:, pos] = _dirichlet_rows(rng, alpha)
    w[w < min_weight] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    w = _round_rows(w)
    ok = np.all(w <= max_ratio * p[None, :], axis=1) & np.all(w >= 0, axis=1)
    return w[ok]


def sample_mixture_array(prior: dict[str, float], n: int, seed: int, *,
                         concentration: tuple[float, float] = (0.1, 5.0), concentration_steps: int = 15,
                         max_ratio_to_prior: float = 15.0, min_weight: float = 2e-4,
                         oversample: int = 100) -> np.ndarray:
    """`n` distinct mixtures as an array of shape (n, len(prior)), columns in the prior's key order.

    Each candidate is a Dirichlet draw with alpha = prior * s, s one of `concentration_steps` log-spaced values
    in `concentration` (picked uniformly per draw). A candidate with any weight above `max_ratio_to_prior` times
    its prior is rejected; weights below `min_weight` become 0 and the rest are renormalized, then rounded to
    DECIMALS decimals (the sum stays 1). Draws continue until `n * oversample` distinct accepted candidates exist
    (at most _POOL_CAP, at least n); `n` of them are then picked at random and returned in the order they were
    drawn. The result depends only on the arguments and `seed`. Raises ValueError when fewer than `n` distinct
    candidates turn up within the draw budget.
    """
    p = _prior_vector(prior)
    _check_kwargs(n, concentration, concentration_steps, max_ratio_to_prior, min_weight, oversample, len(p))
    n = int(n)
    lo, hi = concentration
    scales = np.geomspace(lo, hi, int(concentration_steps))
    pool = max(n, min(n * int(oversample), _POOL_CAP))
    max_draws = min(_MAX_DRAW_FACTOR * pool + _MAX_DRAW_FLOOR, _MAX_DRAWS)
    rng = np.random.default_rng(seed)

    weights = _hash_weights(len(p))
    kept: list[np.ndarray] = []
    seen = np.zeros(0, dtype=np.int64)
    drawn = 0
    while len(seen) < pool and drawn < max_draws:
        size = int(min(max(2 * (pool - len(seen)), _BATCH_MIN), max_draws - drawn, _BATCH_MAX))
        batch = _draw_batch(rng, p, size, scales, max_ratio_to_prior, min_weight)
        drawn += size
        accepted = len(batch)
        h = np.round(batch * 10 ** DECIMALS).astype(np.int64) @ weights  # wraps mod 2**64: a row hash
        h, first = np.unique(h, return_index=True)
        order = np.argsort(first)
        h, batch = h[order], batch[first[order]]
        new = ~np.isin(h, seen)
        kept.append(batch[new])
        seen = np.union1d(seen, h[new])
        gained = int(new.sum())
        if gained < _MIN_YIELD * accepted and len(seen) >= n:
            break  # saturated: enough for n, more draws add little
        if drawn >= _MAX_DRAW_FLOOR and len(seen) + gained / size * (max_draws - drawn) < n:
            break  # even at the current yield, the budget cannot reach n
    distinct = np.concatenate(kept) if kept else np.zeros((0, len(p)))
    if len(distinct) < n:
        raise ValueError(f"found only {len(distinct)} distinct mixtures within {drawn} draws, {n} were asked for; "
                         "loosen max_ratio_to_prior/min_weight or ask for fewer")
    distinct = distinct[:pool]
    pick = np.sort(rng.choice(len(distinct), size=n, replace=False))
    return distinct[pick]


def sample_mixtures(prior: dict[str, float], n: int, seed: int, *, concentration: tuple[float, float] = (0.1, 5.0),
                    concentration_steps: int = 15, max_ratio_to_prior: float = 15.0, min_weight: float = 2e-4,
                    oversample: int = 100) -> list[dict[str, float]]:
    """`n` distinct mixtures as dicts (keys in the prior's order, weights sum to 1); see `sample_mixture_array`."""
    arr = sample_mixture_array(prior, n, seed, concentration=concentration, concentration_steps=concentration_steps,
                               max_ratio_to_prior=max_ratio_to_prior, min_weight=min_weight, oversample=oversample)
    keys = list(prior)
    return [{k: float(v) for k, v in zip(keys, row)} for row in arr]


def sample_points(prior: dict[str, float], n: int, seed: int, **sampler) -> list[dict[str, float]]:
    """`n` distinct sweep points, prefix-stable: point i is drawn from its own seed (retrying on a repeat of an
    earlier point), so `sample_points(p, 40, s)[:32] == sample_points(p, 32, s)` and raising a sweep's `points`
    only adds points — the ones already trained keep their weights."""
    out: list[dict[str, float]] = []
    seen: set[tuple[float, ...]] = set()
    for i in range(n):
        for attempt in range(1000):
            w = sample_mixtures(prior, 1, int(np.random.SeedSequence([seed, i, attempt]).generate_state(1)[0]),
                                **sampler)[0]
            key = tuple(round(v, 6) for v in w.values())
            if key not in seen:
                break
        else:
            raise ValueError(f"could not draw a point distinct from the {i} before it; loosen the sampler")
        seen.add(key)
        out.append(w)
    return out
