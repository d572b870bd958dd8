"""Decision accuracy, its bootstrap interval and rank correlation on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from minigpt_assets.science import decision_accuracy, decision_accuracy_interval, rank_correlation

SMALL = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}


def test_identical_and_reversed_rankings():
    large = {k: 10 * v + 1 for k, v in SMALL.items()}  # same order, other scale
    assert decision_accuracy(SMALL, large) == 1.0
    assert decision_accuracy(SMALL, {k: -v for k, v in SMALL.items()}) == 0.0
    assert rank_correlation(SMALL, large) == pytest.approx(1.0)
    assert rank_correlation(SMALL, {k: -v for k, v in SMALL.items()}) == pytest.approx(-1.0)


def test_known_partial_cases():
    small, large = {"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 3, "c": 2}
    assert decision_accuracy(small, large) == pytest.approx(2 / 3)  # ab, ac agree; bc flips
    assert decision_accuracy(small, large, lower_is_better=False) == pytest.approx(2 / 3)
    assert rank_correlation(small, large) == pytest.approx(0.5)
    # a tie at one scale counts half: ab tied (0.5), ac and bc agree
    assert decision_accuracy({"a": 1, "b": 1, "c": 2}, {"a": 1, "b": 2, "c": 3}) == pytest.approx(2.5 / 3)
    # only keys present at both scales count
    assert decision_accuracy({**small, "z": 0.0}, {**large, "y": 9.0}) == pytest.approx(2 / 3)


def test_interval_is_sane_and_deterministic():
    rng = np.random.default_rng(0)
    base = rng.normal(size=15)
    small = {f"m{i}": float(v) for i, v in enumerate(base)}
    large = {f"m{i}": float(v + rng.normal(scale=0.5)) for i, v in enumerate(base)}
    acc = decision_accuracy(small, large)
    assert 0.5 < acc < 1.0
    lo, hi = decision_accuracy_interval(small, large, samples=2000, seed=0)
    assert 0.0 <= lo <= acc <= hi <= 1.0
    assert lo < hi
    assert (lo, hi) == decision_accuracy_interval(small, large, samples=2000, seed=0)
    wide = decision_accuracy_interval(small, large, samples=2000, seed=0, level=0.99)
    assert wide[0] <= lo and wide[1] >= hi
    assert decision_accuracy_interval(SMALL, SMALL) == (1.0, 1.0)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="at least 2"):
        decision_accuracy({"a": 1.0}, {"a": 2.0, "b": 1.0})
    with pytest.raises(ValueError, match="at least 2"):
        rank_correlation({"a": 1.0, "b": 2.0}, {"c": 1.0})
    with pytest.raises(ValueError, match="level"):
        decision_accuracy_interval(SMALL, SMALL, level=1.5)
