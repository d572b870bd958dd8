"""Chinchilla approach-3 fit: exact recovery, bootstrap coverage, extrapolation, compute-optimal split."""

from __future__ import annotations

import numpy as np
import pytest

from minigpt_assets.science import fit_scaling_law, flops, relative_errors

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al.


def chinchilla(n, d):
    return TRUE["E"] + TRUE["A"] / np.asarray(n) ** TRUE["alpha"] + TRUE["B"] / np.asarray(d) ** TRUE["beta"]


def ladder():
    n = np.repeat(np.geomspace(1e6, 1e8, 5), 3)
    d = n * np.tile([5.0, 20.0, 80.0], 5)
    return n, d


@pytest.fixture(scope="module")
def noisy_law():
    n, d = ladder()
    loss = chinchilla(n, d) * np.exp(0.01 * np.random.default_rng(0).standard_normal(len(n)))
    return fit_scaling_law(n, d, loss, bootstrap=100, seed=0), (n, d, loss)


def test_noiseless_fit_recovers_every_parameter():
    n, d = ladder()
    law = fit_scaling_law(n, d, chinchilla(n, d))
    for name, value in TRUE.items():
        assert getattr(law, name) == pytest.approx(value, rel=0.01), name
    assert law.converged
    assert max(abs(r) for r in law.residuals) < 1e-6
    assert len(law.residuals) == len(n)
    # extrapolation 10x beyond the largest model
    err = relative_errors(law, [1e9], [2e10], [chinchilla(1e9, 2e10)])
    assert abs(err[0]) < 1e-4


def test_bootstrap_intervals_cover_truth_on_noisy_data(noisy_law):
    law, _ = noisy_law
    assert law.converged
    assert set(law.intervals) == set(TRUE)
    for name, value in TRUE.items():
        lo, hi = law.intervals[name]
        assert lo <= getattr(law, name) <= hi, name
        assert lo <= value <= hi, name
    lo, hi = law.predict_interval(1e9, 2e10)
    assert lo <= chinchilla(1e9, 2e10) <= hi
    assert lo <= law.predict(1e9, 2e10) <= hi


def test_held_out_larger_model_is_predicted_closely(noisy_law):
    law, _ = noisy_law
    n_big = 2e8
    d_big = n_big * np.array([5.0, 20.0, 80.0])
    errs = relative_errors(law, np.full(3, n_big), d_big, chinchilla(n_big, d_big))
    assert max(abs(e) for e in errs) < 0.03  # 1 % noise per run, 2x beyond the ladder


def test_compute_optimal_closed_form():
    n, d = ladder()
    law = fit_scaling_law(n, d, chinchilla(n, d))
    c = 5.76e23
    n_opt, d_opt = law.compute_optimal(c)
    assert 6 * n_opt * d_opt == pytest.approx(c, rel=1e-12)
    a, b, al, be = TRUE["A"], TRUE["B"], TRUE["alpha"], TRUE["beta"]
    g = (al * a / (be * b)) ** (1 / (al + be))
    assert n_opt == pytest.approx(g * (c / 6) ** (be / (al + be)), rel=0.02)
    # it is the minimum along the iso-compute line
    for f in (0.8, 1.25):
        assert law.predict(n_opt, d_opt) < law.predict(n_opt * f, d_opt / f)
    ns, ds = law.compute_optimal(np.array([1e20, 1e22]))
    assert ns.shape == (2,) and np.all(np.diff(ns) > 0) and np.allclose(6 * ns * ds, [1e20, 1e22])


def test_predict_types_and_flops():
    n, d = ladder()
    law = fit_scaling_law(n, d, chinchilla(n, d))
    assert isinstance(law.predict(1e7, 2e8), float)
    assert law.predict(n, d).shape == n.shape
    assert flops(1e6, 2e7) == pytest.approx(1.2e14)
    with pytest.raises(ValueError, match="bootstrap"):
        law.predict_interval(1e9, 2e10)


def test_bad_ladders_raise():
    n, d = ladder()
    with pytest.raises(ValueError, match="distinct"):
        fit_scaling_law(np.full(5, 1e7), np.geomspace(1e8, 1e10, 5), chinchilla(1e7, np.geomspace(1e8, 1e10, 5)))
    with pytest.raises(ValueError, match="5 runs"):
        fit_scaling_law(n[:4], d[:4], chinchilla(n[:4], d[:4]))
    with pytest.raises(ValueError, match="same length"):
        fit_scaling_law(n, d[:-1], chinchilla(n, d))
    with pytest.raises(ValueError, match="loss"):
        fit_scaling_law(n, d, -chinchilla(n, d))
