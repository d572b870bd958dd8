"""Measure whether small-scale results rank candidates (mixtures, corpora) the way large-scale results do.

Decision accuracy (DataDecide, arXiv 2504.11393) is the share of candidate pairs ordered the same way at both
scales; here with a bootstrap interval over candidates, next to plain Spearman rank correlation.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr


def _common(small: dict[str, float], large: dict[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    keys = [k for k in small if k in large]
    if len(keys) < 2:
        raise ValueError(f"need at least 2 keys present at both scales, got {len(keys)}")
    s = np.array([float(small[k]) for k in keys])
    l = np.array([float(large[k]) for k in keys])
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(l))):
        raise ValueError("objective values must be finite")
    return keys, s, l


def _agreement(s: np.ndarray, l: np.ndarray) -> np.ndarray:
    """Matrix of pair scores: 1 same order at both scales, 0 opposite, 0.5 tied at either scale; 0 on the diagonal."""
    ds = np.sign(s[:, None] - s[None, :])
    dl = np.sign(l[:, None] - l[None, :])
    agree = np.where((ds == 0) | (dl == 0), 0.5, (ds == dl).astype(float))
    np.fill_diagonal(agree, 0.0)
    return agree


def decision_accuracy(small: dict[str, float], large: dict[str, float], lower_is_better: bool = True) -> float:
    """Share of pairs of common keys that the small scale orders the same way as the large scale.

    A pair tied at either scale counts as half a correct decision (a coin flip would pick the winner).
    `lower_is_better` does not change the value: both scales are read in the same direction, so an order that
    agrees for "lower is better" agrees for "higher is better" too. It is kept so callers state the direction
    (it matters for reading which candidate wins, not for whether the scales agree).
    """
    del lower_is_better  # documented above: agreement is direction-free
    _, s, l = _common(small, large)
    agree = _agreement(s, l)
    m = len(s)
    return float(agree.sum() / (m * (m - 1)))


def decision_accuracy_interval(small: dict[str, float], large: dict[str, float], *, samples: int = 2000,
                               seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of decision accuracy, resampling the candidates with replacement.

    In each resample, every pair of positions holding different candidates counts once (so a candidate drawn
    twice weighs twice); pairs of a candidate with itself are skipped, as are resamples holding one candidate.
    """
    if int(samples) != samples or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    _, s, l = _common(small, large)
    agree = _agreement(s, l)
    m = len(s)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(int(samples), m))
    counts = np.zeros((int(samples), m))
    np.add.at(counts, (np.repeat(np.arange(int(samples)), m), idx.ravel()), 1.0)
    # sum over ordered pairs p != q of distinct candidates: c^T A c with A's diagonal 0
    num = np.einsum("ij,jk,ik->i", counts, agree, counts)
    den = counts.sum(axis=1) ** 2 - (counts ** 2).sum(axis=1)
    ok = den > 0
    if not ok.any():
        raise ValueError("no bootstrap resample held two different candidates")
    acc = num[ok] / den[ok]
    q = 50.0 * (1.0 - level)
    lo, hi = np.percentile(acc, [q, 100.0 - q])
    return float(lo), float(hi)


def rank_correlation(small: dict[str, float], large: dict[str, float]) -> float:
    """Spearman rank correlation over common keys (nan when either scale is constant)."""
    _, s, l = _common(small, large)
    if np.all(s == s[0]) or np.all(l == l[0]):
        return math.nan
    return float(spearmanr(s, l).statistic)
