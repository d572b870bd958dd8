"""The Dagster layer end to end on a tiny recipe set: load, materialize every partition, checks, stats, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from minigpt_assets.data.documents import iter_documents, make_doc_id
from minigpt_assets.defs.runner import materialize_graph
from minigpt_assets.definitions import build_definitions
from minigpt_assets.recipes import RecipeError
from minigpt_assets.settings import Settings
from minigpt_assets.store import ArtifactStore, StatsDB
from minigpt_assets_tests.conftest import REPO, write


def _settings(tmp_path, recipes) -> Settings:
    return Settings(home=tmp_path / "home", recipes=recipes, workers=1)


def test_shipped_definitions_load():
    defs = build_definitions(Settings.from_env(recipes=str(REPO / "recipes")))
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"source_recipe", "source_documents", "quality_classifier", "filtered_documents", "dedup_index",
            "deduplicated_documents", "classifier_recipe", "dedup_recipe"} <= names
    parts = graph.get(dg.AssetKey("source_documents")).partitions_def.get_partition_keys()
    assert {"python_code", "python_docs", "web", "web_spam"} <= set(parts)
    checks = {k.name for k in graph.asset_check_keys}
    assert {"nonempty", "manifest_matches", "better_than_chance"} <= checks


def test_partition_mappings_follow_recipes(tiny_recipes, tmp_path):
    defs = build_definitions(_settings(tmp_path, tiny_recipes))
    graph = defs.resolve_asset_graph()
    dedup = graph.get(dg.AssetKey("deduplicated_documents"))
    mapping = dedup.assets_def.get_partition_mapping(dg.AssetKey("dedup_index"))
    assert mapping.downstream_partition_keys_by_upstream_partition_key == {"main": {"alpha", "beta"}}
    filt = graph.get(dg.AssetKey("filtered_documents")).assets_def
    assert filt.get_partition_mapping(dg.AssetKey("quality_classifier")) \
        .downstream_partition_keys_by_upstream_partition_key == {"clf": {"beta"}}


def test_bad_recipe_fails_definitions_with_one_line(tiny_recipes, tmp_path):
    write(tiny_recipes / "sources/broken.yaml", "kind: jsonl\nlocation: /nope.jsonl\ndomain: web\n")
    with pytest.raises(RecipeError) as e:
        build_definitions(_settings(tmp_path, tiny_recipes))
    lines = str(e.value).splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("sources/broken.yaml: location: file or directory not found: /nope.jsonl")


def test_materialize_whole_graph(tiny_recipes, tmp_path):
    s = _settings(tmp_path, tiny_recipes)
    outcomes = materialize_graph(s, log=lambda _: None)
    bad = [(o.asset, o.partition, o.error, o.checks_failed) for o in outcomes if not o.ok]
    assert bad == []
    ran = {(o.asset, o.partition) for o in outcomes}
    assert ("dedup_index", "main") in ran and ("quality_classifier", "clf") in ran
    assert {("tokenizer", "tiny"), ("token_shards", "tiny.alpha"), ("token_shards", "tiny.beta"),
            ("mixture", "mix")} <= ran
    assert len(ran) == 3 + 1 + 3 + 1 + 3 + 1 + 2 + 1

    db = StatsDB(s.home)
    _, rows = db.query("SELECT source, stage, documents FROM source_stats ORDER BY source, stage")
    got = {(r[0], r[1]): r[2] for r in rows}
    assert got[("alpha", "raw")] == 12 and got[("beta", "raw")] == 10 and got[("spam", "raw")] == 40
    assert got[("beta", "filtered")] == 9  # the spam page is gone
    # b0 (exact copy of a0) and b1 (near copy of a1) are removed from beta; alpha has priority and keeps both
    assert got[("alpha", "deduplicated")] == got[("alpha", "filtered")]
    assert got[("beta", "deduplicated")] == 7
    _, rows = db.query("SELECT source, exact_removed, near_removed FROM dedup_stats ORDER BY source")
    assert rows == [("alpha", 0, 0), ("beta", 1, 1), ("spam", 0, 0)]
    _, rows = db.query("SELECT sum(documents_removed) FROM filter_stats WHERE source = 'beta'")
    assert rows == [(1,)]
    _, rows = db.query("SELECT value FROM classifier_stats WHERE metric = 'accuracy' AND split = 'validation'")
    assert rows and rows[0][0] > 0.6
    _, rows = db.query("SELECT split, source, tokens, target_share, actual_share FROM mixture_stats ORDER BY 1, 2")
    assert [(r[0], r[1], r[2]) for r in rows] == [("train", "alpha", 1800), ("train", "beta", 1200),
                                                 ("val", "alpha", 180), ("val", "beta", 120)]
    assert all(abs(r[3] - r[4]) < 1e-9 for r in rows)
    from minigpt_assets.data.loader import PackedLoader, open_mixture

    data = open_mixture(ArtifactStore(s.home).require("mixture", "mix").path, "train")
    batch = PackedLoader(data, batch_size=4, seed=0).batch(0, 0)
    assert batch["input_ids"].shape == (4, 32)

    store = ArtifactStore(s.home)
    art = store.require("deduplicated_documents", "beta")
    assert art.verify() == []
    ids = {r["id"] for r in iter_documents(art.files(".parquet", "shard"), columns=["id"])}
    assert make_doc_id("beta", "b3") in ids
    assert not {make_doc_id("beta", k) for k in ("b0", "b1", "b2")} & ids

    # running again on unchanged inputs publishes identical content: same data versions
    versions = {(o.asset, o.partition): o.metadata.get("content_hash") for o in outcomes}
    again = materialize_graph(s, select={"source_documents", "filtered_documents"}, log=lambda _: None, force=True)
    assert all(versions[(o.asset, o.partition)] == o.metadata["content_hash"] for o in again)


def test_empty_source_fails_blocking_check(tmp_path):
    data = write(tmp_path / "empty.jsonl", '{"nottext": 1}\n')
    root = tmp_path / "recipes"
    write(root / "sources/empty.yaml", f"kind: jsonl\nlocation: {data}\ndomain: web\ndedup: {{group: null}}\n")
    outcomes = materialize_graph(_settings(tmp_path, root), log=lambda _: None)
    first = outcomes[0]
    assert first.asset == "source_documents" and not first.ok and "nonempty" in first.checks_failed
    _, rows = StatsDB(tmp_path / "home").query("SELECT reason, count FROM source_errors")
    assert rows == [("missing_text", 1)]


def _dagster_materialize(env: dict, asset: str, partition: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m",
                           "minigpt_assets.definitions", "--select", asset, "--partition", partition],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_dagster_cli_materializes_partitions(tiny_recipes, tmp_path):
    home = tmp_path / "h"
    env = dict(os.environ, MINIGPT_RECIPES=str(tiny_recipes), MINIGPT_HOME=str(home),
               DAGSTER_HOME=str(tmp_path / "dh"))
    (tmp_path / "dh").mkdir()
    proc = _dagster_materialize(env, "source_documents", "alpha")
    assert proc.returncode == 0, proc.stderr[-2000:]
    art = ArtifactStore(home).require("source_documents", "alpha")
    assert art.counts["documents"] == 12
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert manifest["meta"]["recipe_hash"]
    # upstream of the group-partitioned index, then the index itself through the Dagster CLI
    materialize_graph(Settings(home=home, recipes=tiny_recipes, workers=1),
                      select={"source_documents", "quality_classifier", "filtered_documents"}, log=lambda _: None)
    proc = _dagster_materialize(env, "dedup_index", "main")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ArtifactStore(home).require("dedup_index", "main").counts["near_removed"] == 1


def _ran(outcomes) -> set[tuple[str, str]]:
    return {(o.asset, o.partition) for o in outcomes if not o.fresh}


def test_only_what_changed(tiny_recipes, tmp_path):
    s = _settings(tmp_path, tiny_recipes)
    quiet = {"log": lambda _: None}
    first = materialize_graph(s, **quiet)
    assert all(o.ok for o in first) and len(_ran(first)) == 15
    assert _ran(materialize_graph(s, **quiet)) == set()  # a second run runs nothing

    # a mixture recipe edit re-runs that mixture only
    mx = tiny_recipes / "mixtures/mix.yaml"
    mx.write_text(mx.read_text().replace("alpha: 0.6, beta: 0.4", "alpha: 0.5, beta: 0.5"))
    assert _ran(materialize_graph(s, **quiet)) == {("mixture", "mix")}

    # a dedup recipe change that finds the same duplicates: the index re-runs, its data version is unchanged,
    # so nothing below it runs
    dd = tiny_recipes / "dedup/main.yaml"
    dd.write_text(dd.read_text().replace("threshold: 0.7", "threshold: 0.75"))
    assert _ran(materialize_graph(s, **quiet)) == {("dedup_index", "main")}
    # one that changes the result re-runs the index and its members only
    dd.write_text(dd.read_text() + "near: false\n")
    ran = _ran(materialize_graph(s, **quiet))
    assert {("dedup_index", "main"), ("deduplicated_documents", "alpha"), ("deduplicated_documents", "beta")} <= ran
    assert not {a for a, _ in ran} & {"source_documents", "filtered_documents", "quality_classifier"}

    # a source recipe edit that does not change its bytes: the source re-runs, yields the same data version,
    # and the global index stays fresh
    src = tiny_recipes / "sources/alpha.yaml"
    src.write_text(src.read_text() + "description: the same documents, described\n")
    ran = _ran(materialize_graph(s, **quiet))
    assert ("source_documents", "alpha") in ran and ("dedup_index", "main") not in ran
    assert not {p for a, p in ran} - {"alpha", "tiny.alpha"}  # token shards read the recipe's split fraction
    assert ("mixture", "mix") not in ran  # identical token shards: the mixture stays fresh

    # a source edit that changes its documents re-runs that source down to the mixture that uses it
    (tiny_recipes / "sources/beta.yaml").write_text((tiny_recipes / "sources/beta.yaml").read_text()
                                                   + "limit_documents: 8\n")
    ran = _ran(materialize_graph(s, **quiet))
    assert {("source_documents", "beta"), ("token_shards", "tiny.beta"), ("mixture", "mix")} <= ran
    assert ("source_documents", "alpha") not in ran and ("quality_classifier", "clf") not in ran

    # forcing runs everything again
    assert len(_ran(materialize_graph(s, force=True, **quiet))) == 15


def test_a_fallen_held_out_reward_warns_and_a_bad_run_blocks():
    """A policy stage whose held-out reward fell gets a warning from the non-blocking held_out_reward check (its
    control run is still evaluated); a skipped step or a loss that did not fall fails the blocking loss_decreased;
    only error-severity failures fail the runner's step."""
    from minigpt_assets.defs.runner import _describe, _outcome
    from minigpt_assets.defs.training import reward_check, training_check

    fell = reward_check({"first_val_reward": 0.5, "final_val_reward": 0.4, "bad_steps": 0})
    assert not fell.passed and fell.severity == dg.AssetCheckSeverity.WARN
    assert reward_check({"first_val_reward": 0.4, "final_val_reward": 0.5, "bad_steps": 0}).passed
    assert reward_check({"first_loss": 2.0, "final_loss": 1.5, "bad_steps": 0}).passed  # not a policy stage
    assert training_check({"first_val_reward": 0.5, "final_val_reward": 0.4, "final_loss": 3.0, "first_loss": 2.0,
                           "bad_steps": 0}).passed  # a policy stage's loss may rise
    skipped = training_check({"first_val_reward": 0.4, "final_val_reward": 0.5, "bad_steps": 2})
    assert not skipped.passed and skipped.severity == dg.AssetCheckSeverity.ERROR
    flat = training_check({"first_loss": 2.0, "final_loss": 2.1, "bad_steps": 0})
    assert not flat.passed and flat.severity == dg.AssetCheckSeverity.ERROR
    assert training_check({"first_loss": 2.0, "final_loss": 1.5, "bad_steps": 0}).passed

    def run(result: dg.AssetCheckResult):
        @dg.asset
        def a() -> None:
            return None

        @dg.asset_check(asset=a, blocking=result.severity == dg.AssetCheckSeverity.ERROR)
        def c() -> dg.AssetCheckResult:
            return result

        return _outcome("a", None, dg.materialize([a, c], raise_on_error=False), 1.0)

    warned = run(fell)
    assert warned.ok and "warning: c failed (first_val_reward 0.5, final_val_reward 0.4)" in _describe(warned)
    blocked = run(flat)
    assert not blocked.ok and "FAIL" in _describe(blocked)
