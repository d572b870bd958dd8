"""Evaluate published checkpoints from recipes, compare runs, check contamination; shared by `minigpt evaluate |
compare` and the Dagster assets (no Dagster here).

- `evaluate_run`: every active eval recipe on one run's checkpoint (the pretrained model by default: mixtures
  and architectures are pretraining choices; `stage` picks a later one). Per-example rows go to DuckDB
  `eval_results`, per-run aggregates with bootstrap intervals to `eval_scores`, and an artifact
  `benchmark_scores/<experiment>+<mixture>` holds both (its content hash is the data version). W&B gets the scores.
- `compare_runs`: the paired comparison of every evaluated run (or the chosen ones) on their shared examples,
  a Markdown report with PNGs under `$MINIGPT_HOME/reports/`, and `eval_tests` / `eval_verdicts`.
- `contamination`: the n-gram overlap of every eval recipe's examples with a mixture's training documents.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from minigpt_assets.evaluation.config import BitsPerByteEval, CodeEval, HeldOutChoiceEval, MultipleChoiceEval
from minigpt_assets.recipes import Catalog, expand_location
from minigpt_assets.store import Artifact, ArtifactStore, StatsDB
from minigpt_assets.training.pipeline import STAGE_ASSETS, PipelineError, find_stage, stage_partition

ASSET = "benchmark_scores"
COMPARISON_ASSET = "experiment_comparison"
DEDUP_ASSET = "deduplicated_documents"


@dataclass
class EvalOutcome:
    artifact: Artifact | None  # None when only some eval recipes ran
    scores: list[dict]


def _eval_of(task: str) -> str:
    """The eval recipe a task comes from (`held_out_bpb/web` -> `held_out_bpb`)."""
    return task.split("/", 1)[0]


def held_out_reader(store: ArtifactStore, cat: Catalog) -> Callable[[str, int | None, int | None], list]:
    from minigpt_assets.evaluation.held_out import held_out_documents

    cache: dict[str, list] = {}

    def read(source: str, max_documents: int | None, max_bytes: int | None) -> list[tuple[str, str]]:
        if source not in cache:
            art = store.current(DEDUP_ASSET, source)
            if art is None:
                raise PipelineError(f"no deduplicated documents of source {source!r} yet: materialize "
                                    f"{DEDUP_ASSET}[{source}] first")
            cache[source] = held_out_documents(art.files(".parquet"), cat.sources[source].validation_fraction)
        docs, out, total = cache[source], [], 0
        for i, t in docs:
            n = len(t.encode("utf-8", "surrogatepass"))
            if (max_documents is not None and len(out) >= max_documents) or \
                    (max_bytes is not None and out and total + n > max_bytes):
                break
            out.append((i, t))
            total += n
        return out

    return read


def _available_sources(store: ArtifactStore, cat: Catalog, names: list[str]) -> list[str]:
    """Sources with published documents (an optional source missing on this machine is left out)."""
    return [s for s in names if store.current(DEDUP_ASSET, s) is not None]


def evaluate_run(home: Path, cat: Catalog, experiment: str, mixture: str, stage: str | None = None,
                 evals: list[str] | None = None, device: str | None = None,
                 log: Callable[[str], None] = lambda s: None, dtype: str = "float32") -> EvalOutcome:
    """The eval recipes on one run's published checkpoint of `stage` (default: its pretraining)."""
    if experiment not in cat.experiments:
        raise PipelineError(f"unknown experiment {experiment!r} (known: {', '.join(sorted(cat.experiments))})")
    _, st = find_stage(cat, experiment, stage)
    model = ArtifactStore(home).current(STAGE_ASSETS[st.kind], stage_partition(experiment, mixture))
    if model is None:
        raise PipelineError(f"no {st.stage_name} checkpoint of {experiment} on {mixture} yet: "
                            f"minigpt train --experiment {experiment} --mixture {mixture} --stage {st.stage_name}")
    part = stage_partition(experiment, mixture) + ("" if st.stage_name == "pretrain" else f"+{st.stage_name}")
    wandb = load_profile_wandb(cat.experiments[experiment].compute)
    return _evaluate_and_record(home, cat, model.path, model.version, experiment, mixture, st.stage_name, evals,
                                device, log, part, wandb, dtype)


def evaluate_folder(home: Path, cat: Catalog, folder: Path, name: str, stage: str = "pretrain",
                    evals: list[str] | None = None, device: str | None = None,
                    log: Callable[[str], None] = lambda s: None, dtype: str = "float32") -> EvalOutcome:
    """The eval recipes on any model folder (ours, or an HF export or download), recorded as experiment `name`,
    mixture `external`, so `minigpt compare` can put it next to the trained runs."""
    if not (Path(folder) / "tokenizer.json").is_file():
        raise PipelineError(f"{folder}: not a model folder with its tokenizer (tokenizer.json missing)")
    return _evaluate_and_record(home, cat, Path(folder), None, name, "external", stage, evals, device, log, None,
                                load_profile_wandb("local"), dtype)


def load_profile_wandb(compute: str):
    from minigpt_assets.settings import load_profile

    return load_profile(compute).training.wandb


def _evaluate_and_record(home: Path, cat: Catalog, model_path: Path, model_version: str | None, experiment: str,
                         mixture: str, stage: str, evals: list[str] | None, device: str | None, log,
                         part: str | None,
                         wandb_cfg, dtype: str = "float32") -> EvalOutcome:
    import torch

    from minigpt_assets.evaluation.stats import aggregate, with_perplexity
    from minigpt_assets.evaluation.suite import evaluate

    store = ArtifactStore(home)
    names = evals if evals is not None else cat.active_evals()
    unknown = [n for n in names if n not in cat.evals]
    if unknown:
        raise PipelineError(f"unknown eval recipe(s) {unknown} (known: {', '.join(sorted(cat.evals))})")
    recipes = {n: cat.evals[n] for n in names}
    sources = {n: _available_sources(store, cat, cat.eval_sources(n)) for n in names
               if isinstance(recipes[n], (BitsPerByteEval, HeldOutChoiceEval))}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")  # fp32 on a GPU equals the CPU's scores
    log(f"evaluating {model_path} on {device} ({dtype})")
    rows = evaluate(model_path, recipes, sources, held_out_reader(store, cat), device, log, getattr(torch, dtype))
    rows = [{"mixture": mixture, "experiment": experiment, "stage": stage, **r} for r in rows]
    scores = [{**s, "stage": stage} for s in with_perplexity(aggregate(rows))]
    db = StatsDB(home)
    for name in names:  # one writer per (run, eval): evaluating one recipe again replaces only its rows
        key = f"{experiment}+{mixture}+{stage}+{name}"
        db.write("eval_results", key, [r for r in rows if _eval_of(r["task"]) == name])
        db.write("eval_scores", key, [s for s in scores if _eval_of(s["task"]) == name])
    art = None
    if evals is None and part is not None:  # the artifact is a run's full evaluation; a subset only updates tables
        import pyarrow as pa
        import pyarrow.parquet as pq

        with store.stage(ASSET, part) as stg:
            pq.write_table(pa.Table.from_pylist(rows), stg.path / "results.parquet")
            (stg.path / "scores.json").write_text(json.dumps(scores, indent=1, sort_keys=True) + "\n")
            art = stg.publish(counts={"examples": len({(r["task"], r["example"]) for r in rows}),
                                      "tasks": len({r["task"] for r in rows})},
                              meta={"model": str(model_path), "model_version": model_version, "evals": names})
    _wandb_scores(wandb_cfg, experiment, mixture, stage, scores, home)
    return EvalOutcome(art, scores)


def _wandb_scores(cfg, experiment: str, mixture: str, stage: str, scores: list[dict], home: Path) -> None:
    """Log the scores to W&B (the experiment's compute profile: offline by default; WANDB_MODE overrides)."""
    import os

    mode = os.environ.get("WANDB_MODE") or cfg.mode
    if mode == "disabled":
        return
    try:
        import wandb
    except ImportError:
        return
    d = Path(home) / "wandb"
    d.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=cfg.project, entity=cfg.entity, mode=mode, dir=str(d), job_type="eval",
                     name=f"{experiment}/{mixture}/{stage}/eval", group=f"{experiment}/{mixture}", reinit=True)
    run.log({f"eval/{s['task']}/{s['metric']}": s["value"] for s in scores if not math.isnan(s["value"])})
    run.finish()


def compare_runs(home: Path, experiments: list[str] | None = None, mixtures: list[str] | None = None,
                 stage: str = "pretrain", alpha: float = 0.05, correction: str = "holm",
                 out_dir: Path | None = None, title: str | None = None):
    """Compare every evaluated run (filtered by experiment / mixture) on their shared examples; returns the
    Comparison and the report's path."""
    from minigpt_assets.evaluation.report import render_report
    from minigpt_assets.evaluation.stats import compare

    from minigpt_assets.recipes import MODEL_SLUG

    for name in [*(experiments or []), *(mixtures or []), stage]:
        if not MODEL_SLUG.match(name):
            raise PipelineError(f"not a recipe name: {name!r}")
    db = StatsDB(home)
    where = [f"stage = '{stage}'"]
    if experiments:
        where.append("experiment IN ({})".format(",".join(f"'{e}'" for e in experiments)))
    if mixtures:
        where.append("mixture IN ({})".format(",".join(f"'{m}'" for m in mixtures)))
    else:  # a sweep's point runs (mixtures `<sweep>.<label>`) are compared by the sweep's own assets
        where.append("mixture NOT LIKE '%.%'")
    cols, rows = db.query("SELECT mixture, experiment, task, metric, example, value, weight FROM eval_results "
                          f"WHERE {' AND '.join(where)}")
    if not rows:
        raise PipelineError("no evaluation results to compare yet: materialize benchmark_scores (or run "
                            "`minigpt evaluate`) first")
    data = [dict(zip(cols, r)) for r in rows]
    comparison = compare(data, alpha=alpha, correction=correction)
    runs = sorted({(r["experiment"], r["mixture"]) for r in data})
    _, curves = db.query("SELECT experiment, mixture, stage, step, loss, val_loss FROM training_metrics "
                         f"WHERE stage = '{stage}' ORDER BY experiment, mixture, step")
    curves = [dict(zip(("experiment", "mixture", "stage", "step", "loss", "val_loss"), c)) for c in curves
              if (c[0], c[1]) in runs]
    out_dir = Path(out_dir) if out_dir else Path(home) / "reports" / "comparison"
    report = render_report(comparison, out_dir, title or f"Comparison of {len(runs)} runs ({stage})",
                           loss_curves=curves or None)
    tables = comparison.to_rows()
    db.write("eval_tests", "latest", tables["eval_tests"])
    db.write("eval_verdicts", "latest", tables["eval_verdicts"])
    return comparison, report


def contamination(home: Path, cat: Catalog, mixture: str, n: int = 13,
                  evals: list[str] | None = None) -> list[dict]:
    """Per eval task: examples, how many share an n-gram with the mixture's training documents, the fraction,
    and the recipe's `max_contamination` (rows also go to DuckDB `eval_contamination`)."""
    from minigpt_assets.evaluation import tasks as T
    from minigpt_assets.evaluation.decontamination import contaminated_examples, training_texts
    from minigpt_assets.evaluation.held_out import continuation_rows, next_line_rows

    store = ArtifactStore(home)
    read = held_out_reader(store, cat)
    examples: dict[str, dict[str, str]] = {}
    limits: dict[str, float | None] = {}
    for name in (evals if evals is not None else cat.active_evals()):
        ev = cat.evals[name]
        if isinstance(ev, BitsPerByteEval):
            continue  # held-out documents are never trained on by construction (the split is by id)
        if isinstance(ev, HeldOutChoiceEval):
            for src in _available_sources(store, cat, cat.eval_sources(name)):
                docs = read(src, None, None)
                made = (next_line_rows(docs, ev.context, ev.choices, ev.examples, ev.seed) if ev.unit == "lines"
                        else continuation_rows(docs, ev.context, ev.continuation, ev.choices, ev.examples, ev.seed))
                examples[f"{name}/{src}"] = {r["id"]: r["context"] + r.get("delimiter", " ") + r["choices"][r["gold"]]
                                             for r in made}
                limits[f"{name}/{src}"] = ev.max_contamination
        elif isinstance(ev, MultipleChoiceEval):
            docs = T.load_docs(ev.format, expand_location(ev.path), ev.limit)
            examples[name] = {d.id: (d.text[d.gold] if isinstance(d.text, list) else d.text) + " " + d.target
                              for d in docs}
            limits[name] = ev.max_contamination
        elif isinstance(ev, CodeEval):
            from minigpt_assets.evaluation.code_exec import load_humaneval

            examples[name] = {p.task_id: p.prompt for p in load_humaneval(expand_location(ev.path))[:ev.limit]}
            limits[name] = ev.max_contamination
    texts = (t for src in cat.mixtures[mixture].sources if store.current(DEDUP_ASSET, src) is not None
             for t in training_texts(store.current(DEDUP_ASSET, src).files(".parquet"),
                                     cat.sources[src].validation_fraction))
    hits = contaminated_examples(examples, texts, n)
    rows = [{"mixture": mixture, "task": t, "ngram": n, "examples": len(ex), "contaminated": len(hits[t]),
             "fraction": len(hits[t]) / len(ex) if ex else 0.0, "max_fraction": limits[t]}
            for t, ex in sorted(examples.items())]
    StatsDB(home).write("eval_contamination", mixture, rows)
    return rows
