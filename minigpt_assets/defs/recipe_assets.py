"""Observable recipe assets: each recipe file's normalized content hash is its per-partition data version.

Editing `recipes/sources/web.yaml` changes only `source_recipe[web]`, so only the `web` partitions downstream
become stale. Run config is never versioned by Dagster, so recipes enter the graph this way, as data.

The hashes are cheap, so no run observes them: the `minigpt_recipes` sensor (and `minigpt materialize`, and
`minigpt ui` before it starts the server) hashes every recipe and reports a runless observation only for the
partitions whose hash differs from the last one recorded. Unchanged recipes leave no event, and nothing runs.
"""

import json

import dagster as dg

from minigpt_assets.defs.partitions import Partitions
from minigpt_assets.defs.recipe_versions import OBSERVED, PARTITIONS, pending_observations, recipe_versions
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.recipes import Catalog, RecipeError


def _observable(name: str, partitions: dg.PartitionsDefinition):
    @dg.observable_source_asset(name=name, partitions_def=partitions, group_name="recipes",
                                description=OBSERVED[name][2])
    def _observe(project: ProjectResource) -> dg.DataVersionsByPartition:
        versions = recipe_versions(project.catalog(record=False), name, partitions.get_partition_keys())
        return dg.DataVersionsByPartition({k: dg.DataVersion(v) for k, v in versions.items()})

    return _observe


def recipe_sensor(parts: Partitions) -> dg.SensorDefinition:
    """Hashes the recipe files every few seconds while `dagster dev` runs and reports the changed ones. A recipe
    edited into something invalid is reported as one line per problem (file: field: expectation) in the tick
    log, the last valid versions stay, and nothing is launched."""

    @dg.sensor(name="minigpt_recipes", minimum_interval_seconds=10, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Reports each recipe file's content hash as a runless observation when it changed")
    def minigpt_recipes(context: dg.SensorEvaluationContext, project: ProjectResource):
        try:
            cat = project.catalog(record=False)
        except RecipeError as e:
            context.log.error(str(e))
            return dg.SkipReason(f"invalid recipes, last valid versions kept: {e}")
        known = json.loads(context.cursor) if context.cursor else None
        events, current = pending_observations(context.instance, cat, parts, known)
        on_disk = {"sources": set(cat.sources), "mixtures": set(cat.ordinary_mixtures()), "points": set(cat.points)}
        unknown = sorted(f"{kind}/{n}" for kind, names in on_disk.items() if getattr(parts, kind) is not None
                         for n in names - set(getattr(parts, kind).get_partition_keys()))
        if unknown:
            context.log.warning(f"new recipes {', '.join(unknown)}: reload the code location to add their partitions")
        for ev in events:
            context.log.info(f"recipe changed: {ev.asset_key.to_user_string()}[{ev.partition}]")
        return dg.SensorResult(asset_events=events, cursor=json.dumps(current, sort_keys=True),
                               skip_reason=None if events else "no recipe changed")

    return minigpt_recipes


def build(cat: Catalog, parts: Partitions) -> dict[str, object]:
    return {name: _observable(name, getattr(parts, attr)) for name, attr in PARTITIONS.items()
            if getattr(parts, attr) is not None}
