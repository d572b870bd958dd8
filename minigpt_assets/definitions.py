"""The Dagster code location: Definitions built from the recipes dir, the stage modules in defs/, and resources.

Recipes are validated at load time; a bad recipe fails the load with one line per problem (file: field: what was
expected), so `dagster dev`, `dagster asset materialize` and `minigpt validate` all show the same message.
"""

from __future__ import annotations

import warnings

from minigpt_assets.settings import Settings, quiet_openmp

# before torch loads (the stage modules below import it): steps that run torch side by side share the cores
quiet_openmp()

import dagster as dg  # noqa: E402

# Beta and preview Dagster APIs this project uses knowingly (observable source assets, multi-partition mappings;
# DESIGN.md), pinned to 1.13: no warning per process for them. And Dagster's own pipes session reads a preview
# property on every launch, a warning per training run that nothing here can act on.
warnings.filterwarnings("ignore", category=dg.BetaWarning, module=r"minigpt_assets\.")
warnings.filterwarnings("ignore", category=dg.PreviewWarning, module=r"minigpt_assets\.")
for _api in ("observable_source_asset", r"PipesMessageReader\.expected_writer_count"):  # raised inside Dagster
    warnings.filterwarnings("ignore", message=rf"Function `{_api}` is currently in", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", message=rf"Function `{_api}` is currently in", category=dg.PreviewWarning)

from minigpt_assets.defs import (  # noqa: E402
    dedup, evaluation, filters, mixtures, quality, recipe_assets, sources, sweeps, tokens, training)
from minigpt_assets.defs.automation import automation_sensor  # noqa: E402
from minigpt_assets.defs.partitions import Partitions  # noqa: E402
from minigpt_assets.defs.resources import ProjectResource  # noqa: E402
from minigpt_assets.recipes import Catalog  # noqa: E402


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    cat = Catalog.load_or_raise(settings.recipes)
    if not cat.sources:
        return dg.Definitions(resources={"project": ProjectResource.from_settings(settings)})
    parts = Partitions.from_catalog(cat)
    recipes = recipe_assets.build(cat, parts)
    stage_defs = [
        *sources.build(cat, parts, recipes),
        *quality.build(cat, parts, recipes),
        *filters.build(cat, parts, recipes),
        *dedup.build(cat, parts, recipes),
        *tokens.build(cat, parts, recipes),
        *mixtures.build(cat, parts, recipes),
        *training.build(cat, parts, recipes),
        *evaluation.build(cat, parts, recipes),
        *sweeps.build(cat, parts, recipes),
    ]
    checks = [d for d in stage_defs if isinstance(d, dg.AssetChecksDefinition)]
    assets = [*recipes.values()] + [d for d in stage_defs if not isinstance(d, dg.AssetChecksDefinition)]
    p = settings.profile
    executor = (dg.in_process_executor if p.executor == "in_process"
                else dg.multiprocess_executor.configured({"max_concurrent": p.max_concurrent}))
    return dg.Definitions(
        assets=assets,
        executor=executor,
        asset_checks=checks,
        sensors=[automation_sensor(), recipe_assets.recipe_sensor(parts)],
        resources={"project": ProjectResource.from_settings(settings), "pipes": dg.PipesSubprocessClient()},
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
