"""dedup_index[group] (global exact + MinHash-LSH join over per-shard signatures) and deduplicated_documents[source]."""


import dagster as dg
import pyarrow.parquet as pq

from minigpt_assets.data.dedup import apply_removals, build_index
from minigpt_assets.defs.common import artifact_checks, artifact_result, data_asset, preview_markdown
from minigpt_assets.defs.filters import ASSET as FILTERED_ASSET
from minigpt_assets.defs.partitions import Partitions, group_to_source, source_to_group
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.recipes import Catalog
from minigpt_assets.settings import load_profile

INDEX_ASSET = "dedup_index"
ASSET = "deduplicated_documents"


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    out: list = []
    deps: list = [FILTERED_ASSET, recipe_assets["source_recipe"]]
    if parts.dedup_groups is not None:
        @data_asset(INDEX_ASSET, parts.dedup_groups, [recipe_assets["dedup_recipe"],
                    dg.AssetDep(FILTERED_ASSET, partition_mapping=source_to_group(cat))], "duckdb",
                    version=2)  # v2: removed.parquet names each document's shard
        def dedup_index(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
            """Sign every filtered shard of the group's sources (parallel, cached), then join exact and LSH buckets."""
            group = context.partition_key
            cat = project.catalog()
            recipe = cat.dedup[group]
            store = project.store()
            inputs = {s: store.require(FILTERED_ASSET, s) for s in cat.group_members(group)}
            members = {s: (cat.sources[s].dedup.priority, a.files(".parquet", "shard")) for s, a in inputs.items()}
            expected = {k: v for a in inputs.values() for k, v in a.expected(".parquet", "shard").items()}
            with store.stage(INDEX_ASSET, group) as st:
                idx = build_index(members, recipe, st.path, cache_dir=project.scratch("minhash"),
                                  bucket_mb=load_profile().dedup_bucket_mb, engine=project.engine(),
                                  expected=expected)
                totals = {k: sum(v[k] for v in idx.stats.values())
                          for k in ("documents", "exact_removed", "near_removed")}
                art = st.publish(counts={**totals, "sources": len(members), "signed_shards": idx.signed_shards},
                                 meta={"recipe_hash": cat.dedup_hash(group), "per_source": idx.stats,
                                       "members": {s: p for s, (p, _) in members.items()}})
            context.log.info(f"{group}: signed {idx.signed_shards} shards ({idx.cache_hits} from cache); "
                             f"removed {totals['exact_removed']} exact, {totals['near_removed']} near duplicates")
            _write_clusters(project, group, art.path / "clusters.parquet")
            table = "\n".join(["| source | priority | documents | exact removed | near removed | clusters |",
                               "|---|---:|---:|---:|---:|---:|",
                               *[f"| {s} | {members[s][0]} | {v['documents']} | {v['exact_removed']} | "
                                 f"{v['near_removed']} | {v['clusters']} |" for s, v in sorted(idx.stats.items())]])
            return artifact_result(art, {"per_source": dg.MetadataValue.md(table), "cache_hits": idx.cache_hits})

        out.append(dedup_index)
        deps.append(dg.AssetDep(INDEX_ASSET, partition_mapping=group_to_source(cat)))

    @data_asset(ASSET, parts.sources, deps, "parquet", version=2)  # v2: output shards per input shard
    def deduplicated_documents(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """The source's filtered documents minus those its dedup group removed (kept once, in the top-priority source)."""
        name = context.partition_key
        cat = project.catalog()
        recipe = cat.sources[name]
        group = recipe.dedup.group
        store = project.store()
        upstream = store.require(FILTERED_ASSET, name)
        removed_path = None
        stat = {"exact_removed": 0, "near_removed": 0, "clusters": 0}
        if group is not None:
            index = store.require(INDEX_ASSET, group)
            if name not in index.manifest["meta"]["members"]:
                raise dg.Failure(f"dedup_index[{group}] predates source {name!r}: materialize dedup_index first")
            removed_path = index.path / "removed.parquet"
            stat = {k: index.manifest["meta"]["per_source"][name][k] for k in stat}
        with store.stage(ASSET, name) as st:
            shards, docs, nbytes = apply_removals(upstream.files(".parquet", "shard"), removed_path, name, st.path,
                                                  recipe.shard_documents, project.engine(),
                                                  upstream.expected(".parquet", "shard"))
            art = st.publish(
                counts={"documents": docs, "bytes": nbytes, "shards": len(shards), **stat},
                meta={"recipe_hash": cat.source_hash(name), "dedup_group": group,
                      "optional_missing": upstream.manifest.get("meta", {}).get("optional_missing")})
        stats = project.stats()
        stats.write("source_stats", f"deduplicated__{name}",
                    [{"source": name, "stage": "deduplicated", "documents": docs, "bytes": nbytes}])
        stats.write("dedup_stats", name, [{"source": name, "dedup_group": group or "", **stat}])
        context.log.info(f"{name}: {docs} documents after removing {stat['exact_removed'] + stat['near_removed']} "
                         "duplicates")
        return artifact_result(art, {"preview": dg.MetadataValue.md(preview_markdown(art.files(".parquet", "shard")))})

    out += [deduplicated_documents, *artifact_checks(deduplicated_documents, ASSET, "documents")]
    return out


def _write_clusters(project: ProjectResource, group: str, path) -> None:
    """Copy the group's cluster membership into the stats db (streamed by pyarrow, not as Python rows)."""
    import pyarrow as pa

    tbl = pq.read_table(path) if path.exists() else None
    if tbl is None or tbl.num_rows == 0:
        project.stats().write("dedup_clusters", group, [])
        return
    tbl = tbl.select(["cluster", "kind", "source", "id", "kept"])
    tbl = tbl.set_column(0, "cluster", tbl["cluster"].cast(pa.string()))
    tbl = tbl.add_column(0, "dedup_group", pa.array([group] * tbl.num_rows, pa.string()))
    project.stats().write_table("dedup_clusters", group, tbl)
