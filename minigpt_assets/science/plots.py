"""Render the science layer's results as PNG bytes (matplotlib Figure + Agg canvas, no pyplot state).

Each function draws one figure for a report: predicted vs measured objective, per-source importances, a
scaling-law fit with held-out runs and the target prediction, and proxy-vs-target transfer of a ranking.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .decisions import decision_accuracy, rank_correlation

_SIZE = (6.4, 4.8)
_DPI = 100


def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=_SIZE, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def plot_predicted_vs_measured(predicted: list[float], measured: list[float], labels: list[str] | None,
                               title: str) -> bytes:
    """Scatter of predicted against measured objective with the y = x line (and labels, when given)."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if len(p) != len(m) or len(p) == 0:
        raise ValueError(f"predicted and measured must be non-empty and the same length, got {len(p)} and {len(m)}")
    if labels is not None and len(labels) != len(p):
        raise ValueError(f"got {len(labels)} labels for {len(p)} points")
    fig, ax = _new_figure()
    ax.scatter(m, p, s=24, color="tab:blue", zorder=3)
    lo, hi = float(min(p.min(), m.min())), float(max(p.max(), m.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="y = x")
    if labels is not None:
        for x, y, text in zip(m, p, labels):
            ax.annotate(str(text), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if len(p) >= 2 and np.ptp(p) > 0 and np.ptp(m) > 0:
        rho = rank_correlation(dict(enumerate(m)), dict(enumerate(p)))
        title = f"{title}\nSpearman {rho:.3f}, n = {len(p)}"
    ax.set_xlabel("measured")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_importances(importances: dict[str, float], title: str) -> bytes:
    """Horizontal bars of per-source importance, largest on top."""
    if not importances:
        raise ValueError("no importances to plot")
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = _new_figure()
    ax.barh([k for k, _ in items], [float(v) for _, v in items], color="tab:green")
    ax.set_xlabel("importance (share)")
    ax.set_title(title)
    return _png(fig)


def plot_scaling(law: Any, N: list[float], D: list[float], loss: list[float], held_out: list[bool],
                 target: tuple[float, float] | None, title: str) -> bytes:
    """Loss against compute 6ND (log x): fitted runs, held-out runs, the law per model size and the target.

    `law` is a ScalingLaw; `target` is (N, D) of the run to predict, drawn with its bootstrap interval when the
    law has one.
    """
    n, d, l = (np.asarray(x, dtype=float) for x in (N, D, loss))
    held = np.asarray(held_out, dtype=bool)
    if not (len(n) == len(d) == len(l) == len(held)):
        raise ValueError("N, D, loss and held_out must have the same length")
    fig, ax = _new_figure()
    sizes = sorted(set(n.tolist()) | ({float(target[0])} if target else set()))
    colors = [f"C{i % 10}" for i in range(len(sizes))]
    for size, color in zip(sizes, colors):
        ds = d[n == size]
        if target and size == float(target[0]):
            ds = np.append(ds, float(target[1]))
        d_lo, d_hi = (float(ds.min()) / 2, float(ds.max()) * 2) if len(ds) else (1.0, 2.0)
        grid = np.geomspace(d_lo, d_hi, 60)
        ax.plot(6 * size * grid, law.predict(np.full_like(grid, size), grid), color=color, lw=1,
                label=f"N = {size:.3g}")
        fit_mask, held_mask = (n == size) & ~held, (n == size) & held
        ax.scatter(6 * n[fit_mask] * d[fit_mask], l[fit_mask], color=color, s=22, zorder=3)
        ax.scatter(6 * n[held_mask] * d[held_mask], l[held_mask], facecolors="none", edgecolors=color, s=60,
                   marker="s", linewidths=1.5, zorder=3)
    if held.any():
        ax.scatter([], [], facecolors="none", edgecolors="black", marker="s", label="held out")
    if target:
        tn, td = float(target[0]), float(target[1])
        pred = float(law.predict(tn, td))
        yerr = None
        if len(getattr(law, "boot", ())) > 0:
            lo, hi = law.predict_interval(tn, td)
            yerr = [[pred - lo], [hi - pred]]
        ax.errorbar([6 * tn * td], [pred], yerr=yerr, fmt="*", color="black", ms=12, capsize=4, zorder=4,
                    label=f"target {pred:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("compute 6ND (FLOPs)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def plot_transfer(small: dict[str, float], large: dict[str, float], highlight: list[str], title: str) -> bytes:
    """Proxy (small-scale) against target (large-scale) objective per candidate, names shown, `highlight` in red."""
    keys = [k for k in small if k in large]
    if len(keys) < 1:
        raise ValueError("no candidate is present at both scales")
    x = np.array([float(small[k]) for k in keys])
    y = np.array([float(large[k]) for k in keys])
    marked = set(highlight)
    fig, ax = _new_figure()
    for xi, yi, k in zip(x, y, keys):
        hot = k in marked
        ax.scatter([xi], [yi], color="tab:red" if hot else "tab:blue", s=40 if hot else 22, zorder=3)
        ax.annotate(k, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points",
                    color="tab:red" if hot else "black")
    if len(keys) >= 2:
        rho = rank_correlation(small, large)
        acc = decision_accuracy(small, large)
        rho_text = "n/a" if math.isnan(rho) else f"{rho:.3f}"
        title = f"{title}\nSpearman {rho_text}, decision accuracy {acc:.2f}, n = {len(keys)}"
    ax.set_xlabel("proxy objective (small scale)")
    ax.set_ylabel("target objective (large scale)")
    ax.set_title(title, fontsize=10)
    return _png(fig)
