"""The mixture half of the loop: fit a regression from weights to the proxies' objective and search it
(`mixture_search/<sweep>`), then train the transfer set at the larger scale and measure how far the proxies'
ranking held (`mixture_transfer/<sweep>`). Shared by `minigpt sweep` and the assets (no Dagster here)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from minigpt_assets.recipes import Catalog
from minigpt_assets.science.pipeline import (SEARCH_ASSET, TRANSFER_ASSET, SweepError, _objective_row, jsonable,
                                             objective_spec, score_run, sweep_results, train_point)
from minigpt_assets.science.sweeps import searched_name
from minigpt_assets.store import Artifact, ArtifactStore, StatsDB


def out_of_fold(weights: list[dict], objective: list[float], kind: str, folds: int, seed: int) -> np.ndarray:
    """Each point's prediction by the model of `kind` fitted without its fold (what "predicted" means in the
    predicted-against-measured plot; in-sample predictions would flatter the fit)."""
    from minigpt_assets.science import fit_mixture_model

    n = len(objective)
    k = min(folds, n)
    order = np.random.default_rng(seed).permutation(n)
    pred = np.full(n, np.nan)
    for f in range(k):
        test = order[f::k]
        train = np.setdiff1d(order, test)
        try:
            m = fit_mixture_model([weights[i] for i in train], [objective[i] for i in train], kind=kind, seed=seed)
        except ValueError:  # too few points left in this fold for this kind
            continue
        pred[test] = m.predict([weights[i] for i in test])
    return pred


def search(home: Path, cat: Catalog, sweep_name: str, log: Callable[[str], None] = lambda s: None
           ) -> tuple[Artifact, dict]:
    """Fit, cross-validate and search; publish `mixture_search/<sweep>` (search.json with the searched weights,
    and plots); rows to DuckDB mixture_fits. Fails when fewer than the minimum points were scored."""
    from scipy.stats import spearmanr

    from minigpt_assets.science import fit_mixture_model, search_mixture
    from minigpt_assets.science.plots import plot_importances, plot_predicted_vs_measured

    store = ArtifactStore(home)
    sweep = cat.sweeps[sweep_name]
    s = sweep.search
    done, missing = sweep_results(home, cat, sweep_name)
    need = s.min_points or len(sweep.sources) + 2
    if len(done) < need:
        raise SweepError(f"mixture_search[{sweep_name}]: {len(done)} of {len(done) + len(missing)} points scored, "
                         f"at least {need} needed (not scored: {', '.join(missing[:8])}"
                         f"{' ...' if len(missing) > 8 else ''})")
    lower = done[0]["lower_is_better"]
    weights = [{k: float(d["weights"].get(k, 0.0)) for k in sweep.sources} for d in done]
    y = [float(d["objective"]) for d in done]
    model = fit_mixture_model(weights, y, kind=s.model, folds=s.folds, seed=s.seed)
    log(f"{sweep_name}: {model.kind} chosen, cross-validated Spearman {model.cv_spearman:.3f} "
        f"({', '.join(f'{k} {v:.3f}' for k, v in model.cv_scores.items())})")
    prior = json.loads((store.require("sweep_points", sweep_name).path / "points.json").read_text())["prior"]
    sam = sweep.sampler
    searched = search_mixture(model, prior, s.candidates, s.seed, top_k=s.top_k, lower_is_better=lower,
                              concentration=tuple(sam.concentration), concentration_steps=sam.concentration_steps,
                              max_ratio_to_prior=sam.max_ratio_to_prior, min_weight=sam.min_weight)
    predicted = float(model.predict([searched])[0])
    oof = out_of_fold(weights, y, model.kind, s.folds, s.seed)
    ok = np.isfinite(oof)
    oof_rho = float(spearmanr(oof[ok], np.asarray(y)[ok])[0]) if ok.sum() > 2 else float("nan")
    best = (min if lower else max)(done, key=lambda d: d["objective"])
    result = {"sweep": sweep_name, "searched": searched, "predicted_objective": predicted, "prior": prior,
              "lower_is_better": lower, "kind": model.kind, "cv_spearman": model.cv_spearman,
              "cv_scores": model.cv_scores, "importances": model.importances, "converged": model.converged,
              "residuals": list(model.residuals), "out_of_fold_spearman": oof_rho,
              "points": [{"point": d["point"], "label": d["label"], "objective": d["objective"],
                          "out_of_fold": o} for d, o in zip(done, oof.tolist())],
              "scored": len(done), "failed_points": missing,
              "best_point": {"point": best["point"], "objective": best["objective"]}}
    with store.stage(SEARCH_ASSET, sweep_name) as st:
        (st.path / "search.json").write_text(json.dumps(jsonable(result), indent=1, sort_keys=True) + "\n")
        (st.path / "predicted_vs_measured.png").write_bytes(plot_predicted_vs_measured(
            [float(v) for v in oof], y, [d["label"] for d in done],
            f"{sweep_name}: {model.kind}, out-of-fold predictions"))
        (st.path / "importances.png").write_bytes(plot_importances(model.importances, f"{sweep_name}: {model.kind}"))
        art = st.publish(counts={"points": len(done), "failed_points": len(missing)},
                         meta={"recipe_hash": cat.sweep_hash(sweep_name), "kind": model.kind,
                               "cv_spearman": model.cv_spearman})
    StatsDB(home).write("mixture_fits", sweep_name, [
        {"sweep": sweep_name, "model": k, "cv_spearman": v, "chosen": k == model.kind, "points": len(done),
         "failed_points": len(missing), "predicted_optimum": predicted if k == model.kind else None,
         "searched": json.dumps(searched, sort_keys=True) if k == model.kind else None,
         "importances": json.dumps(jsonable(model.importances), sort_keys=True) if k == model.kind else None,
         "converged": bool(model.converged) if k == model.kind else None}
        for k, v in model.cv_scores.items()])
    return art, result


def transfer_set(cat: Catalog, sweep_name: str, done: list[dict]) -> list[tuple[str, str]]:
    """(mixture, role) of every run at the larger scale: the searched mixture, the hand-written mixtures' copies,
    the top / bottom k sampled points by proxy objective and k random others (seeded)."""
    sweep = cat.sweeps[sweep_name]
    t = sweep.transfer
    out = [(searched_name(sweep_name), "searched")]
    out += [(d["point"], "hand-written") for d in done if d["sample"] is None]
    sampled = [d for d in done if d["sample"] is not None]
    lower = done[0]["lower_is_better"] if done else True
    ranked = sorted(sampled, key=lambda d: d["objective"], reverse=not lower)  # best first
    chosen = {d["point"]: "top" for d in ranked[:t.top]}
    for d in ranked[::-1][:t.bottom]:
        chosen.setdefault(d["point"], "bottom")
    rest = [d["point"] for d in sampled if d["point"] not in chosen]
    rng = np.random.default_rng(t.seed)
    for k in rng.permutation(len(rest))[:t.random]:
        chosen[rest[int(k)]] = "random"
    out += sorted(chosen.items(), key=lambda kv: kv[0])
    return out


def paired_objective(home: Path, sweep_name: str, experiment: str, a: str, b: str, tasks: dict[str, float],
                     metric: str, n_boot: int, seed: int) -> dict:
    """Paired bootstrap of objective(a) - objective(b) on the shared examples of each objective task (examples
    resampled within each task; the objective is the weighted mean of the tasks' ratio scores)."""
    from minigpt_assets.evaluation.stats import align

    db = StatsDB(home)
    aligned = {}
    for task in tasks:
        rows = db.select("eval_results", "mixture, example, value, weight",
                         "experiment = ? AND task = ? AND metric = ? AND mixture IN (?, ?)",
                         [experiment, task, metric, a, b])
        ra = [{"example": r[1], "value": r[2], "weight": r[3]} for r in rows if r[0] == a]
        rb = [{"example": r[1], "value": r[2], "weight": r[3]} for r in rows if r[0] == b]
        aligned[task] = align(ra, rb)
    total = sum(tasks.values())
    rng = np.random.default_rng(seed)

    def obj(av, aw, bv, bw):
        return av.sum(-1) / aw.sum(-1) - bv.sum(-1) / bw.sum(-1)

    diff = sum(w * obj(*aligned[t].arrays()) for t, w in tasks.items()) / total
    boot = np.zeros(n_boot)
    for t, w in tasks.items():
        al = aligned[t]
        n = len(al.examples)
        if n == 0:
            return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
        idx = rng.integers(0, n, size=(n_boot, n))
        av, aw, bv, bw = (x[idx] for x in al.arrays())
        boot += w * obj(av, aw, bv, bw) / total
    lo, hi = np.quantile(boot, [0.025, 0.975])
    p = min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0)) + 1 / (n_boot + 1))
    return {"diff": float(diff), "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p)}


def transfer(home: Path, cat: Catalog, sweep_name: str, parallel: int = 1, launch=None, device=None,
             log: Callable[[str], None] = lambda s: None) -> tuple[Artifact, dict]:
    """Train the transfer set with the larger experiment (`parallel` runs at once), score each on the objective,
    and measure: Spearman between proxy and target objectives, pairwise decision accuracy with a bootstrap
    interval, and a paired test of the searched mixture against every hand-written one at the target scale.
    A member whose training fails is listed and left out. Publishes `mixture_transfer/<sweep>`."""
    from minigpt_assets.evaluation.stats import holm
    from minigpt_assets.science import decision_accuracy, decision_accuracy_interval, rank_correlation
    from minigpt_assets.science.plots import plot_transfer

    store = ArtifactStore(home)
    sweep = cat.sweeps[sweep_name]
    if sweep.transfer is None:
        raise SweepError(f"recipes/sweeps/{sweep_name}.yaml: transfer: required for mixture_transfer")
    t = sweep.transfer
    target, proxy = t.experiment, sweep.proxy
    done, _ = sweep_results(home, cat, sweep_name)
    search_art = store.require(SEARCH_ASSET, sweep_name)
    found = json.loads((search_art.path / "search.json").read_text())
    members = transfer_set(cat, sweep_name, done)
    name = searched_name(sweep_name)
    jobs = [(m, target) for m, _ in members] + [(name, proxy)]  # the searched mixture at both scales
    failed: dict[str, str] = {}

    def run(job: tuple[str, str]) -> None:
        mix, exp = job
        try:
            train_point(home, cat, mix, experiment=exp, launch=launch, device=device)
        except Exception as e:  # one failed run leaves the others and the statistics on the rest
            failed[f"{exp}/{mix}"] = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            log(f"  FAIL {exp}/{mix}: {failed[f'{exp}/{mix}']}")

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        list(pool.map(run, jobs))
    scores: dict[tuple[str, str], float] = {}
    scored_tasks: dict[str, float] = {}
    for mix, exp in jobs:
        if f"{exp}/{mix}" in failed:
            continue
        try:
            res = score_run(home, cat, sweep_name, mix, exp, device, log)
        except Exception as e:  # an eval that fails leaves the others
            failed[f"{exp}/{mix}"] = f"scoring: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
            continue
        if not np.isfinite(res["objective"]):
            failed[f"{exp}/{mix}"] = f"scoring: objective {res['objective']}"
            continue
        scores[(mix, exp)] = res["objective"]
        scored_tasks = {t: 1.0 for t in res["tasks"]}
        StatsDB(home).write("proxy_objectives", f"{mix}+{exp}", [_objective_row(
            cat.points.get(mix), res, "target" if exp == target else "proxy")])
    proxy_obj = {d["point"]: d["objective"] for d in done}
    if (name, proxy) in scores:
        proxy_obj[name] = scores[(name, proxy)]
    target_obj = {m: scores[(m, target)] for m, _ in members if (m, target) in scores}
    both = sorted(set(proxy_obj) & set(target_obj))
    lower = found["lower_is_better"]
    small, large = {m: proxy_obj[m] for m in both}, {m: target_obj[m] for m in both}
    rho = rank_correlation(small, large) if len(both) > 2 else float("nan")
    acc = decision_accuracy(small, large, lower_is_better=lower) if len(both) > 1 else float("nan")
    acc_ci = decision_accuracy_interval(small, large, samples=t.bootstrap, seed=t.seed) if len(both) > 2 \
        else (float("nan"), float("nan"))
    ev, tasks, metric, _ = objective_spec(cat, sweep_name)
    tasks = tasks or scored_tasks  # no tasks named: every task of the metric, equally weighted
    hand = [m for m, role in members if role == "hand-written" and m in target_obj]
    tests = {}
    if name in target_obj:
        for m in hand:
            tests[m] = paired_objective(home, sweep_name, target, name, m, tasks, metric, t.bootstrap, t.seed)
    p_adj = dict(zip(tests, holm([tests[m]["p_value"] for m in tests]))) if tests else {}
    for m, te in tests.items():
        better = te["diff"] < 0 if lower else te["diff"] > 0
        te.update(p_adjusted=float(p_adj[m]), searched_better=bool(better and p_adj[m] < 0.05))
    beats_all = bool(tests) and all(te["searched_better"] for te in tests.values())
    roles = dict(members)
    rows = [{"sweep": sweep_name, "mixture": m, "label": cat.points[m].label if m in cat.points else "searched",
             "role": roles[m], "proxy_objective": proxy_obj.get(m),
             "predicted_objective": found["predicted_objective"] if m == name else None,
             "target_objective": target_obj.get(m), "target_experiment": target,
             "diff_vs_searched": -tests[m]["diff"] if m in tests else None,
             "ci_low": -tests[m]["ci_high"] if m in tests else None,
             "ci_high": -tests[m]["ci_low"] if m in tests else None,
             "p_value": tests[m]["p_adjusted"] if m in tests else None,
             "searched_better": tests[m]["searched_better"] if m in tests else None} for m, _ in members]
    result = {"sweep": sweep_name, "target_experiment": target, "proxy_experiment": proxy, "members": rows,
              "spearman": rho, "decision_accuracy": acc, "decision_accuracy_ci": list(acc_ci),
              "pairs": len(both) * (len(both) - 1) // 2, "lower_is_better": lower, "tests": tests,
              "searched_beats_all_hand_written": beats_all, "failed": failed,
              "tokens": {"proxy": cat.points[done[0]["point"]].tokens if done else None,
                         "target": _stage_tokens(cat, target, name)}}
    with store.stage(TRANSFER_ASSET, sweep_name) as st:
        (st.path / "transfer.json").write_text(json.dumps(jsonable(result), indent=1, sort_keys=True) + "\n")
        (st.path / "transfer.png").write_bytes(plot_transfer(small, large, [name, *hand],
                                                             f"{sweep_name}: {proxy} -> {target}"))
        art = st.publish(counts={"members": len(members), "failed": len(failed)},
                         meta={"recipe_hash": cat.sweep_hash(sweep_name), "spearman": rho,
                               "decision_accuracy": acc})
    StatsDB(home).write("mixture_transfer", sweep_name, rows)
    return art, result


def _stage_tokens(cat: Catalog, experiment: str, mixture: str) -> int:
    from minigpt_assets.science.sweeps import stage_tokens

    return stage_tokens(cat.experiments[experiment].stages[0], cat.mixtures[mixture].seq_len)
