"""quality_classifier[classifier]: a fastText quality model trained on positive vs negative sources (DCLM-style)."""


import dagster as dg

from minigpt_assets.data.quality import train_classifier
from minigpt_assets.defs.common import artifact_result, data_asset
from minigpt_assets.defs.partitions import Partitions, source_to_classifier
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.defs.sources import ASSET as SOURCE_ASSET
from minigpt_assets.recipes import Catalog

ASSET = "quality_classifier"


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    if parts.classifiers is None:
        return []

    @data_asset(ASSET, parts.classifiers, [recipe_assets["classifier_recipe"],
                                           dg.AssetDep(SOURCE_ASSET, partition_mapping=source_to_classifier(cat))],
                "fasttext", version=2)  # v2: 2**18 n-gram buckets, batched predict
    def quality_classifier(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Train the classifier named by the partition on raw documents of its positive and negative sources."""
        name = context.partition_key
        cat = project.catalog()
        recipe = cat.classifiers[name]
        store = project.store()

        def shards(sources):
            return [p for s in sources for p in store.require(SOURCE_ASSET, s).files(".parquet", "shard")]

        with store.stage(ASSET, name) as st:
            metrics = train_classifier(shards(recipe.positive), shards(recipe.negative), recipe, st.path)
            art = st.publish(counts={k: v for k, v in metrics.items()},
                             meta={"recipe_hash": cat.classifier_hash(name)})
        project.stats().write("classifier_stats", name, [
            {"classifier": name, "split": k.split("_", 1)[0], "metric": k.split("_", 1)[1], "value": float(v)}
            for k, v in metrics.items() if "_" in k])
        context.log.info(f"{name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in metrics.items()))
        return artifact_result(art)

    @dg.asset_check(asset=quality_classifier, name="better_than_chance", blocking=True,
                    description="held-out accuracy of the classifier is above 0.6")
    def better_than_chance(context: dg.AssetCheckExecutionContext, project: ProjectResource) -> dg.AssetCheckResult:
        art = project.store().current(ASSET, context.partition_key)
        acc = float(art.counts.get("validation_accuracy", 0.0)) if art else 0.0
        return dg.AssetCheckResult(passed=acc > 0.6, metadata={"validation_accuracy": acc})

    return [quality_classifier, better_than_chance]
