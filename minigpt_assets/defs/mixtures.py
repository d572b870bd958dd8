"""mixture[mix]: an exact token-budget sampling plan over token shards, its stats, composition plot and check."""

import base64

import dagster as dg

from minigpt_assets.data.mixture import MixtureSource, build_mixture
from minigpt_assets.defs.common import artifact_result, data_asset
from minigpt_assets.defs.partitions import Partitions, token_key, token_shards_to_mixture
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.defs.tokens import ASSET as TOKENS_ASSET
from minigpt_assets.recipes import Catalog

ASSET = "mixture"
SHARE_TOLERANCE = 0.001  # realized shares within 0.1 percentage points of the targets


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    if parts.mixtures is None or parts.token_shards is None:
        return []

    @data_asset(ASSET, parts.mixtures, [recipe_assets["mixture_recipe"],
                dg.AssetDep(TOKENS_ASSET, partition_mapping=token_shards_to_mixture(cat))], "parquet")
    def mixture(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Plan the mixture's training and validation token streams with exact per-source token shares."""
        name = context.partition_key
        cat = project.catalog()
        recipe = cat.mixtures[name]
        store = project.store()
        sources = {}
        for src in recipe.sources:
            art = store.require(TOKENS_ASSET, token_key(recipe.tokenizer, src))
            sources[src] = MixtureSource(art.path, art.manifest["meta"]["dtype"], cat.sources[src].optional)
        with store.stage(ASSET, name) as st:
            rows, warnings = build_mixture(name, recipe, sources, st.path)
            png = (st.path / "composition.png").read_bytes()
            train = [r for r in rows if r["split"] == "train"]
            art = st.publish(counts={"train_tokens": sum(r["tokens"] for r in train),
                                     "val_tokens": sum(r["tokens"] for r in rows if r["split"] == "val"),
                                     "sources": len(train)},
                             meta={"recipe_hash": cat.mixture_hash(name), "warnings": warnings,
                                   "tokenizer": recipe.tokenizer})
        for w in warnings:
            context.log.warning(f"{name}: {w}")
        project.stats().write("mixture_stats", name, rows)
        table = "\n".join(["| split | source | tokens | target | actual | epochs |", "|---|---|---:|---:|---:|---:|",
                           *[f"| {r['split']} | {r['source']} | {r['tokens']} | {r['target_share']:.4f} | "
                             f"{r['actual_share']:.4f} | {r['epochs']:.2f} |" for r in rows]])
        image = f"![composition](data:image/png;base64,{base64.b64encode(png).decode()})"
        return artifact_result(art, {"shares": dg.MetadataValue.md(table),
                                     "composition": dg.MetadataValue.md(image)})

    @dg.asset_check(asset=mixture, name="shares_within_tolerance", blocking=True,
                    description=f"every source's realized token share is within {SHARE_TOLERANCE:.1%} of its target")
    def shares_within_tolerance(context: dg.AssetCheckExecutionContext, project: ProjectResource
                                ) -> dg.AssetCheckResult:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        art = project.store().require(ASSET, context.partition_key)
        import json

        weights = json.loads((art.path / "mixture.json").read_text())["weights"]
        total_w = sum(weights.values())
        worst = 0.0
        for plan in art.files(".parquet", "plan_"):
            t = pq.read_table(plan, columns=["source", "length"])
            total = pc.sum(t["length"]).as_py() or 0
            for s, w in weights.items():
                got = pc.sum(t.filter(pc.equal(t["source"], s))["length"]).as_py() or 0
                worst = max(worst, abs(got / total - w / total_w))
        return dg.AssetCheckResult(passed=worst <= SHARE_TOLERANCE, metadata={"max_share_error": worst})

    return [mixture, shares_within_tolerance]
