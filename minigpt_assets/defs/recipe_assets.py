"""Observable recipe assets: each recipe file's normalized content hash is its per-partition data version.

Editing `recipes/sources/web.yaml` changes only `source_recipe[web]`, so only the `web` partitions downstream
become stale. Run config is never versioned by Dagster, so recipes enter the graph this way, as data.
"""


from typing import Callable

import dagster as dg

from minigpt_assets.defs.automation import OBSERVE_RECIPES
from minigpt_assets.defs.partitions import Partitions
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.recipes import Catalog


def _observable(name: str, partitions: dg.StaticPartitionsDefinition, kind: str,
                hasher: Callable[[Catalog, str], str], description: str):
    @dg.observable_source_asset(name=name, partitions_def=partitions, group_name="recipes",
                                description=description, automation_condition=OBSERVE_RECIPES)
    def _observe(project: ProjectResource) -> dg.DataVersionsByPartition:
        cat = project.catalog()
        return dg.DataVersionsByPartition({
            key: dg.DataVersion(hasher(cat, key)[:16])
            for key in partitions.get_partition_keys() if key in getattr(cat, kind)
        })

    return _observe


def build(cat: Catalog, parts: Partitions) -> dict[str, object]:
    out = {"source_recipe": _observable(
        "source_recipe", parts.sources, "sources", Catalog.source_hash,
        "recipes/sources/<source>.yaml with its filter profile inlined, as a content hash")}
    if parts.classifiers is not None:
        out["classifier_recipe"] = _observable(
            "classifier_recipe", parts.classifiers, "classifiers", Catalog.classifier_hash,
            "recipes/classifiers/<classifier>.yaml, as a content hash")
    if parts.dedup_groups is not None:
        out["dedup_recipe"] = _observable(
            "dedup_recipe", parts.dedup_groups, "dedup", Catalog.dedup_hash,
            "recipes/dedup/<group>.yaml, as a content hash")
    return out
