"""filtered_documents[source]: documents that pass the source's filter profile, with drop counts per rule."""


import dagster as dg

from minigpt_assets.data.filters import filter_shards
from minigpt_assets.defs.common import artifact_checks, artifact_result, counts_table, data_asset, preview_markdown
from minigpt_assets.defs.partitions import Partitions, classifier_to_source
from minigpt_assets.defs.quality import ASSET as CLASSIFIER_ASSET
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.defs.sources import ASSET as SOURCE_ASSET
from minigpt_assets.recipes import Catalog

ASSET = "filtered_documents"


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    deps: list = [SOURCE_ASSET, recipe_assets["source_recipe"]]
    if parts.classifiers is not None:
        deps.append(dg.AssetDep(CLASSIFIER_ASSET, partition_mapping=classifier_to_source(cat)))

    @data_asset(ASSET, parts.sources, deps, "parquet", version=2)  # v2: reworked rules and order
    def filtered_documents(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Apply length, Gopher, C4, code, language-ID and fastText-quality rules; count drops per rule."""
        name = context.partition_key
        cat = project.catalog()
        recipe = cat.sources[name]
        profile = cat.filter_profile(name)
        store = project.store()
        upstream = store.require(SOURCE_ASSET, name)
        clfs = cat.classifiers_for_source(name)
        clf_path = store.require(CLASSIFIER_ASSET, clfs[0]).path / "model.bin" if clfs else None
        with store.stage(ASSET, name) as st:
            res = filter_shards(upstream.files(".parquet", "shard"), st.path, profile, clf_path,
                                shard_documents=recipe.shard_documents, engine=project.engine(),
                                expected=upstream.expected(".parquet", "shard"))
            art = st.publish(
                counts={"documents": res.documents, "bytes": res.bytes, "input_documents": res.input_documents,
                        "removed": res.input_documents - res.documents, "shards": len(res.shards)},
                meta={"recipe_hash": cat.source_hash(name), "removed_by_rule": res.removed,
                      "languages": res.language_counts,
                      "optional_missing": upstream.manifest.get("meta", {}).get("optional_missing")},
            )
        stats = project.stats()
        stats.write("source_stats", f"filtered__{name}",
                    [{"source": name, "stage": "filtered", "documents": res.documents, "bytes": res.bytes}])
        stats.write("filter_stats", name, [{"source": name, "rule": r, "documents_removed": c}
                                           for r, c in sorted(res.removed.items())])
        kept = res.documents / res.input_documents if res.input_documents else 0.0
        context.log.info(f"{name}: kept {res.documents}/{res.input_documents} ({kept:.1%}); "
                         + ", ".join(f"{r}={c}" for r, c in res.removed.items() if c))
        extra = {"kept_fraction": dg.MetadataValue.float(kept),
                 "removed_by_rule": counts_table(res.removed, "rule", "documents removed"),
                 "preview": dg.MetadataValue.md(preview_markdown(art.files(".parquet", "shard")))}
        if res.language_counts:
            extra["languages"] = counts_table(res.language_counts, "language", "documents")
        return artifact_result(art, extra)

    return [filtered_documents, *artifact_checks(filtered_documents, ASSET, "documents")]
