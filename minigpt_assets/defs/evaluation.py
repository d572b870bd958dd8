"""Evaluation assets: benchmark_scores[experiment|mixture] (every eval recipe on the run's pretrained model) ->
experiment_comparison (paired tests between all evaluated runs, a Markdown report with plots), and the blocking
check `eval_contamination` on each mixture (n-gram overlap of eval examples with its training documents)."""

import base64
from pathlib import Path

import dagster as dg

from minigpt_assets.defs.automation import ON_DATA_OR_CODE_CHANGE
from minigpt_assets.defs.common import artifact_metadata
from minigpt_assets.defs.partitions import Partitions
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.defs.training import ASSET as PRETRAINED_ASSET
from minigpt_assets.defs.training import split_training_key
from minigpt_assets.evaluation.pipeline import ASSET, COMPARISON_ASSET, compare_runs, contamination, evaluate_run
from minigpt_assets.recipes import Catalog


def _scores_md(scores: list[dict]) -> str:
    lines = ["| task | metric | value | 95% CI | n |", "|---|---|---|---|---|"]
    lines += [f"| {s['task']} | {s['metric']} | {s['value']:.4f} | [{s['ci_low']:.4f}, {s['ci_high']:.4f}] | {s['n']} |"
              for s in scores]
    return "\n".join(lines)


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    if parts.training is None or parts.evals is None or "eval_recipe" not in recipe_assets:
        return []
    evals = dg.AssetDep(recipe_assets["eval_recipe"], partition_mapping=dg.AllPartitionMapping())

    @dg.asset(name=ASSET, partitions_def=parts.training, group_name="evaluation", code_version=f"{ASSET}-v1",
              deps=[dg.AssetDep(PRETRAINED_ASSET, partition_mapping=dg.IdentityPartitionMapping()), evals],
              automation_condition=ON_DATA_OR_CODE_CHANGE, kinds={"pytorch", "duckdb"}, pool="training",
              description="Every eval recipe (per-domain bits per byte, held-out and standard multiple-choice tasks, "
                          "code pass@k) on the run's pretrained model; per-example rows in DuckDB eval_results, "
                          "scores with bootstrap intervals in eval_scores.")
    def benchmark_scores(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        experiment, mixture = split_training_key(context.partition_key)
        out = evaluate_run(Path(project.home), project.catalog(), experiment, mixture, log=context.log.info)
        md = artifact_metadata(out.artifact, {"scores": dg.MetadataValue.md(_scores_md(out.scores))})
        for s in out.scores:
            md[f"{s['task']}/{s['metric']}"] = dg.MetadataValue.float(float(s["value"]))
        return dg.MaterializeResult(data_version=dg.DataVersion(out.artifact.version[:16]), metadata=md)

    @dg.asset(name=COMPARISON_ASSET, group_name="evaluation", code_version=f"{COMPARISON_ASSET}-v1",
              deps=[dg.AssetDep(ASSET, partition_mapping=dg.AllPartitionMapping())],
              automation_condition=ON_DATA_OR_CODE_CHANGE, kinds={"duckdb"},
              description="Paired comparison of every evaluated run on their shared examples: scores with bootstrap "
                          "intervals, Holm-corrected tests, a winner or 'no significant difference' per task, plots; "
                          "report.md under $MINIGPT_HOME/reports/comparison.")
    def experiment_comparison(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        comparison, report = compare_runs(Path(project.home))
        text = report.read_text()
        for png in sorted(report.parent.glob("*.png")):  # inline the plots so the UI shows them
            text = text.replace(f"]({png.name})", f"](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})")
        winners = [v for v in comparison.verdicts if v["verdict"] == "winner"]
        import hashlib

        digest = hashlib.sha256(report.read_bytes()).hexdigest()[:16]
        return dg.MaterializeResult(data_version=dg.DataVersion(digest), metadata={
            "report": dg.MetadataValue.md(text), "report_path": dg.MetadataValue.path(str(report)),
            "runs": dg.MetadataValue.int(len({s["run"] for s in comparison.scores})),
            "tasks": dg.MetadataValue.int(len(comparison.verdicts)),
            "significant_winners": dg.MetadataValue.int(len(winners)),
        })

    @dg.asset_check(asset="mixture", name="eval_contamination", blocking=True,
                    additional_deps=[dg.AssetDep(recipe_assets["eval_recipe"],
                                                 partition_mapping=dg.AllPartitionMapping())],
                    description="No eval task shares 13-grams with the mixture's training documents in more than its "
                                "recipe's max_contamination fraction of examples (blocks training when it does)")
    def eval_contamination(context: dg.AssetCheckExecutionContext, project: ProjectResource) -> dg.AssetCheckResult:
        rows = contamination(Path(project.home), project.catalog(), context.partition_key)
        bad = [r for r in rows if r["max_fraction"] is not None and r["fraction"] > r["max_fraction"]]
        md = {f"{r['task']}": dg.MetadataValue.float(float(r["fraction"])) for r in rows}
        if bad:
            md["over_limit"] = dg.MetadataValue.text(", ".join(f"{r['task']} {r['fraction']:.2f} > {r['max_fraction']}"
                                                               for r in bad))
        return dg.AssetCheckResult(passed=not bad, metadata=md)

    return [benchmark_scores, experiment_comparison, eval_contamination]
