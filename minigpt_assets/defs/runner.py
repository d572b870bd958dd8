"""Run the asset graph from Python (for `minigpt demo` / `minigpt materialize`) on the instance under MINIGPT_HOME.

Each (asset, partition) is one Dagster run of the implicit asset job, in dependency order, so every run shows up
in `dagster dev` (same DAGSTER_HOME) with its metadata, checks and lineage.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from minigpt_assets.definitions import build_definitions
from minigpt_assets.defs.partitions import Partitions
from minigpt_assets.defs.recipe_versions import report_versions
from minigpt_assets.recipes import Catalog
from minigpt_assets.settings import Settings, environment, shared_cores

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # we print one line per step


@dataclass
class StepOutcome:
    asset: str
    partition: str | None
    ok: bool
    seconds: float
    metadata: dict = field(default_factory=dict)
    error: str = ""
    checks_failed: list[str] = field(default_factory=list)
    fresh: bool = False
    waiting: str = ""  # not run: an upstream partition outside this pass was never materialized


def instance_for(settings: Settings) -> dg.DagsterInstance:
    """The persistent SQLite instance under $MINIGPT_HOME/dagster (or $DAGSTER_HOME when set)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def stale_resolver(defs: dg.Definitions, instance: dg.DagsterInstance):
    """Dagster's own staleness resolver (the one behind the UI's "Unsynced" badge). Internal API: kept here only."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                          instance=instance, asset_graph=graph)
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def materialize_graph(settings: Settings, select: set[str] | None = None, partitions: set[str] | None = None,
                      log: Callable[[str], None] = print, force: bool = False,
                      exclude: set[str] | None = None) -> list[StepOutcome]:
    """Materialize every selected asset partition that is missing or stale, in dependency order.

    Stale means what the Dagster UI means: a recipe (observed data version), an upstream data version or the
    asset's code version changed since the last materialization. Upstream re-runs that produce identical bytes
    keep their data version, so nothing below them is stale. `force` runs everything selected.
    A failed step skips the partitions that read it.
    """
    settings.export()
    defs = build_definitions(settings)
    instance = instance_for(settings)
    cat = Catalog.load_or_raise(settings.recipes)
    report_versions(instance, cat, Partitions.from_catalog(cat))
    graph = defs.resolve_asset_graph()
    job = defs.resolve_implicit_global_asset_job_def()
    outcomes: list[StepOutcome] = []
    failed: set[tuple[str, str | None]] = set()
    waiting: set[tuple[str, str | None]] = set()  # not run: an upstream partition was never materialized
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        name = key.to_user_string()
        if not node.is_materializable or (select and name not in select) or (exclude and name in exclude):
            continue
        pkeys = node.partitions_def.get_partition_keys() if node.partitions_def else [None]
        for pk in pkeys:
            if partitions and pk is not None and pk not in partitions:
                continue
            blocked = [f"{a}[{p}]" for (a, p) in failed if _depends_on(node, dg.AssetKey(a), p, pk)]
            absent = _never_materialized(graph, instance, node, pk) or next(
                (f"{a}[{p}]" for (a, p) in waiting if _depends_on(node, dg.AssetKey(a), p, pk)), "")
            if absent and not blocked:
                outcomes.append(StepOutcome(name, pk, True, 0.0, waiting=absent))
                waiting.add((name, pk))
                log(f"  wait {name}[{pk}]: upstream {absent} not materialized yet")
                continue
            if blocked:
                outcomes.append(StepOutcome(name, pk, False, 0.0, error=f"skipped: upstream {blocked[0]} failed"))
                failed.add((name, pk))
                log(f"  skip {name}[{pk}]: upstream {blocked[0]} failed")
                continue
            if not force:
                status = stale_resolver(defs, instance).get_status(key, pk).value
                if status == "FRESH":
                    outcomes.append(StepOutcome(name, pk, True, 0.0, fresh=True))
                    log(f"  fresh {name}[{pk}]" if pk else f"  fresh {name}")
                    continue
            t0 = time.time()
            res = job.execute_in_process(asset_selection=[key], partition_key=pk, instance=instance,
                                         raise_on_error=False, run_config=QUIET)
            out = _outcome(name, pk, res, time.time() - t0)
            outcomes.append(out)
            if not out.ok:
                failed.add((name, pk))
            log(_describe(out))
    return outcomes


def _never_materialized(graph, instance: dg.DagsterInstance, node, pk: str | None) -> str:
    """The first upstream partition (through a recipe-built static mapping) that was never materialized, or "".
    A sweep's searched mixture waits for its mixture_search; a point for its sweep_points."""
    if node.assets_def is None or pk is None:
        return ""
    for parent in node.parent_keys:
        mapping = node.assets_def.get_partition_mapping(parent)
        if not isinstance(mapping, dg.StaticPartitionMapping) or not graph.get(parent).is_materializable:
            continue
        ups = [u for u, downs in mapping.downstream_partition_keys_by_upstream_partition_key.items() if pk in downs]
        done = instance.get_materialized_partitions(parent) if ups else set()
        missing = [u for u in ups if u not in done]
        if missing and len(missing) == len(ups):  # a point that failed leaves the others: only all-missing waits
            return f"{parent.to_user_string()}[{missing[0]}]"
    return ""


def _depends_on(node, parent: dg.AssetKey, parent_pk: str | None, pk: str | None) -> bool:
    """Whether partition `pk` of `node` reads partition `parent_pk` of `parent` (recipe-built static mappings)."""
    if parent not in node.parent_keys:
        return False
    mapping = node.assets_def.get_partition_mapping(parent) if node.assets_def else None
    if isinstance(mapping, dg.StaticPartitionMapping):
        return pk in mapping.downstream_partition_keys_by_upstream_partition_key.get(parent_pk, ())
    if isinstance(mapping, dg.IdentityPartitionMapping) or mapping is None:
        return parent_pk is None or pk is None or parent_pk == pk
    return True


def _outcome(name: str, pk: str | None, res: dg.ExecuteInProcessResult, seconds: float) -> StepOutcome:
    md: dict = {}
    for ev in res.get_asset_materialization_events():
        for k, v in ev.materialization.metadata.items():
            md[k] = getattr(v, "value", v)
    failed = [e.asset_check_evaluation_data for e in res.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.asset_check_evaluation_data.passed]
    checks_failed = [c.check_name for c in failed if c.severity == dg.AssetCheckSeverity.ERROR]
    md["warnings"] = [f"{c.check_name} failed ({', '.join(f'{k} {_shown(v)}' for k, v in c.metadata.items())})"
                      for c in failed if c.severity != dg.AssetCheckSeverity.ERROR]
    error = ""
    if not res.success:
        for ev in res.all_events:
            if ev.event_type_value == "STEP_FAILURE" and ev.step_failure_data and ev.step_failure_data.error:
                err = ev.step_failure_data.error
                while err.cause is not None and err.cls_name in ("DagsterExecutionStepExecutionError",):
                    err = err.cause
                error = err.message.strip().splitlines()[-1] if err.message.strip() else err.cls_name
                break
        error = error or "run failed"
    return StepOutcome(name, pk, res.success and not checks_failed, seconds, md, error, checks_failed)


def _shown(v) -> str:
    """A metadata value in a log line: floats to 4 significant digits."""
    v = getattr(v, "value", v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _describe(o: StepOutcome) -> str:
    where = f"{o.asset}[{o.partition}]" if o.partition else o.asset
    if o.error:
        return f"  FAIL {where}: {o.error}"
    if o.checks_failed:
        return f"  FAIL {where}: blocking checks failed: {', '.join(o.checks_failed)}"
    md = o.metadata
    bits = [f"{md[k]} {k}" for k in ("documents", "removed", "exact_removed", "near_removed") if k in md]
    if "validation_accuracy" in md:
        bits.append(f"val acc {md['validation_accuracy']:.3f}")
    if md.get("optional_missing"):
        bits.append(f"optional source missing: {md['optional_missing']}")
    bits += [f"warning: {w}" for w in md.get("warnings", [])]
    return f"  ok   {where:<42} {o.seconds:6.1f}s  {', '.join(bits)}"


DATA_ASSETS = {"source_documents", "quality_classifier", "filtered_documents", "dedup_index",
               "deduplicated_documents", "tokenizer", "token_shards"}
POINT_ASSETS = ("point_mixture", "proxy_model", "proxy_scores")


def point_log(home, key: str):
    """Where a point worker of `minigpt sweep --parallel` writes its output (its training's steps and warnings)."""
    from pathlib import Path

    return Path(home) / "logs" / "sweeps" / f"{key}.log"


def _point_worker(home: str, recipes: str, workers: int, key: str, force: bool) -> list[StepOutcome]:
    """One point's three assets in a process of its own (`minigpt sweep --parallel`). Its output, and that of the
    training it starts, goes to `point_log` (appended), so the parent's progress bar stays readable."""
    import sys

    path = point_log(home, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        settings = Settings.from_env(home, recipes, workers)
        return materialize_graph(settings, set(POINT_ASSETS), {key}, log=print, force=force)


def materialize_sweep(settings: Settings, name: str, parallel: int = 1, log: Callable[[str], None] = print,
                      progress: Callable[[int, int], None] | None = None, force: bool = False) -> list[StepOutcome]:
    """Everything one sweep needs, in order: the data its sources need, sweep_points, every point (plan, proxy
    run, score; `parallel` points at once, each in a process of its own), then mixture_search, the searched
    mixture and mixture_transfer, or scaling_law. Fresh partitions are skipped; failed points are reported
    and the fits use the rest."""
    cat = Catalog.load_or_raise(settings.recipes)
    if name not in cat.sweeps:
        raise KeyError(f"unknown sweep {name!r} (known: {', '.join(sorted(cat.sweeps)) or 'none'})")
    out = materialize_graph(settings, DATA_ASSETS, None, log=log)  # dedup groups span sources: the whole data half
    out += materialize_graph(settings, {"sweep_points"}, {name}, log=log, force=force)
    if any(not o.ok or o.waiting for o in out if o.asset == "sweep_points"):
        return out
    out += materialize_points(settings, name, parallel, log, progress, force)
    kind = cat.sweeps[name].kind
    fits = ({"mixture_search"} if kind == "mixture" else {"scaling_law"})
    # mixture_transfer trains as many runs at once, each with its share of the cores
    with environment({"MINIGPT_SWEEP_PARALLEL": str(parallel), **shared_cores(parallel)}):
        out += materialize_graph(settings, fits, {name}, log=log, force=force)
        if kind == "mixture" and not any(not o.ok for o in out if o.asset == "mixture_search"):
            out += materialize_graph(settings, {"mixture"}, {f"{name}-searched"}, log=log, force=force)
            if cat.sweeps[name].transfer is not None:
                out += materialize_graph(settings, {"mixture_transfer"}, {name}, log=log, force=force)
    return out


def materialize_points(settings: Settings, name: str, parallel: int = 1, log: Callable[[str], None] = print,
                       progress: Callable[[int, int], None] | None = None, force: bool = False) -> list[StepOutcome]:
    """Every point of a sweep (plan, proxy run, score), `parallel` at once, each in a process of its own."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    keys = Catalog.load_or_raise(settings.recipes).sweep_point_keys(name)
    out: list[StepOutcome] = []
    done = 0
    if progress:
        progress(done, len(keys))
    if parallel <= 1:
        for k in keys:
            out += materialize_graph(settings, set(POINT_ASSETS), {k}, log=log, force=force)
            done += 1
            if progress:
                progress(done, len(keys))
        return out
    import multiprocessing

    # spawn, not fork: this process may hold Dagster, gRPC and W&B threads, and a forked child can deadlock on
    # a lock one of them held (seen: workers idle for minutes)
    # each worker (and the training it starts) gets its share of the cores: spawned children inherit this
    # environment (the pool spawns them as points are submitted), restored once the pool is done
    workers = max(1, min(settings.workers, (os.cpu_count() or 1) // parallel))
    with environment(shared_cores(parallel)), \
            ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        futs = {pool.submit(_point_worker, str(settings.home), str(settings.recipes), workers, k, force): k
                for k in keys}
        for f in as_completed(futs):
            try:
                res = f.result()
            except Exception as e:  # a crashed worker fails its point, not the sweep
                res = [StepOutcome("proxy_model", futs[f], False, 0.0,
                                   error=(str(e).strip().splitlines() or [type(e).__name__])[-1])]
            for o in res:
                if not o.fresh:
                    log(_describe(o))
            if any(not o.ok for o in res):
                log(f"       its output: {point_log(settings.home, futs[f])}")
            out += res
            done += 1
            if progress:
                progress(done, len(keys))
    return out
