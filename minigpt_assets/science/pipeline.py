"""A sweep from recipes to artifacts: draw the points, plan and train and score each, then fit, search, transfer.

Shared by `minigpt sweep` and the Dagster assets (no Dagster here). Each step publishes an artifact under the
store (`sweep_points/<sweep>`, `mixture/<point>`, `pretrained_model/<experiment>+<point>`,
`proxy_scores/<point>`, `mixture_search/<sweep>`, `mixture_transfer/<sweep>`, `scaling_law/<sweep>`) and writes
its rows to DuckDB (`sweep_points`, `proxy_objectives`, `mixture_fits`, `mixture_transfer`, `scaling_fits`,
`scaling_predictions`). A point is trained and scored by the ordinary training and evaluation pipelines: its
runs land in `training_metrics`, its scores in `eval_scores`, its W&B runs in one group per sweep.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from minigpt_assets.data.mixture import TOKENS_ASSET, publish_mixture, token_key
from minigpt_assets.recipes import Catalog
from minigpt_assets.science.sweeps import MixtureSweep, Point
from minigpt_assets.store import Artifact, ArtifactStore, StatsDB

POINTS_ASSET, SCORES_ASSET = "sweep_points", "proxy_scores"
SEARCH_ASSET, TRANSFER_ASSET, SCALING_ASSET = "mixture_search", "mixture_transfer", "scaling_law"


class SweepError(RuntimeError):
    """One line for the user: what is missing or failed, and where."""


def _rel(sweep: str) -> str:
    return f"recipes/sweeps/{sweep}.yaml"


# ------------------------------------------------------------------------------------------------ points
def natural_token_counts(store: ArtifactStore, cat: Catalog, sweep: MixtureSweep) -> dict[str, float]:
    counts = {}
    for s in sweep.sources:
        art = store.require(TOKENS_ASSET, token_key(sweep.base.tokenizer, s))
        counts[s] = float(art.counts.get("train_tokens", 0))
    return counts


def draw_points(home: Path, cat: Catalog, sweep_name: str) -> tuple[Artifact, list[dict]]:
    """The sweep's points with their weights (mixture sweeps: sampled around the prior; scaling: the ladder),
    published as `sweep_points/<sweep>` and written to DuckDB `sweep_points`."""
    from minigpt_assets.science.sampling import natural_prior, sample_points

    store = ArtifactStore(home)
    sweep = cat.sweeps[sweep_name]
    points = [cat.points[k] for k in cat.sweep_point_keys(sweep_name)]
    meta: dict = {}
    if isinstance(sweep, MixtureSweep):
        sam = sweep.sampler
        counts = natural_token_counts(store, cat, sweep)
        missing = [s for s, c in counts.items() if c <= 0]
        if missing:
            raise SweepError(f"{_rel(sweep_name)}: sources: {', '.join(missing)} have no tokens on this machine")
        if sam.prior == "natural":
            prior = natural_prior(counts, sam.temperature)
        elif sam.prior == "uniform":
            prior = {s: 1.0 / len(sweep.sources) for s in sweep.sources}
        else:
            total = sum(sam.prior.values())
            prior = {s: sam.prior[s] / total for s in sweep.sources}
        sampled = [p for p in points if p.index is not None]
        draws = sample_points(prior, len(sampled), sweep.seed, concentration=tuple(sam.concentration),
                                concentration_steps=sam.concentration_steps,
                                max_ratio_to_prior=sam.max_ratio_to_prior, min_weight=sam.min_weight)
        weights = {p.key: draws[p.index] for p in sampled}
        for p in points:
            if p.index is None:
                hand = cat.mixtures[p.mixture].sources
                total = sum(hand.values())
                weights[p.key] = {s: hand.get(s, 0.0) / total for s in sweep.sources}
        meta = {"prior": prior, "token_counts": counts}
    else:
        mix = cat.mixtures[sweep.mixture].sources
        total = sum(mix.values())
        weights = {p.key: {s: w / total for s, w in mix.items()} for p in points}
    rows = [{"sweep": sweep_name, "kind": sweep.kind, "point": p.key, "label": p.label, "experiment": p.experiment,
             "mixture": p.mixture, "sample": p.index, "weights": json.dumps(weights[p.key], sort_keys=True),
             "model": p.model, "params": p.params, "tokens": p.tokens, "held_out": p.held_out} for p in points]
    with store.stage(POINTS_ASSET, sweep_name) as st:
        (st.path / "points.json").write_text(json.dumps({"points": rows, **meta}, indent=1, sort_keys=True) + "\n")
        art = st.publish(counts={"points": len(rows)}, meta={"recipe_hash": cat.sweep_hash(sweep_name)})
    StatsDB(home).write("sweep_points", sweep_name, rows)
    return art, rows


def point_weights(store: ArtifactStore, cat: Catalog, key: str) -> dict[str, float]:
    """The weights `sweep_points` drew for a point (zero weights left out)."""
    p = cat.points[key]
    art = store.require(POINTS_ASSET, p.sweep)
    rows = json.loads((art.path / "points.json").read_text())["points"]
    row = next((r for r in rows if r["point"] == key), None)
    if row is None:
        raise SweepError(f"point {key} is not in sweep_points[{p.sweep}]: materialize sweep_points[{p.sweep}] again")
    return {s: w for s, w in json.loads(row["weights"]).items() if w > 0}


def plan_point(home: Path, cat: Catalog, key: str) -> tuple[Artifact, list[dict], list[str]]:
    """The point's mixture plan (`mixture/<point>`, an exact plan like any mixture) and its mixture_stats rows."""
    store = ArtifactStore(home)
    recipe = cat.mixtures[key].model_copy(update={"sources": point_weights(store, cat, key)})
    art, rows, warnings = publish_mixture(store, cat, key, recipe)
    StatsDB(home).write("mixture_stats", key, rows)
    return art, rows, warnings


def searched_recipe(store: ArtifactStore, cat: Catalog, name: str):
    """The recipe of `<sweep>-searched`: the sweep's base with the weights mixture_search found."""
    sweep = cat.searched[name]
    art = store.require(SEARCH_ASSET, sweep)
    weights = json.loads((art.path / "search.json").read_text())["searched"]
    return cat.mixtures[name].model_copy(update={"sources": {s: w for s, w in weights.items() if w > 0}})


# ------------------------------------------------------------------------------------------------ runs
def train_point(home: Path, cat: Catalog, key: str, experiment: str | None = None, launch=None, device=None):
    """Train a point (or any mixture of a sweep) with its experiment (or the one given: the transfer target)."""
    from minigpt_assets.training.pipeline import subprocess_launcher, train_stage

    sweep = cat.points[key].sweep if key in cat.points else cat.searched[key]
    experiment = experiment or cat.points[key].experiment
    return train_stage(Path(home), cat, key, experiment, launch=launch or subprocess_launcher, device=device,
                       wandb_group=f"sweep/{sweep}")


def objective_spec(cat: Catalog, sweep_name: str) -> tuple[str, dict[str, float], str, bool]:
    """(eval, task weights, metric, lower_is_better) of a sweep's objective."""
    from minigpt_assets.evaluation.stats import higher_is_better

    sweep = cat.sweeps[sweep_name]
    obj = sweep.objective
    ev = cat.evals[obj.eval]
    bpb = getattr(ev, "kind", None) == "bits_per_byte"
    metric = obj.metric or ("bits_per_byte" if bpb else "acc")
    if obj.tasks:
        tasks = {(f"{obj.eval}/{t}" if bpb or "/" not in t else t): w for t, w in obj.tasks.items()}
    elif bpb:
        srcs = sweep.sources if isinstance(sweep, MixtureSweep) else list(cat.mixtures[sweep.mixture].sources)
        tasks = {f"{obj.eval}/{s}": 1.0 for s in srcs}
    else:
        tasks = {}
    return obj.eval, tasks, metric, not higher_is_better(metric)


def objective_of(scores: list[dict], tasks: dict[str, float], metric: str) -> tuple[float, dict[str, float]]:
    """The weighted mean of the tasks' scores (all tasks of the metric when none are named), and each task's."""
    per = {s["task"]: float(s["value"]) for s in scores if s["metric"] == metric}
    use = tasks or {t: 1.0 for t in per}
    missing = [t for t in use if t not in per]
    if missing:
        raise SweepError(f"the objective's task(s) {', '.join(missing)} were not scored (scored: {', '.join(sorted(per))})")
    total = sum(use.values())
    return sum(w * per[t] for t, w in use.items()) / total, {t: per[t] for t in use}


def score_run(home: Path, cat: Catalog, sweep_name: str, mixture: str, experiment: str, device=None,
              log: Callable[[str], None] = lambda s: None) -> dict:
    """Evaluate a run's checkpoint on the sweep's objective (rows in eval_results / eval_scores)."""
    from minigpt_assets.evaluation.pipeline import evaluate_run

    ev, tasks, metric, lower = objective_spec(cat, sweep_name)
    out = evaluate_run(Path(home), cat, experiment, mixture, evals=[ev], device=device, log=log)
    value, per_task = objective_of(out.scores, tasks, metric)
    return {"sweep": sweep_name, "mixture": mixture, "experiment": experiment, "objective": value,
            "metric": metric, "lower_is_better": lower, "tasks": per_task}


def score_point(home: Path, cat: Catalog, key: str, device=None, log=lambda s: None) -> tuple[Artifact, dict]:
    """The objective of a point's proxy run, published as `proxy_scores/<point>` and in DuckDB proxy_objectives."""
    from minigpt_assets.training.pipeline import stage_partition

    p = cat.points[key]
    store = ArtifactStore(home)
    model = store.require("pretrained_model", stage_partition(p.experiment, key))
    res = score_run(home, cat, p.sweep, key, p.experiment, device, log)
    # what the score belongs to: a later failed re-run must not pass this score off as the new point's
    res.update(point=key, label=p.label, model_version=model.version,
               mixture_version=store.require("mixture", key).version)
    with store.stage(SCORES_ASSET, key) as st:
        (st.path / "objective.json").write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
        art = st.publish(counts={"tasks": len(res["tasks"])}, meta={"objective": res["objective"]})
    StatsDB(home).write("proxy_objectives", key, [_objective_row(p, res, "proxy")])
    return art, res


def _objective_row(p: Point | None, res: dict, scale: str) -> dict:
    return {"sweep": res["sweep"], "point": res["mixture"], "label": p.label if p else res["mixture"],
            "scale": scale, "experiment": res["experiment"], "objective": res["objective"], "metric": res["metric"],
            "tasks": json.dumps(res["tasks"], sort_keys=True)}


def sweep_results(home: Path, cat: Catalog, sweep_name: str) -> tuple[list[dict], list[str]]:
    """(scored points with their weights and objective, keys of points with no score: failed or not run)."""
    store = ArtifactStore(home)
    art = store.require(POINTS_ASSET, sweep_name)
    rows = json.loads((art.path / "points.json").read_text())["points"]
    done, missing = [], []
    for r in rows:
        sc = store.current(SCORES_ASSET, r["point"])
        res = json.loads((sc.path / "objective.json").read_text()) if sc is not None else None
        if res is None or not _current(store, r, res):
            missing.append(r["point"])
            continue
        done.append({**r, "weights": json.loads(r["weights"]), "objective": res["objective"], "tasks": res["tasks"],
                     "lower_is_better": res["lower_is_better"]})
    return done, missing


def _current(store: ArtifactStore, row: dict, res: dict) -> bool:
    """Whether a point's score belongs to its current plan and checkpoint (a score left by an earlier version of a
    point whose re-run failed does not)."""
    from minigpt_assets.training.pipeline import stage_partition

    if "mixture_version" not in res:  # written by hand or by a test: trusted
        return True
    mix = store.current("mixture", row["point"])
    model = store.current("pretrained_model", stage_partition(row["experiment"], row["point"]))
    return (mix is not None and mix.version == res["mixture_version"] and model is not None
            and model.version == res["model_version"]
            and model.manifest.get("meta", {}).get("mixture_version", mix.version) == mix.version)


def png_b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def jsonable(x):
    """numpy scalars and arrays to plain JSON values (NaN/inf to None)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x

