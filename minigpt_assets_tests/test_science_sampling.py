"""Mixture sampler: tempered prior, determinism, distinctness, constraints, impossible requests."""

from __future__ import annotations

import numpy as np
import pytest

from minigpt_assets.science import natural_prior, sample_mixture_array, sample_mixtures

COUNTS = {"web": 5e9, "code": 1e9, "books": 5e8, "wiki": 2e8, "math": 1e8}


def test_natural_prior_known_values():
    assert natural_prior({"a": 9, "b": 1}) == pytest.approx({"a": 0.75, "b": 0.25})  # sqrt: 3 : 1
    assert natural_prior({"a": 9, "b": 1}, temperature=1.0) == pytest.approx({"a": 0.9, "b": 0.1})
    assert natural_prior({"a": 9, "b": 1}, temperature=0.0) == pytest.approx({"a": 0.5, "b": 0.5})
    assert natural_prior({"a": 4, "b": 0, "c": 1}) == pytest.approx({"a": 2 / 3, "b": 0.0, "c": 1 / 3})
    assert list(natural_prior(COUNTS)) == list(COUNTS)


@pytest.mark.parametrize("counts", [{}, {"a": -1.0, "b": 2.0}, {"a": 0.0}, {"a": float("nan")}])
def test_natural_prior_rejects_bad_counts(counts):
    with pytest.raises(ValueError):
        natural_prior(counts)


def test_samples_are_deterministic_distinct_and_valid():
    prior = natural_prior(COUNTS)
    p = np.array(list(prior.values()))
    a = sample_mixtures(prior, 64, seed=3)
    assert a == sample_mixtures(prior, 64, seed=3)
    assert a != sample_mixtures(prior, 64, seed=4)
    assert len(a) == 64
    assert all(list(m) == list(prior) for m in a)
    w = np.array([[m[k] for k in prior] for m in a])
    assert len({tuple(r) for r in w}) == 64
    assert np.all(np.abs(w.sum(axis=1) - 1.0) < 1e-9)
    assert np.all(w <= 15.0 * p * (1 + 1e-12))
    assert np.all((w == 0) | (w >= 2e-4))
    assert (w == 0).any()  # small concentrations give sparse mixtures whose tiny weights were zeroed
    np.testing.assert_array_equal(w, sample_mixture_array(prior, 64, seed=3))


def test_constraints_are_honoured_when_tight():
    prior = natural_prior(COUNTS)
    p = np.array(list(prior.values()))
    w = sample_mixture_array(prior, 500, seed=0, max_ratio_to_prior=2.0, min_weight=0.05, oversample=4)
    assert w.shape == (500, 5)
    assert np.all(w <= 2.0 * p * (1 + 1e-12))
    assert np.all((w == 0) | (w >= 0.05))
    assert len(np.unique(w, axis=0)) == 500


def test_high_concentration_centres_on_the_prior():
    prior = natural_prior(COUNTS)
    w = sample_mixture_array(prior, 2000, seed=1, concentration=(1000.0, 1000.0), concentration_steps=1,
                             oversample=1)
    np.testing.assert_allclose(w.mean(axis=0), list(prior.values()), atol=2e-3)  # Dirichlet mean = prior


def test_large_candidate_sets_are_distinct():
    prior = natural_prior(COUNTS)
    w = sample_mixture_array(prior, 100_000, seed=0, oversample=1)
    assert w.shape == (100_000, 5)
    assert len(np.unique(w, axis=0)) == 100_000


def test_impossible_requests_raise():
    with pytest.raises(ValueError, match="distinct"):
        sample_mixtures({"only": 1.0}, 2, seed=0)  # one source: a single possible mixture
    with pytest.raises(ValueError, match="distinct"):
        sample_mixtures({"a": 0.3, "b": 0.7}, 10, seed=0, max_ratio_to_prior=1.0)  # nothing may exceed the prior
    with pytest.raises(ValueError):
        sample_mixtures({"a": 0.5, "b": 0.5}, 0, seed=0)
    with pytest.raises(ValueError):
        sample_mixtures({"a": 0.5, "b": 0.5}, 5, seed=0, concentration=(0.0, 5.0))
    with pytest.raises(ValueError):
        sample_mixtures({"a": 0.5, "b": 0.5}, 5, seed=0, min_weight=0.5)
    with pytest.raises(ValueError):
        sample_mixtures({}, 5, seed=0)
