"""Artifact store and stats db: atomic publish, content addressing, verification, DuckDB views."""

from __future__ import annotations

import pytest

from minigpt_assets.store import ArtifactError, ArtifactStore, StatsDB


def test_publish_is_atomic_and_content_addressed(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.stage("a", "p") as st:
        (st.path / "x.txt").write_text("hello")
        assert store.current("a", "p") is None  # nothing visible while staging
        art1 = st.publish(counts={"n": 1})
    assert (art1.path / "x.txt").read_text() == "hello"
    assert store.current("a", "p").version == art1.version
    with store.stage("a", "p") as st:  # identical content -> same folder, same version
        (st.path / "x.txt").write_text("hello")
        art2 = st.publish(counts={"n": 1})
    assert art2.path == art1.path and art2.version == art1.version
    with store.stage("a", "p") as st:
        (st.path / "x.txt").write_text("changed")
        art3 = st.publish(counts={"n": 1})
    assert art3.version != art1.version and store.current("a", "p").path == art3.path
    assert len(store.versions("a", "p")) == 2
    assert not [p for p in (tmp_path / "artifacts/a/p").iterdir() if p.name.startswith(".staging")]


def test_failed_stage_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.stage("a", "p") as st:
            (st.path / "half.txt").write_text("partial")
            raise RuntimeError("killed")
    assert store.current("a", "p") is None
    assert list((tmp_path / "artifacts/a/p").iterdir()) == []
    with pytest.raises(ArtifactError, match=r"a\[p\] has not been materialized"):
        store.require("a", "p")


def test_verify_detects_tampering(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.stage("a", None) as st:
        (st.path / "sub").mkdir()
        (st.path / "sub/f.bin").write_bytes(b"\x00" * 100)
        art = st.publish()
    assert art.verify() == []
    (art.path / "sub/f.bin").write_bytes(b"\x01" * 100)
    assert "sha256" in art.verify()[0]
    (art.path / "sub/f.bin").unlink()
    assert "missing" in art.verify()[0]


def test_stats_views_replace_per_writer(tmp_path):
    db = StatsDB(tmp_path)
    assert db.query("SELECT count(*) FROM source_stats")[1] == [(0,)]  # views exist before any write
    db.write("source_stats", "raw__a", [{"source": "a", "stage": "raw", "documents": 3, "bytes": 30}])
    db.write("source_stats", "raw__b", [{"source": "b", "stage": "raw", "documents": 5, "bytes": 50}])
    db.write("source_stats", "raw__a", [{"source": "a", "stage": "raw", "documents": 4, "bytes": 40}])
    cols, rows = db.query("SELECT source, documents FROM source_stats ORDER BY source")
    assert cols == ["source", "documents"] and rows == [("a", 4), ("b", 5)]
    db.write("filter_stats", "a", [])
    assert db.query("SELECT count(*) FROM filter_stats")[1] == [(0,)]
