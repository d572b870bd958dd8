"""The scaling half of the loop: fit L(N, D) = E + A/N^alpha + B/D^beta to a ladder's runs (the objective and
each task of it), check it on the held-out runs, and predict the target (`scaling_law/<sweep>`). Shared by
`minigpt sweep` and the assets (no Dagster here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from minigpt_assets.recipes import Catalog
from minigpt_assets.science.pipeline import SCALING_ASSET, SweepError, jsonable, sweep_results
from minigpt_assets.science.sweeps import ladder_params
from minigpt_assets.store import Artifact, ArtifactStore, StatsDB

MIN_RUNS = 5


def _fit_one(N, D, y, held, bootstrap: int, seed: int, target):
    from minigpt_assets.science import fit_scaling_law

    fit = ~held
    law = fit_scaling_law(N[fit], D[fit], y[fit], bootstrap=bootstrap, seed=seed)
    pred = np.asarray(law.predict(N, D), float)
    rel = (pred - y) / y
    out = {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta, "converged": law.converged,
           "intervals": getattr(law, "intervals", {}), "residuals": list(law.residuals),
           "held_out_rel_errors": rel[held].tolist(), "fit_rel_errors": rel[fit].tolist(),
           "predicted": pred.tolist()}
    if target is not None:
        tn, td = target
        lo, hi = law.predict_interval(tn, td) if bootstrap else (float("nan"), float("nan"))
        c = 6.0 * tn * td
        n_opt, d_opt = law.compute_optimal(c)
        out["target"] = {"params": tn, "tokens": td, "flops": c, "predicted": float(law.predict(tn, td)),
                         "low": lo, "high": hi, "compute_optimal_params": n_opt, "compute_optimal_tokens": d_opt,
                         "compute_optimal_loss": float(law.predict(n_opt, d_opt))}
    return law, out


def fit(home: Path, cat: Catalog, sweep_name: str, log: Callable[[str], None] = lambda s: None
        ) -> tuple[Artifact, dict]:
    """Fit the objective and each of its tasks; publish `scaling_law/<sweep>` with a plot; rows to DuckDB
    scaling_fits and scaling_predictions. Fails with fewer than 5 scored runs outside the held-out ones."""
    from minigpt_assets.science.plots import plot_scaling

    store = ArtifactStore(home)
    sweep = cat.sweeps[sweep_name]
    done, missing = sweep_results(home, cat, sweep_name)
    fit_runs = [d for d in done if not d["held_out"]]
    if len(fit_runs) < MIN_RUNS or len({d["params"] for d in fit_runs}) < 2:
        raise SweepError(f"scaling_law[{sweep_name}]: {len(fit_runs)} runs to fit on ({len({d['params'] for d in fit_runs})}"
                         f" sizes), at least {MIN_RUNS} of 2 sizes needed (not scored: {', '.join(missing) or 'none'})")
    N = np.array([d["params"] for d in done], float)
    D = np.array([d["tokens"] for d in done], float)
    held = np.array([bool(d["held_out"]) for d in done])
    target = None
    if sweep.target is not None:
        target = (float(ladder_params(cat.models[sweep.target.model], sweep.ladder)), float(sweep.target.tokens))
    fits, laws = {}, {}
    tasks = ["objective", *sorted(done[0]["tasks"])]
    for task in tasks:
        y = np.array([d["objective"] if task == "objective" else d["tasks"][task] for d in done], float)
        boot = sweep.bootstrap if task == "objective" else min(sweep.bootstrap, 50)
        laws[task], fits[task] = _fit_one(N, D, y, held, boot, sweep.seed, target)
        f = fits[task]
        log(f"{sweep_name} {task}: E {f['E']:.3f} A {f['A']:.3g} B {f['B']:.3g} alpha {f['alpha']:.3f} "
            f"beta {f['beta']:.3f}; held-out errors {', '.join(f'{e:+.2%}' for e in f['held_out_rel_errors'])}")
    result = {"sweep": sweep_name, "runs": [{"point": d["point"], "label": d["label"], "params": d["params"],
                                             "tokens": d["tokens"], "held_out": d["held_out"],
                                             "objective": d["objective"], "tasks": d["tasks"]} for d in done],
              "fits": fits, "failed_points": missing, "parameters": sweep.ladder.parameters,
              "target": sweep.target.model_dump() if sweep.target else None}
    y = np.array([d["objective"] for d in done], float)
    png = plot_scaling(laws["objective"], N.tolist(), D.tolist(), y.tolist(), held.tolist(),
                       target, f"{sweep_name}: L(N, D) fitted on {int((~held).sum())} runs")
    with store.stage(SCALING_ASSET, sweep_name) as st:
        (st.path / "scaling.json").write_text(json.dumps(jsonable(result), indent=1, sort_keys=True) + "\n")
        (st.path / "scaling.png").write_bytes(png)
        art = st.publish(counts={"runs": len(done), "held_out": int(held.sum()), "failed_points": len(missing)},
                         meta={"recipe_hash": cat.sweep_hash(sweep_name)})
    fit_rows, pred_rows = [], []
    for task, f in fits.items():
        iv = f.get("intervals") or {}
        errs = f["held_out_rel_errors"]
        fit_rows.append({"sweep": sweep_name, "task": task, **{k: f[k] for k in ("E", "A", "B", "alpha", "beta")},
                         **{f"{k}_{side}": (iv.get(k) or (None, None))[i] for k in ("E", "alpha", "beta")
                            for i, side in ((0, "low"), (1, "high"))},
                         "runs": int((~held).sum()), "held_out_runs": int(held.sum()),
                         "held_out_max_rel_error": max((abs(e) for e in errs), default=None),
                         "converged": bool(f["converged"])})
        for d, pr in zip(done, f["predicted"]):
            obs = d["objective"] if task == "objective" else d["tasks"][task]
            pred_rows.append({"sweep": sweep_name, "task": task, "kind": "held_out" if d["held_out"] else "fit",
                              "label": d["label"], "params": d["params"], "tokens": d["tokens"],
                              "flops": 6.0 * d["params"] * d["tokens"], "observed": obs, "predicted": pr,
                              "low": None, "high": None, "rel_error": (pr - obs) / obs})
        if "target" in f:
            tg = f["target"]
            pred_rows.append({"sweep": sweep_name, "task": task, "kind": "target", "label": sweep.target.model,
                              "params": tg["params"], "tokens": tg["tokens"], "flops": tg["flops"], "observed": None,
                              "predicted": tg["predicted"], "low": tg["low"], "high": tg["high"], "rel_error": None})
            pred_rows.append({"sweep": sweep_name, "task": task, "kind": "compute_optimal",
                              "label": f"{tg['flops']:.3g} FLOPs", "params": tg["compute_optimal_params"],
                              "tokens": tg["compute_optimal_tokens"], "flops": tg["flops"], "observed": None,
                              "predicted": tg["compute_optimal_loss"], "low": None, "high": None, "rel_error": None})
    db = StatsDB(home)
    db.write("scaling_fits", sweep_name, jsonable(fit_rows))
    db.write("scaling_predictions", sweep_name, jsonable(pred_rows))
    return art, result
