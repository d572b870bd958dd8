"""Observable recipe assets: each recipe file's normalized content hash is its per-partition data version.

Editing `recipes/sources/web.yaml` changes only `source_recipe[web]`, so only the `web` partitions downstream
become stale. Run config is never versioned by Dagster, so recipes enter the graph this way, as data.
"""

from typing import Callable

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from minigpt_assets.defs.automation import OBSERVE_RECIPES
from minigpt_assets.defs.partitions import Partitions
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.recipes import Catalog

# asset name -> (catalog attribute, hash function, description)
OBSERVED: dict[str, tuple[str, Callable[[Catalog, str], str], str]] = {
    "source_recipe": ("sources", Catalog.source_hash,
                      "recipes/sources/<source>.yaml with its filter profile inlined, as a content hash"),
    "classifier_recipe": ("classifiers", Catalog.classifier_hash,
                          "recipes/classifiers/<classifier>.yaml, as a content hash"),
    "dedup_recipe": ("dedup", Catalog.dedup_hash, "recipes/dedup/<group>.yaml, as a content hash"),
    "tokenizer_recipe": ("tokenizers", Catalog.tokenizer_hash, "recipes/tokenizers/<tokenizer>.yaml, as a content hash"),
    "mixture_recipe": ("mixtures", Catalog.mixture_hash, "recipes/mixtures/<mixture>.yaml, as a content hash"),
    "experiment_recipe": ("experiments", Catalog.experiment_hash,
                          "recipes/experiments/<experiment>.yaml with its model recipe inlined, as a content hash"),
    "eval_recipe": ("evals", Catalog.eval_hash,
                    "recipes/evals/<eval>.yaml with the digest of its local data files, as a content hash"),
}
# experiment_recipe is partitioned like the training assets (experiment x mixture, the same version for every
# mixture): Dagster maps a multi-partitioned asset onto a single-dimension parent only when that dimension is
# the parent's whole partition set, and sft/aligned models exist only for the experiments that have those stages.
PARTITIONS = {"source_recipe": "sources", "classifier_recipe": "classifiers", "dedup_recipe": "dedup_groups",
              "tokenizer_recipe": "tokenizers", "mixture_recipe": "mixtures", "experiment_recipe": "training",
              "eval_recipe": "evals"}


def recipe_versions(cat: Catalog, asset: str, keys: list[str]) -> dict[str, str]:
    kind, hasher, _ = OBSERVED[asset]
    names = {k: k.split("|", 1)[0] if asset == "experiment_recipe" else k for k in keys}
    return {k: hasher(cat, n)[:16] for k, n in names.items() if n in getattr(cat, kind)}


def _observable(name: str, partitions: dg.PartitionsDefinition):
    @dg.observable_source_asset(name=name, partitions_def=partitions, group_name="recipes",
                                description=OBSERVED[name][2], automation_condition=OBSERVE_RECIPES)
    def _observe(project: ProjectResource) -> dg.DataVersionsByPartition:
        versions = recipe_versions(project.catalog(), name, partitions.get_partition_keys())
        return dg.DataVersionsByPartition({k: dg.DataVersion(v) for k, v in versions.items()})

    return _observe


def report_versions(instance: dg.DagsterInstance, cat: Catalog, parts: Partitions) -> None:
    """Record the current recipe hashes as runless observations (what the observable assets would report)."""
    for name, attr in PARTITIONS.items():
        pdef = getattr(parts, attr)
        if pdef is None:
            continue
        for key, version in recipe_versions(cat, name, pdef.get_partition_keys()).items():
            instance.report_runless_asset_event(
                dg.AssetObservation(asset_key=name, partition=key, tags={DATA_VERSION_TAG: version}))


def build(cat: Catalog, parts: Partitions) -> dict[str, object]:
    return {name: _observable(name, getattr(parts, attr)) for name, attr in PARTITIONS.items()
            if getattr(parts, attr) is not None}
