"""Plots render to PNG bytes without pyplot state and reject mismatched input."""

from __future__ import annotations

import numpy as np
import pytest

from minigpt_assets.science import fit_scaling_law
from minigpt_assets.science.plots import (
    plot_importances,
    plot_predicted_vs_measured,
    plot_scaling,
    plot_transfer,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_every_plot_is_a_png():
    n = np.repeat(np.geomspace(1e6, 1e8, 5), 3)
    d = n * np.tile([5.0, 20.0, 80.0], 5)
    loss = (1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * np.exp(0.01 * np.random.default_rng(0).normal(size=15))
    held = n == n.max()
    law = fit_scaling_law(n[~held], d[~held], loss[~held], bootstrap=10)
    pngs = [
        plot_scaling(law, list(n), list(d), list(loss), list(held), (1e9, 2e10), "ladder"),
        plot_predicted_vs_measured([1.0, 2.1, 2.9], [1.1, 2.0, 3.0], ["a", "b", "c"], "fit"),
        plot_importances({"web": 0.6, "code": 0.3, "wiki": 0.1}, "importance"),
        plot_transfer({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.5, "b": 2.2, "c": 2.1}, ["b"], "transfer"),
    ]
    for png in pngs:
        assert png.startswith(PNG) and len(png) > 5_000


def test_mismatched_input_raises():
    with pytest.raises(ValueError):
        plot_predicted_vs_measured([1.0, 2.0], [1.0], None, "x")
    with pytest.raises(ValueError):
        plot_importances({}, "x")
