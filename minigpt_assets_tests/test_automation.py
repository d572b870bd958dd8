"""What runs while `dagster dev` is open: the recipe sensor reports only changed recipes (no runs), and the
automation daemon launches nothing for unchanged recipes, nothing after a backfill, and exactly the edited
recipe's partitions after an edit."""

from __future__ import annotations

import dagster as dg
import pytest

from minigpt_assets.definitions import build_definitions
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.defs.runner import QUIET, instance_for, materialize_graph
from minigpt_assets.settings import Settings

RECIPE_PARTITIONS = 3 + 1 + 1 + 1 + 1  # tiny_recipes: sources, classifier, dedup group, tokenizer, mixture


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, s: Settings, cursor: str | None):
    """One evaluation of the recipe sensor, its events recorded as the daemon records them."""
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"project": ProjectResource.from_settings(s)})
    res = defs.get_sensor_def("minigpt_recipes")(ctx)
    if isinstance(res, dg.SkipReason):
        return res, cursor
    for ev in res.asset_events:
        instance.report_runless_asset_event(ev)
    return res, res.cursor


def _observed(res) -> set[tuple[str, str]]:
    return {(e.asset_key.to_user_string(), e.partition) for e in res.asset_events}


def test_recipe_sensor_reports_only_changed_recipes(tiny_recipes, tmp_path):
    s = Settings(home=tmp_path / "home", recipes=tiny_recipes, workers=1)
    defs, instance = build_definitions(s), instance_for(s)
    res, cursor = _tick(defs, instance, s, None)
    assert len(res.asset_events) == RECIPE_PARTITIONS  # a fresh instance: every recipe once
    res, cursor = _tick(defs, instance, s, cursor)
    assert res.asset_events == [] and res.skip_reason.skip_message == "no recipe changed"
    res, _ = _tick(defs, instance, s, None)  # a restarted daemon (no cursor) compares with the instance
    assert res.asset_events == []

    mx = tiny_recipes / "mixtures/mix.yaml"
    valid = mx.read_text()
    mx.write_text(valid + "seed: 7\n")
    res, cursor = _tick(defs, instance, s, cursor)
    assert _observed(res) == {("mixture_recipe", "mix")}

    mx.write_text(valid + "seed: seven\n")  # an invalid edit: one line naming file and field, nothing recorded
    res, same = _tick(defs, instance, s, cursor)
    assert isinstance(res, dg.SkipReason) and same == cursor
    msg = res.skip_message
    assert "\n" not in msg and "mixtures/mix.yaml: seed:" in msg and "last valid versions kept" in msg
    mx.write_text(valid + "seed: 7\n")  # fixed again to the last valid content: nothing new
    res, _ = _tick(defs, instance, s, cursor)
    assert res.asset_events == []
    obs = instance.fetch_observations(dg.AssetKey("mixture_recipe"), limit=100).records
    assert len(obs) == 2  # the first version and the edit, no repeats


def _materialize_like_dagster(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """One run per asset partition, in dependency order, as a UI backfill or `dagster asset materialize` runs
    them: no recipe observation beforehand (the runs record what they read)."""
    graph = defs.resolve_asset_graph()
    job = defs.resolve_implicit_global_asset_job_def()
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable:
            continue
        for pk in node.partitions_def.get_partition_keys():
            res = job.execute_in_process(asset_selection=[key], partition_key=pk, instance=instance,
                                         raise_on_error=False, run_config=QUIET)
            assert res.success, (key, pk)


def test_daemon_launches_nothing_while_idle_or_after_a_backfill(tiny_recipes, tmp_path):
    s = Settings(home=tmp_path / "home", recipes=tiny_recipes, workers=1)
    s.export()
    defs, instance = build_definitions(s), instance_for(s)
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    res, cursor = _tick(defs, instance, s, None)
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    assert r.total_requested == 0  # a fresh home: the daemon creates nothing (a backfill is the user's call)

    _materialize_like_dagster(defs, instance)
    res, cursor = _tick(defs, instance, s, cursor)
    assert res.asset_events == []  # the runs recorded the recipe versions they read
    for _ in range(3):  # and the daemon, ticking on, launches nothing
        r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
        assert r.total_requested == 0, r.get_requested_partitions

    mx = tiny_recipes / "mixtures/mix.yaml"
    mx.write_text(mx.read_text() + "seed: 7\n")
    res, cursor = _tick(defs, instance, s, cursor)
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    assert r.get_requested_partitions(dg.AssetKey("mixture")) == {"mix"} and r.total_requested == 1

    src = tiny_recipes / "sources/beta.yaml"  # a source edit: that source only
    src.write_text(src.read_text() + "limit_documents: 8\n")
    assert all(o.ok for o in materialize_graph(s, select={"mixture"}, log=lambda _: None))
    res, cursor = _tick(defs, instance, s, cursor)
    assert _observed(res) == set()  # materialize_graph recorded the new source version already
    r = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=r.cursor)
    requested = {(str(res.key.to_user_string()), p) for res in r.results for p in
                 (res.true_subset.expensively_compute_partition_keys() if res.true_subset.size else ())}
    # the source recipe holds its filters and dedup priority too: every stage of that source, and nothing else
    assert requested == {("source_documents", "beta"), ("filtered_documents", "beta"),
                         ("deduplicated_documents", "beta"), ("token_shards", "tiny.beta")}


def test_distill_waits_for_its_teacher_only_while_a_run_trains_it(tiny_training_recipes, tmp_path):
    """A backfill reaches a distill student and its teacher (another experiment's stage) at once: the student's
    step is retried while a run in flight trains the teacher, and fails as before when nothing does."""
    import logging
    from types import SimpleNamespace

    from minigpt_assets.defs.training import wait_for_teacher
    from minigpt_assets.recipes import Catalog
    from minigpt_assets.store import ArtifactStore
    from minigpt_assets_tests.conftest import write

    write(tiny_training_recipes / "experiments/student.yaml", """
        model: tiny
        stages:
          - {kind: pretrain, max_steps: 2, batch_size: 4}
          - {kind: distill, max_steps: 2, batch_size: 4, distill: {teacher_experiment: exp}}
        """)
    cat = Catalog.load_or_raise(tiny_training_recipes)
    store = ArtifactStore(tmp_path / "home")
    with dg.instance_for_test() as instance:
        ctx = SimpleNamespace(instance=instance, log=logging.getLogger("test"))
        wait_for_teacher(ctx, store, cat, "student", "mix", 1)  # nothing trains the teacher: no wait
        teacher_run = dict(job_name="__ASSET_JOB", asset_selection=frozenset({dg.AssetKey("pretrained_model")}),
                           tags={"dagster/partition/experiment": "exp", "dagster/partition/mixture": "mix"})
        instance.add_run(dg.DagsterRun(run_id="a" * 36, status=dg.DagsterRunStatus.STARTED, **teacher_run))
        with pytest.raises(dg.RetryRequested):
            wait_for_teacher(ctx, store, cat, "student", "mix", 1)
        wait_for_teacher(ctx, store, cat, "student", "mix2", 1)  # another mixture's teacher: not this run
        wait_for_teacher(ctx, store, cat, "exp", "mix", 0)  # not a distill stage


def test_ui_instance_config_comes_from_the_profile_and_spares_a_users_own(tmp_path, monkeypatch):
    import yaml

    from minigpt_assets.defs.ui import prepare_instance
    from minigpt_assets.settings import Profile

    lines: list[str] = []
    s = Settings(home=tmp_path / "home", recipes=tmp_path, workers=1,
                 profile=Profile(max_concurrent_runs=3, pools={"training": 1}))
    instance = prepare_instance(s, log=lines.append)
    cfg = yaml.safe_load((s.dagster_home / "dagster.yaml").read_text())
    assert cfg["run_coordinator"]["config"] == {"max_concurrent_runs": 3, "dequeue_interval_seconds": 1}
    assert instance.event_log_storage.get_concurrency_info("training").slot_count == 1
    assert lines == []

    own = tmp_path / "own"
    own.mkdir()
    (own / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    monkeypatch.setenv("DAGSTER_HOME", str(own))
    prepare_instance(s, log=lines.append)
    assert (own / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"
    assert len(lines) == 1 and "left as it is" in lines[0]
