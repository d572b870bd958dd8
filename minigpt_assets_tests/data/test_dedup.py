"""Dedup: datasketch-identical signatures, exact and near duplicates across sources by priority, caching."""

from __future__ import annotations

import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash, MinHashLSH

from minigpt_assets.data.dedup import (SHINGLE_HASH, apply_removals, baseline_datasketch, build_index, exact_hash,
                                       lsh_params, removed_ids, shingles, signatures)
from minigpt_assets.data.documents import ShardWriter, document, iter_documents
from minigpt_assets.recipes import DedupRecipe

R = DedupRecipe(threshold=0.7, num_perm=64, shingle_size=3)


def words_doc(seed: int, n: int = 120) -> str:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    return " ".join(rng.choice(vocab) for _ in range(n))


def edit(text: str, k: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    ws = text.split()
    for _ in range(k):
        ws[rng.randrange(len(ws))] = "edited"
    return " ".join(ws)


def test_signatures_equal_datasketch():
    texts = [words_doc(i) for i in range(5)] + ["", "one", "Hello, World!  hello world"]
    sig = signatures(texts, DedupRecipe())
    for i, t in enumerate(texts):
        m = MinHash(num_perm=128, seed=1, hashfunc=SHINGLE_HASH)
        m.update_batch(shingles(t, 5))
        assert np.array_equal(m.hashvalues, sig[i]), i


def test_lsh_params_match_datasketch():
    for t, p in [(0.8, 128), (0.7, 64), (0.5, 256)]:
        lsh = MinHashLSH(threshold=t, num_perm=p)
        assert lsh_params(t, p) == (lsh.b, lsh.r)


def test_exact_hash_normalizes():
    assert exact_hash("Hello,   World!") == exact_hash("hello world")
    assert exact_hash("hello world") != exact_hash("hello worlds")


def _write(tmp_path, name, docs, per_shard=4):
    w = ShardWriter(tmp_path / name, max_documents=per_shard)
    for key, text in docs:
        w.write(document(f"{name}/{key}", text, name, "x", key))
    return [s.path for s in w.close()]


@pytest.fixture
def two_sources(tmp_path):
    base = [words_doc(i) for i in range(10)]
    a = [(f"a{i}", t) for i, t in enumerate(base)]
    b = [("b0", base[0].upper()),                 # exact (after normalization) copy of a0
         ("b1", edit(base[1], 3)),               # near copy of a1
         ("b2", words_doc(100)), ("b3", words_doc(101)),
         ("b4", edit(base[2], 2, seed=5)), ("b5", edit(base[2], 2, seed=6))]  # two near copies of a2
    c = [("c0", base[0])]                         # exact copy in a third source, same priority as b
    return {"a": (10, _write(tmp_path, "a", a)), "b": (1, _write(tmp_path, "b", b)),
            "c": (1, _write(tmp_path, "c", c))}


def test_cross_source_priority_and_stats(tmp_path, two_sources):
    idx = build_index(two_sources, R, tmp_path / "idx", cache_dir=tmp_path / "cache")
    rem = {(r["source"], r["id"].split("/")[1], r["kind"]) for r in pq.read_table(idx.removed_path).to_pylist()}
    assert rem == {("b", "b0", "exact"), ("c", "c0", "exact"), ("b", "b1", "near"), ("b", "b4", "near"),
                   ("b", "b5", "near")}
    assert idx.stats["a"] == {"documents": 10, "exact_removed": 0, "near_removed": 0, "clusters": 3}
    assert idx.stats["b"] == {"documents": 6, "exact_removed": 1, "near_removed": 3, "clusters": 3}
    assert idx.stats["c"]["exact_removed"] == 1
    clusters = pq.read_table(idx.clusters_path).to_pylist()
    kept = {r["id"] for r in clusters if r["kept"]}
    assert kept == {"a/a0", "a/a1", "a/a2"}
    assert removed_ids(idx.removed_path, "b") == {"b/b0", "b/b1", "b/b4", "b/b5"}


def test_tie_breaks_by_source_name(tmp_path):
    t = words_doc(7)
    members = {"zeta": (0, _write(tmp_path, "zeta", [("z", t)])), "alpha": (0, _write(tmp_path, "alpha", [("a", t)]))}
    idx = build_index(members, R, tmp_path / "i")
    assert removed_ids(idx.removed_path, "zeta") == {"zeta/z"} and removed_ids(idx.removed_path, "alpha") == set()


def test_cache_and_workers_give_identical_results(tmp_path, two_sources):
    i1 = build_index(two_sources, R, tmp_path / "i1", cache_dir=tmp_path / "cache", workers=1)
    assert i1.cache_hits == 0 and i1.signed_shards == 6  # 3 + 2 + 1 shards
    i2 = build_index(two_sources, R, tmp_path / "i2", cache_dir=tmp_path / "cache", workers=1)
    assert i2.cache_hits == 6 and i2.signed_shards == 0
    i3 = build_index(two_sources, R, tmp_path / "i3", cache_dir=tmp_path / "cache2", workers=2)
    for other in (i2, i3):
        assert pq.read_table(other.removed_path).equals(pq.read_table(i1.removed_path))
        assert other.stats == i1.stats


def test_exact_only_and_near_only(tmp_path, two_sources):
    ex = build_index(two_sources, DedupRecipe(threshold=0.7, num_perm=64, shingle_size=3, near=False), tmp_path / "e")
    assert sum(v["near_removed"] for v in ex.stats.values()) == 0
    assert sum(v["exact_removed"] for v in ex.stats.values()) == 2
    nr = build_index(two_sources, DedupRecipe(threshold=0.7, num_perm=64, shingle_size=3, exact=False), tmp_path / "n")
    assert sum(v["exact_removed"] for v in nr.stats.values()) == 0
    assert sum(v["near_removed"] for v in nr.stats.values()) == 5  # exact copies are near copies too


def test_apply_removals_keeps_order(tmp_path, two_sources):
    shards = two_sources["a"][1]
    drop = {"a/a3", "a/a7"}
    out, n, nbytes = apply_removals(shards, drop, tmp_path / "out", shard_documents=3)
    ids = [d["id"] for d in iter_documents([s.path for s in out])]
    assert ids == [f"a/a{i}" for i in range(10) if f"a/a{i}" not in drop]
    assert n == 8 and len(out) == 3 and nbytes > 0


def test_agrees_with_datasketch_baseline(tmp_path):
    base = [words_doc(1000 + i, 200) for i in range(60)]
    planted = [edit(base[i], 2, seed=i) for i in range(0, 60, 6)]  # J ~ 0.94: found with P > 0.999
    texts = base + planted
    expected = set(range(60, 70))
    assert baseline_datasketch(texts, R) == expected
    idx = build_index({"s": (0, _write(tmp_path, "s", [(str(i), t) for i, t in enumerate(texts)], 25))}, R,
                      tmp_path / "i")
    assert {int(i.split("/")[1]) for i in removed_ids(idx.removed_path, "s")} == expected
