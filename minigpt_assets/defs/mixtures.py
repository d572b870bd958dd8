"""mixture[mix]: an exact token-budget sampling plan over token shards, its stats, composition plot and check."""

import base64

import dagster as dg

from minigpt_assets.data.mixture import publish_mixture
from minigpt_assets.defs.common import artifact_result, data_asset
from minigpt_assets.defs.partitions import Partitions, sweep_to_searched, token_shards_to_mixture
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.defs.tokens import ASSET as TOKENS_ASSET
from minigpt_assets.science.pipeline import searched_recipe
from minigpt_assets.recipes import Catalog

ASSET = "mixture"
SHARE_TOLERANCE = 0.001  # realized shares within 0.1 percentage points of the targets


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    if parts.mixtures is None or parts.token_shards is None:
        return []

    searched = [dg.AssetDep("mixture_search", partition_mapping=sweep_to_searched(cat))] if cat.searched else []

    @data_asset(ASSET, parts.mixtures, [recipe_assets["mixture_recipe"],
                dg.AssetDep(TOKENS_ASSET, partition_mapping=token_shards_to_mixture(cat)), *searched], "parquet")
    def mixture(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Plan the mixture's training and validation token streams with exact per-source token shares."""
        name = context.partition_key
        cat = project.catalog()
        store = project.store()
        recipe = None
        if name in cat.searched:  # a sweep's searched mixture: the weights mixture_search found
            recipe = searched_recipe(store, cat, name)
        art, rows, warnings = publish_mixture(store, cat, name, recipe)
        png = (art.path / "composition.png").read_bytes()
        for w in warnings:
            context.log.warning(f"{name}: {w}")
        project.stats().write("mixture_stats", name, rows)
        table = "\n".join(["| split | source | tokens | target | actual | epochs |", "|---|---|---:|---:|---:|---:|",
                           *[f"| {r['split']} | {r['source']} | {r['tokens']} | {r['target_share']:.4f} | "
                             f"{r['actual_share']:.4f} | {r['epochs']:.2f} |" for r in rows]])
        image = f"![composition](data:image/png;base64,{base64.b64encode(png).decode()})"
        return artifact_result(art, {"shares": dg.MetadataValue.md(table),
                                     "composition": dg.MetadataValue.md(image)})

    return [mixture, shares_check(mixture)]


def shares_check(asset) -> dg.AssetChecksDefinition:
    """Blocking check of a mixture plan (a mixture or a sweep's point; both live under `mixture/` in the store)."""

    @dg.asset_check(asset=asset, name="shares_within_tolerance", blocking=True,
                    description=f"every source's realized token share is within {SHARE_TOLERANCE:.1%} of its target "
                                "(beyond one token of rounding)")
    def shares_within_tolerance(context: dg.AssetCheckExecutionContext, project: ProjectResource
                                ) -> dg.AssetCheckResult:
        import json

        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        art = project.store().require(ASSET, context.partition_key)
        weights = json.loads((art.path / "mixture.json").read_text())["weights"]
        total_w = sum(weights.values())
        worst = 0.0
        for plan in art.files(".parquet", "plan_"):
            t = pq.read_table(plan, columns=["source", "length"])
            total = pc.sum(t["length"]).as_py() or 0
            for s, w in weights.items():
                got = pc.sum(t.filter(pc.equal(t["source"], s))["length"]).as_py() or 0
                # beyond the one token a whole-token allocation may round (a 300-token split: 0.33 %)
                worst = max(worst, abs(got / total - w / total_w) - 1 / total)
        return dg.AssetCheckResult(passed=worst <= SHARE_TOLERANCE, metadata={"max_share_error": max(worst, 0.0)})

    return shares_within_tolerance
