"""Automation conditions: re-materialize when an upstream data version or this asset's code version changed."""

from __future__ import annotations

import dagster as dg

# `eager()` re-runs downstream whenever upstream materializes, even with identical output (dagster#25439);
# every stage here returns a content-derived data version, so key on data-version changes instead.
ON_DATA_OR_CODE_CHANGE = (
    (
        dg.AutomationCondition.newly_missing()
        | dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
        | dg.AutomationCondition.code_version_changed()
    ).since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("on_data_or_code_change")

# Recipe files are observed on a cron tick; an unchanged file yields the same data version (nothing downstream).
OBSERVE_RECIPES = dg.AutomationCondition.cron_tick_passed("*/2 * * * *").with_label("observe_every_2_min")


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates the conditions while `dagster dev` runs (its daemon), so stale partitions re-materialize."""
    return dg.AutomationConditionSensorDefinition(
        name="minigpt_automation",
        target=dg.AssetSelection.all(include_sources=True),  # the recipe observables too
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )
