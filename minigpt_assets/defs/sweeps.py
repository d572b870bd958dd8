"""Sweep assets, the loop that learns from cheap runs: sweep_points[sweep] -> point_mixture[point] ->
proxy_model[point] -> proxy_scores[point] -> mixture_search[sweep] -> mixture[<sweep>-searched] ->
mixture_transfer[sweep], and proxy_scores -> scaling_law[sweep] for ladders.

Points are their own partitions (`<sweep>.<label>`), apart from the mixture x experiment grid: the searched
mixture flows back into the ordinary `mixture` asset, and the graph of asset keys stays acyclic. In the store
a point is a mixture and its proxy run a pretraining run, so the ordinary training and evaluation code serves.
"""

import base64
import json
from pathlib import Path

import dagster as dg

from minigpt_assets.defs.automation import ON_DATA_OR_CODE_CHANGE
from minigpt_assets.defs.common import artifact_result
from minigpt_assets.defs.mixtures import ASSET as MIXTURE_ASSET
from minigpt_assets.defs.mixtures import shares_check
from minigpt_assets.defs.partitions import (Partitions, eval_to_points, points_to_sweep, same_sweep,
                                            searched_to_sweep, sweep_to_points, token_shards_to_points,
                                            token_shards_to_sweep)
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.defs.tokens import ASSET as TOKENS_ASSET
from minigpt_assets.recipes import Catalog
from minigpt_assets.science import mixture_loop, pipeline, scaling_loop
from minigpt_assets.settings import quiet_openmp, sweep_parallel

POINT_MIXTURE, PROXY_MODEL = "point_mixture", "proxy_model"
SCORES, POINTS = pipeline.SCORES_ASSET, pipeline.POINTS_ASSET
SEARCH, TRANSFER, SCALING = pipeline.SEARCH_ASSET, pipeline.TRANSFER_ASSET, pipeline.SCALING_ASSET


def _image(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _asset(name: str, pdef, deps: list, doc: str, kinds: set[str], pool: str | None = None):
    return dg.asset(name=name, partitions_def=pdef, deps=deps, group_name="science", code_version=f"{name}-v1",
                    automation_condition=ON_DATA_OR_CODE_CHANGE, kinds=kinds, pool=pool, description=doc)


def _pipes_launcher(context, pipes: dg.PipesSubprocessClient):
    def launch(command: list[str], _log: Path) -> int:
        pipes.run(context=context, command=command, env=quiet_openmp())
        return 0

    return launch


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    if parts.points is None or "sweep_recipe" not in recipe_assets or parts.token_shards is None:
        return []
    out: list = []
    identity = dg.IdentityPartitionMapping()

    @_asset(POINTS, parts.sweeps, [dg.AssetDep(recipe_assets["sweep_recipe"], partition_mapping=identity),
                                   dg.AssetDep(TOKENS_ASSET, partition_mapping=token_shards_to_sweep(cat))],
            "The sweep's points: mixtures sampled around the prior (the sources' natural token shares ** "
            "temperature), the hand-written mixtures of the transfer set, or the ladder's runs (DuckDB sweep_points).",
            {"duckdb"})
    def sweep_points(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        art, rows = pipeline.draw_points(Path(project.home), project.catalog(), context.partition_key)
        lines = ["| point | label | weights |", "|---|---|---|"] + [
            f"| {r['point']} | {r['label']} | {', '.join(f'{k} {v:.3f}' for k, v in json.loads(r['weights']).items())} |"
            for r in rows[:40]]
        return artifact_result(art, {"points": dg.MetadataValue.md("\n".join(lines))})

    @_asset(POINT_MIXTURE, parts.points, [
        dg.AssetDep(recipe_assets["point_recipe"], partition_mapping=identity),
        dg.AssetDep(POINTS, partition_mapping=sweep_to_points(cat)),
        dg.AssetDep(TOKENS_ASSET, partition_mapping=token_shards_to_points(cat))],
        "The point's mixture: an exact token-budget plan with the weights sweep_points drew (DuckDB mixture_stats).",
        {"parquet"})
    def point_mixture(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        art, rows, warnings = pipeline.plan_point(Path(project.home), project.catalog(), context.partition_key)
        for w in warnings:
            context.log.warning(w)
        return artifact_result(art, {"composition": _image((art.path / "composition.png").read_bytes(), "composition")})

    @_asset(PROXY_MODEL, parts.points, [dg.AssetDep(POINT_MIXTURE, partition_mapping=identity),
                                        dg.AssetDep(recipe_assets["point_recipe"], partition_mapping=identity)],
            "Train the point's proxy (its sweep's proxy experiment, or its ladder run); runs in the `proxy` pool, "
            "which the compute profile sizes so that several tiny models share a GPU.", {"pytorch"}, pool="proxy")
    def proxy_model(context: dg.AssetExecutionContext, project: ProjectResource,
                    pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        out = pipeline.train_point(Path(project.home), project.catalog(), context.partition_key,
                                   launch=_pipes_launcher(context, pipes))
        weights = next(f["sha256"] for f in out.artifact.manifest["files"] if f["path"] == "model.safetensors")
        md = {"final_loss": dg.MetadataValue.float(float(out.summary["final_loss"] or float("nan"))),
              "tokens": dg.MetadataValue.int(int(out.summary["tokens"])),
              "loss_curve": _image((out.artifact.path / "loss_curve.png").read_bytes(), "loss")}
        return dg.MaterializeResult(data_version=dg.DataVersion(weights[:16]), metadata=md)

    evals = [dg.AssetDep(recipe_assets["eval_recipe"], partition_mapping=eval_to_points(cat))] \
        if "eval_recipe" in recipe_assets else []

    @_asset(SCORES, parts.points, [dg.AssetDep(PROXY_MODEL, partition_mapping=identity), *evals,
                                   dg.AssetDep(recipe_assets["sweep_recipe"], partition_mapping=sweep_to_points(cat))],
            "The point's objective (the sweep's eval, a weighted mean of its tasks) on the proxy's checkpoint "
            "(DuckDB proxy_objectives; per-example rows in eval_results).", {"pytorch", "duckdb"}, pool="proxy")
    def proxy_scores(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        art, res = pipeline.score_point(Path(project.home), project.catalog(), context.partition_key,
                                        log=context.log.info)
        return artifact_result(art, {"objective": dg.MetadataValue.float(float(res["objective"])),
                                     **{t: dg.MetadataValue.float(float(v)) for t, v in res["tasks"].items()}})

    out += [sweep_points, point_mixture, shares_check(point_mixture), proxy_model, proxy_scores]
    recipe = recipe_assets["sweep_recipe"]
    kinds = {k: {n for n, s in cat.sweeps.items() if s.kind == k} for k in ("mixture", "scaling")}

    def per_sweep(sweeps: set[str]) -> list[dg.AssetDep]:
        """What a per-sweep asset reads: its points' scores and its recipe."""
        return [dg.AssetDep(SCORES, partition_mapping=points_to_sweep(cat, sweeps)),
                dg.AssetDep(recipe, partition_mapping=same_sweep(sweeps))]
    if parts.mixture_sweeps is not None:
        @_asset(SEARCH, parts.mixture_sweeps, per_sweep(kinds["mixture"]),
            "Regress the objective on the mixture weights (LightGBM, linear, data mixing law; chosen by k-fold "
            "cross-validated Spearman), search >= 100k sampled mixtures and average the top k: the weights of "
            "mixture[<sweep>-searched] (DuckDB mixture_fits).", {"lightgbm", "duckdb"})
        def mixture_search(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
            art, res = mixture_loop.search(Path(project.home), project.catalog(), context.partition_key,
                                           log=context.log.info)
            if res["failed_points"]:
                context.log.warning(f"points without a score (left out): {', '.join(res['failed_points'])}")
            return artifact_result(art, {
                "model": res["kind"], "cv_spearman": dg.MetadataValue.float(float(res["cv_spearman"])),
                "predicted_objective": dg.MetadataValue.float(res["predicted_objective"]),
                "searched": dg.MetadataValue.json(res["searched"]),
                "failed_points": dg.MetadataValue.json(res["failed_points"]),
                "predicted_vs_measured": _image((art.path / "predicted_vs_measured.png").read_bytes(), "fit"),
                "importances": _image((art.path / "importances.png").read_bytes(), "importances")})

        out.append(mixture_search)
        with_transfer = {n for n in kinds["mixture"] if cat.sweeps[n].transfer is not None}
        if with_transfer:
            @_asset(TRANSFER, dg.StaticPartitionsDefinition(sorted(with_transfer)), [
                dg.AssetDep(MIXTURE_ASSET, partition_mapping=searched_to_sweep(cat, with_transfer)),
                dg.AssetDep(SEARCH, partition_mapping=same_sweep(with_transfer)), *per_sweep(with_transfer)],
                "Train the transfer set (searched, hand-written, top/bottom/random points) with the larger "
                "experiment; Spearman and pairwise decision accuracy between scales, and a paired test of the "
                "searched mixture against every hand-written one (DuckDB mixture_transfer).",
                {"pytorch", "duckdb"}, pool="training")
            def mixture_transfer(context: dg.AssetExecutionContext, project: ProjectResource
                                 ) -> dg.MaterializeResult:
                art, res = mixture_loop.transfer(Path(project.home), project.catalog(), context.partition_key,
                                                 parallel=sweep_parallel(),
                                                 log=context.log.info)
                return artifact_result(art, {
                    "spearman": dg.MetadataValue.float(float(res["spearman"])),
                    "decision_accuracy": dg.MetadataValue.float(float(res["decision_accuracy"])),
                    "searched_beats_all_hand_written": dg.MetadataValue.bool(res["searched_beats_all_hand_written"]),
                    "failed": dg.MetadataValue.json(res["failed"]),
                    "transfer": _image((art.path / "transfer.png").read_bytes(), "transfer")})

            out.append(mixture_transfer)
    if parts.scaling_sweeps is not None:
        @_asset(SCALING, parts.scaling_sweeps, per_sweep(kinds["scaling"]),
            "Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta by Huber loss and L-BFGS from a grid, "
            "bootstrap intervals, held-out error, compute-optimal N and D, the target's loss; per task as well "
            "(DuckDB scaling_fits, scaling_predictions).", {"scipy", "duckdb"})
        def scaling_law(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
            art, res = scaling_loop.fit(Path(project.home), project.catalog(), context.partition_key,
                                        log=context.log.info)
            f = res["fits"]["objective"]
            md = {k: dg.MetadataValue.float(float(f[k])) for k in ("E", "A", "B", "alpha", "beta")}
            md["converged"] = dg.MetadataValue.bool(bool(f["converged"]))
            md["held_out_rel_errors"] = dg.MetadataValue.json(f["held_out_rel_errors"])
            md["failed_points"] = dg.MetadataValue.json(res["failed_points"])
            if res["failed_points"]:
                context.log.warning(f"runs without a score (left out): {', '.join(res['failed_points'])}")
            if "target" in f:
                md["target"] = dg.MetadataValue.json(f["target"])
            md["scaling"] = _image((art.path / "scaling.png").read_bytes(), "scaling")
            return artifact_result(art, md)

        out.append(scaling_law)
    return out
