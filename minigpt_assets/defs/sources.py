"""source_documents[source]: raw records of one source recipe as normalized, immutable Parquet shards."""


import dagster as dg

from minigpt_assets.data.ingest import ingest_source
from minigpt_assets.defs.common import artifact_checks, artifact_result, counts_table, data_asset, preview_markdown
from minigpt_assets.defs.partitions import Partitions
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.recipes import Catalog

ASSET = "source_documents"


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    @data_asset(ASSET, parts.sources, [recipe_assets["source_recipe"]], "parquet",
                version=4)  # v4: one shard series per input file (shard-<file>-<k>)
    def source_documents(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Read one source (jsonl, parquet, text dir, code tree, HF dataset, DuckDB query, builtin) into shards."""
        name = context.partition_key
        cat = project.catalog()
        recipe = cat.sources[name]
        store = project.store()
        with store.stage(ASSET, name) as st:
            res = ingest_source(name, recipe, st.path, engine=project.engine())
            art = st.publish(
                counts={"documents": res.documents, "bytes": res.bytes, "shards": len(res.shards),
                        "rejected": sum(res.rejects.values())},
                meta={"recipe_hash": cat.source_hash(name), "optional_missing": res.missing,
                      "kind": recipe.kind, "domain": recipe.domain, "license": recipe.license},
            )
        if res.missing:
            context.log.warning(f"optional source {name} skipped: {res.missing}")
        stats = project.stats()
        stats.write("source_stats", f"raw__{name}",
                    [{"source": name, "stage": "raw", "documents": res.documents, "bytes": res.bytes}])
        stats.write("source_errors", name, [
            {"source": name, "reason": r, "count": c, "example": res.reject_examples.get(r, "")}
            for r, c in sorted(res.rejects.items())])
        context.log.info(f"{name}: {res.documents} documents, {res.bytes / 1e6:.1f} MB, "
                         f"{sum(res.rejects.values())} rejected records in {len(res.shards)} shards")
        extra = {"preview": dg.MetadataValue.md(preview_markdown(art.files(".parquet", "shard")))}
        if res.rejects:
            extra["rejected_by_reason"] = counts_table(res.rejects, "reason", "records")
        return artifact_result(art, extra)

    return [source_documents, *artifact_checks(source_documents, ASSET, "documents")]
