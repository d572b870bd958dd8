"""Recipe versions: each recipe partition's normalized content hash, compared with the last one the Dagster
instance recorded, and recorded as a runless observation of its recipe asset when it changed.

Called by the `minigpt_recipes` sensor, by `minigpt materialize` and `minigpt ui` before they start, and by every
run when it reads the recipes (`ProjectResource.catalog`): a materialization is then always recorded after the
version of the recipe it read, so the daemon never mistakes a first observation for an edit.
"""

from typing import Callable

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from minigpt_assets.defs.partitions import Partitions
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
    "sweep_recipe": ("sweeps", Catalog.sweep_hash,
                     "recipes/sweeps/<sweep>.yaml with the experiments it names inlined, as a content hash"),
    "point_recipe": ("points", Catalog.point_hash,
                     "one point of a sweep (its sample index or ladder run, mixture, experiment and objective), "
                     "as a content hash: editing a sweep changes only the points it reshapes"),
}
# experiment_recipe is partitioned like the training assets (experiment x mixture, the same version for every
# mixture): Dagster maps a multi-partitioned asset onto a single-dimension parent only when that dimension is
# the parent's whole partition set, and sft/aligned models exist only for the experiments that have those stages.
PARTITIONS = {"source_recipe": "sources", "classifier_recipe": "classifiers", "dedup_recipe": "dedup_groups",
              "tokenizer_recipe": "tokenizers", "mixture_recipe": "mixtures", "experiment_recipe": "training",
              "eval_recipe": "evals", "sweep_recipe": "sweeps", "point_recipe": "points"}


def recipe_versions(cat: Catalog, asset: str, keys: list[str]) -> dict[str, str]:
    kind, hasher, _ = OBSERVED[asset]
    names = {k: k.split("|", 1)[0] if asset == "experiment_recipe" else k for k in keys}
    return {k: hasher(cat, n)[:16] for k, n in names.items() if n in getattr(cat, kind)}


def pending_observations(instance: dg.DagsterInstance, cat: Catalog, parts: Partitions,
                         known: dict[str, str] | None = None) -> tuple[list[dg.AssetObservation], dict[str, str]]:
    """Observations for the recipe partitions whose hash differs from the instance's latest recorded one, and
    every current hash (keyed "asset/partition"). `known` holds the hashes seen at a sensor's last tick: a
    partition whose hash still equals it is skipped without asking the instance."""
    events, current = [], {}
    for name, attr in PARTITIONS.items():
        pdef = getattr(parts, attr)
        if pdef is None:
            continue
        for key, version in recipe_versions(cat, name, pdef.get_partition_keys()).items():
            slot = f"{name}/{key}"
            current[slot] = version
            if known is not None and known.get(slot) == version:
                continue
            rec = instance.get_latest_data_version_record(dg.AssetKey(name), is_source=True, partition_key=key)
            obs = rec.asset_observation if rec is not None else None
            if (obs.tags or {}).get(DATA_VERSION_TAG) != version if obs is not None else True:
                events.append(dg.AssetObservation(asset_key=name, partition=key, tags={DATA_VERSION_TAG: version}))
    return events, current


def report_versions(instance: dg.DagsterInstance, cat: Catalog, parts: Partitions) -> int:
    """Record the recipe hashes that changed as runless observations (what the observable assets would report);
    returns how many were recorded."""
    events, _ = pending_observations(instance, cat, parts)
    for ev in events:
        instance.report_runless_asset_event(ev)
    return len(events)
