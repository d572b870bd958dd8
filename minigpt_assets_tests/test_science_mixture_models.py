"""Mixture regressions and search: known optima, model choice by CV, each kind alone, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from minigpt_assets.science import fit_mixture_model, natural_prior, sample_mixture_array, search_mixture

PRIOR = natural_prior({"web": 5e9, "code": 1e9, "books": 5e8, "wiki": 2e8})
KEYS = list(PRIOR)
P = np.array(list(PRIOR.values()))
T_TRUE = np.array([-1.0, 0.5, -0.3, 0.8])  # mean 0, so k below is the law's k exactly
W_STAR = np.array([0.45, 0.20, 0.25, 0.10])  # interior optimum of the bowl (inside 15 x prior)
CURV = np.array([3.0, 5.0, 4.0, 6.0])


def law(w: np.ndarray) -> np.ndarray:
    return 2.0 + 1.5 * np.exp(w @ T_TRUE)


def bowl(w: np.ndarray) -> np.ndarray:
    return 2.0 + ((w - W_STAR) ** 2 * CURV).sum(axis=1)


def dicts(w: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(KEYS, row)) for row in w]


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return sample_mixture_array(PRIOR, 40, seed=0)


def lp_optimum(t: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """argmin t.r over the simplex with r_j <= cap_j: fill the lowest t first."""
    r = np.zeros_like(t)
    left = 1.0
    for j in np.argsort(t):
        r[j] = min(cap[j], left)
        left -= r[j]
    return r


def test_mixing_law_objective_is_recovered_and_searched(train):
    y = law(train)
    model = fit_mixture_model(dicts(train), list(y), "auto", seed=0)
    assert model.kind == "mixing_law"
    assert model.cv_spearman > 0.9
    assert set(model.cv_scores) == {"linear", "mixing_law", "lightgbm"}
    assert model.cv_spearman == max(model.cv_scores.values())
    assert model.converged
    assert model.details["c"] == pytest.approx(2.0, rel=1e-3)
    assert model.details["k"] == pytest.approx(1.5, rel=1e-3)
    np.testing.assert_allclose(model.details["t"], T_TRUE, atol=1e-3)
    assert max(abs(r) for r in model.residuals) < 1e-6
    best = search_mixture(model, PRIOR, 100_000, seed=1)
    assert list(best) == KEYS and sum(best.values()) == pytest.approx(1.0)
    found = np.array(list(best.values()))
    true_opt = lp_optimum(T_TRUE, np.minimum(1.0, 15.0 * P))
    assert np.abs(found - true_opt).sum() < 0.1
    assert law(found[None])[0] - law(true_opt[None])[0] < 0.01 * np.ptp(y)


def test_bowl_optimum_is_found_by_the_cv_chosen_model(train):
    y = bowl(train)
    model = fit_mixture_model(dicts(train), list(y), "auto", seed=0)
    assert model.cv_spearman == max(model.cv_scores.values())
    # an interior minimum is beyond linear and mixing-law models; trees can represent it
    assert model.kind == "lightgbm"
    assert model.cv_scores["lightgbm"] > model.cv_scores["linear"]
    found = np.array(list(search_mixture(model, PRIOR, 100_000, seed=1).values()))
    assert bowl(found[None])[0] - 2.0 < 0.05 * np.ptp(y)


def test_linear_kind_recovers_exact_coefficients(train):
    b = np.array([0.5, -1.0, 2.0, 0.0])
    y = 1.0 + train @ b
    model = fit_mixture_model(dicts(train), list(y), "linear")
    assert model.kind == "linear" and list(model.cv_scores) == ["linear"]
    assert model.cv_spearman == pytest.approx(1.0)
    fresh = sample_mixture_array(PRIOR, 5, seed=9)
    np.testing.assert_allclose(model.predict(fresh), 1.0 + fresh @ b, atol=1e-6)
    # weights sum to 1, so coefficients are known up to a shift; the ridge keeps the centred ones
    centred = np.abs(b - b.mean())
    np.testing.assert_allclose(list(model.importances.values()), centred / centred.sum(), atol=1e-6)


def test_lightgbm_kind_finds_the_source_that_matters(train):
    y = 3.0 + 2.0 * train[:, 1]  # only "code" matters
    model = fit_mixture_model(dicts(train), list(y), "lightgbm", seed=0)
    assert model.kind == "lightgbm"
    assert max(model.importances, key=model.importances.get) == "code"
    assert sum(model.importances.values()) == pytest.approx(1.0)
    assert isinstance(model.converged, bool) and len(model.residuals) == 40
    np.testing.assert_array_equal(model.predict(dicts(train[:5])), model.predict(train[:5]))
    again = fit_mixture_model(dicts(train), list(y), "lightgbm", seed=0)
    np.testing.assert_array_equal(model.predict(train), again.predict(train))
    assert model.cv_spearman > 0.9


def test_mixing_law_kind_alone_and_leave_one_out(train):
    few = train[:6]  # 6 points < folds: leave-one-out
    model = fit_mixture_model(dicts(few), list(law(few)), "mixing_law", folds=10)
    assert model.kind == "mixing_law" and model.converged
    assert model.cv_spearman > 0.9


def test_bad_input_raises(train):
    with pytest.raises(ValueError, match="at least"):
        fit_mixture_model(dicts(train[:5]), list(law(train[:5])))  # 4 sources need 6 points
    with pytest.raises(ValueError, match="kind"):
        fit_mixture_model(dicts(train), list(law(train)), "forest")
    with pytest.raises(ValueError, match="objective values"):
        fit_mixture_model(dicts(train), list(law(train))[:-1])
    with pytest.raises(ValueError, match="constant"):
        fit_mixture_model(dicts(train), [1.0] * len(train))
    model = fit_mixture_model(dicts(train), list(law(train)), "linear")
    with pytest.raises(ValueError, match="sources"):
        search_mixture(model, {"web": 0.5, "code": 0.5}, 1000, seed=0)
    with pytest.raises(ValueError, match="unknown"):
        model.predict([{"web": 1.0, "poetry": 0.0}])
