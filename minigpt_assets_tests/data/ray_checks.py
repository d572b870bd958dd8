"""The Ray engine's checks, run by test_engine.py in a fresh Python process (not collected on their own: the file
name does not start with test_). A Ray driver inside a pytest-xdist worker that also ran torch, Dagster and other
pools was seen to take the worker down (once at module teardown, once mid-test); in its own process a crash is one
failed test with its output, not a lost worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minigpt_assets.data.engine import EngineConfig, EngineError, close_engine
from minigpt_assets.data.filters import _filter_shard, filter_shards
from minigpt_assets.settings import Settings
from minigpt_assets.store import ArtifactStore, StatsDB
from minigpt_assets_tests.conftest import REPO
from minigpt_assets_tests.data.test_engine import PROFILE, _double, _fails_on_three, _shards


# ------------------------------------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    close_engine()
    ray.shutdown()


def _hashes(home: Path) -> dict[tuple[str, str], str]:
    out = {}
    for cur in sorted((home / "artifacts").glob("*/*/CURRENT")):
        out[(cur.parent.parent.name, cur.parent.name)] = cur.read_text().strip()
    return out


def test_ray_gives_the_process_pools_artifacts(ray_local, tiny_recipes, tmp_path, monkeypatch):
    from minigpt_assets.defs.runner import materialize_graph

    homes = {}
    for engine in ("local", "ray"):
        monkeypatch.setenv("MINIGPT_DATA_ENGINE", engine)
        home = tmp_path / f"home-{engine}"
        monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))  # a run exports its instance's location
        outcomes = materialize_graph(Settings(home=home, recipes=tiny_recipes, workers=2), log=lambda _: None)
        assert [o for o in outcomes if not o.ok] == []
        homes[engine] = home
    local, ray = _hashes(homes["local"]), _hashes(homes["ray"])
    assert len(local) == 15 and ("mixture", "mix") in local and local.keys() == ray.keys()
    # every artifact is byte-identical; the mixture's recipe names its token shards by absolute path (the home)
    assert {k: v for k, v in local.items() if k[0] != "mixture"} == {k: v for k, v in ray.items() if k[0] != "mixture"}
    mix = {e: ArtifactStore(h).require("mixture", "mix") for e, h in homes.items()}
    files = {e: {f.name: f.read_bytes().replace(str(homes[e]).encode(), b"HOME") for f in m.path.iterdir()
                 if f.name != "manifest.json"} for e, m in mix.items()}
    assert files["local"] == files["ray"] and len(files["local"]) >= 3
    q = "SELECT * FROM dedup_stats ORDER BY source"
    assert StatsDB(homes["local"]).query(q)[1] == StatsDB(homes["ray"]).query(q)[1]
    art = ArtifactStore(homes["ray"]).require("deduplicated_documents", "beta")
    assert art.verify() == []


def _dies_once(marker: str, profile, clf, index, path, out_dir, shard_documents):
    """Shard 1's first attempt writes half a shard under a temporary name and its process dies."""
    if index == 1 and not os.path.exists(marker):
        Path(marker).write_text("died")
        (Path(out_dir) / f".shard-{index:05d}-00000.parquet.partial.tmp").write_bytes(b"PAR1 half")
        os._exit(1)
    return _filter_shard(profile, clf, index, path, out_dir, shard_documents)


def _always_dies(*_args):
    os._exit(1)


def test_a_killed_task_is_retried_with_an_identical_result(ray_local, tmp_path):
    from minigpt_assets.data.engine import RayEngine

    shards = _shards(tmp_path)
    want = filter_shards(shards, tmp_path / "local", PROFILE, None, workers=1)
    eng = RayEngine(EngineConfig(engine="ray", max_retries=2))
    out = tmp_path / "ray"
    out.mkdir()
    marker = str(tmp_path / "died")
    tasks = [(marker, PROFILE, None, i, str(p), str(out), 20_000) for i, p in enumerate(shards)]
    got = eng.map(_dies_once, tasks, [str(p) for p in shards], "filtering")
    assert Path(marker).exists()  # the first attempt did die
    assert [s.path.name for o in got for s in o.shards] == [s.path.name for s in want.shards]
    assert all(a.path.read_bytes() == b.path.read_bytes() for a, b in zip([s for o in got for s in o.shards],
                                                                         want.shards))
    with pytest.raises(EngineError, match=rf"filtering failed on shard {shards[0]} after 1 retries"):
        RayEngine(EngineConfig(engine="ray", max_retries=1)).map(_always_dies, [(1,)], [str(shards[0])],
                                                                   "filtering")


def test_a_task_error_on_ray_is_not_retried_and_names_the_shard(ray_local):
    from minigpt_assets.data.engine import RayEngine

    eng = RayEngine(EngineConfig(engine="ray"))
    assert eng.map(_double, [(i,) for i in range(5)], [str(i) for i in range(5)], "doubling") == [0, 2, 4, 6, 8]
    with pytest.raises(EngineError) as e:
        eng.map(_fails_on_three, [(i,) for i in range(5)], [f"shard-{i}" for i in range(5)], "tokenization")
    assert str(e.value) == "tokenization failed on shard shard-3: ValueError: bad record at line 7"


@pytest.mark.slow
def test_ray_gives_the_process_pools_artifacts_on_the_demo_data(ray_local, tmp_path, monkeypatch):
    """The shipped recipes' data graph (about 2 minutes per engine on 2 cores): every artifact byte-identical."""
    from minigpt_assets.defs.runner import materialize_graph

    select = {"source_documents", "quality_classifier", "filtered_documents", "dedup_index",
              "deduplicated_documents", "tokenizer", "token_shards"}
    homes = {}
    for engine in ("local", "ray"):
        monkeypatch.setenv("MINIGPT_DATA_ENGINE", engine)
        home = tmp_path / f"home-{engine}"
        monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
        outcomes = materialize_graph(Settings(home=home, recipes=REPO / "recipes", workers=2), select=select,
                                     log=lambda _: None)
        assert [o for o in outcomes if not o.ok] == []
        homes[engine] = home
    local, ray = _hashes(homes["local"]), _hashes(homes["ray"])
    assert local == ray and len(local) >= 20
    q = "SELECT * FROM dedup_stats ORDER BY source"
    assert StatsDB(homes["local"]).query(q)[1] == StatsDB(homes["ray"]).query(q)[1]
