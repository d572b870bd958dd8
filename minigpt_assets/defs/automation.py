"""Automation: which partitions the daemon under `dagster dev` re-materializes, and when.

Only partitions that exist are kept in sync: one re-runs when an upstream data version (a recipe's content hash
or an artifact's content hash) or its own code version changed since it was last handled. Nothing is created
from scratch by the daemon — a missing partition is the user's to backfill — so an idle `minigpt ui` on
unchanged recipes launches no run at all.
"""

from __future__ import annotations

import dagster as dg

# `eager()` re-runs downstream whenever upstream materializes, even with identical output (dagster#25439);
# every stage here returns a content-derived data version, so key on data-version changes instead.
ON_DATA_OR_CODE_CHANGE = (
    (
        dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
        | dg.AutomationCondition.code_version_changed()
    ).since_last_handled()
    & ~dg.AutomationCondition.missing()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("on_data_or_code_change")


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates the conditions while `dagster dev` runs (its daemon), so stale partitions re-materialize."""
    return dg.AutomationConditionSensorDefinition(
        name="minigpt_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )
