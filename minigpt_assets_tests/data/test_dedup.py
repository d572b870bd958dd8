"""Dedup: datasketch-identical signatures, exact/near duplicates by priority, stats, cache, workers."""

from __future__ import annotations

import random
import re
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash, MinHashLSH

from minigpt_assets.data.dedup import apply_removals, baseline_datasketch, build_index, removed_ids
from minigpt_assets.data.documents import DOCUMENT_SCHEMA, ShardWriter, document, iter_documents
from minigpt_assets.data.engine import Engine, EngineConfig
from minigpt_assets.store import sha256_file
from minigpt_assets.data.minhash import (
    SHINGLE_HASH,
    exact_hash,
    lsh_params,
    normalize,
    shingles,
    sign_shard,
    signatures,
)
from minigpt_assets.recipes import DedupRecipe

R = DedupRecipe(threshold=0.7, num_perm=64, shingle_size=3)
VOCAB = [f"w{i}" for i in range(5000)]


def words_doc(seed: int, n: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def edit(text: str, k: int, seed: int = 0) -> str:
    """Replace k random words (a near duplicate)."""
    rng = random.Random(seed)
    ws = text.split()
    for _ in range(k):
        ws[rng.randrange(len(ws))] = rng.choice(["edited", "changed", "other"])
    return " ".join(ws)


def write_source(tmp_path: Path, name: str, docs: list[tuple[str, str]], per_shard: int = 4) -> list[Path]:
    w = ShardWriter(tmp_path / "shards" / name, max_documents=per_shard)
    for key, text in docs:
        w.write(document(f"{name}/{key}", text, name, "x", key))
    return [s.path for s in w.close()]


def removed_set(idx) -> set[tuple[str, str, str]]:
    return {(r["source"], r["id"], r["kind"]) for r in pq.read_table(idx.removed_path).to_pylist()}


# ---------------------------------------------------------------------------------------- text and hashes
def test_normalize_and_exact_hash():
    assert normalize("Hello,   World!\n\tFoo_bar-baz") == "hello world foo_bar baz"
    assert normalize("Ｃａｆé — ﬁne…") == "café fine"
    assert exact_hash("Hello,   World!") == exact_hash("hello world") == exact_hash(" HELLO\nworld. ")
    assert exact_hash("hello world") != exact_hash("hello worlds")
    assert -(1 << 63) <= exact_hash("x") < (1 << 63)


def test_normalize_fast_path_matches_definition():
    """The ASCII translate fast path equals NFKC + lower + punctuation regex + whitespace collapse."""
    rng = random.Random(3)
    alphabet = [chr(c) for c in range(128)] + list("éÉß…“”—ﬁ①Ａ\u00a0\u2028\u3000İ")
    punct = re.compile(r"[^\w\s]+")
    for i in range(3000):
        t = "".join(rng.choice(alphabet if i % 2 else alphabet[:128]) for _ in range(rng.randrange(60)))
        slow = " ".join(punct.sub(" ", unicodedata.normalize("NFKC", t).lower()).split())
        assert normalize(t) == slow, repr(t)


def test_shingles():
    assert shingles("A b, C d!", 2) == [b"a b", b"b c", b"c d"]
    assert shingles("one two", 5) == [b"one two"]
    assert shingles("", 3) == [b""]


def test_signatures_equal_datasketch():
    texts = [words_doc(i, 50 + 40 * i) for i in range(5)] + [
        "", "one", "two words", "Hello, World!  hello world",
        "Ünïcödé — text with ﬁ ligatures and ① marks",
        open(__file__, encoding="utf-8").read()]
    recipes = (DedupRecipe(), DedupRecipe(num_perm=64, seed=7, shingle_size=3), DedupRecipe(shingle_size=1))
    for recipe in recipes:
        sig = signatures(texts, recipe)
        assert sig.shape == (len(texts), recipe.num_perm)
        for i, t in enumerate(texts):
            m = MinHash(num_perm=recipe.num_perm, seed=recipe.seed, hashfunc=SHINGLE_HASH)
            for s in shingles(t, recipe.shingle_size):
                m.update(s)
            assert np.array_equal(m.hashvalues, sig[i]), (recipe, i)


def test_lsh_params_match_datasketch():
    for t, p in [(0.8, 128), (0.7, 64), (0.5, 256), (0.9, 32)]:
        lsh = MinHashLSH(threshold=t, num_perm=p)
        assert lsh_params(t, p) == (lsh.b, lsh.r)


def test_sign_shard_schema(tmp_path):
    shards = write_source(tmp_path, "s", [("0", "Hello world"), ("1", words_doc(1)), ("2", "")], per_shard=10)
    out = tmp_path / "sig.parquet"
    assert sign_shard(shards[0], R, out) == 3
    t = pq.read_table(out)
    bands, _ = lsh_params(R.threshold, R.num_perm)
    assert t.column_names == ["id", "exact", "bands", "sig"]
    assert t.schema.field("exact").type == pa.int64()
    band_type = t.schema.field("bands").type
    assert band_type.value_type == pa.int64() and band_type.list_size == bands
    assert t.schema.field("sig").type.value_type == pa.uint32() and t.schema.field("sig").type.list_size == 64
    assert t.column("exact").to_pylist()[0] == exact_hash("hello, WORLD")
    assert np.array_equal(np.array(t.column("sig").to_pylist(), dtype=np.uint32),
                          signatures(["Hello world", words_doc(1), ""], R))


# ------------------------------------------------------------------------------------------------ build_index
def test_exact_and_near_within_one_source(tmp_path):
    base = [words_doc(i) for i in range(8)]
    docs = [(f"d{i}", t) for i, t in enumerate(base)] + [
        ("ws", "  " + base[0].upper().replace(" ", "\n  ")),  # exact after normalization (case, whitespace)
        ("near", edit(base[1], 4)),                           # 4 words changed in 300: near duplicate
        ("new", words_doc(99))]                               # unrelated: kept
    idx = build_index({"s": (0, write_source(tmp_path, "s", docs))}, R, tmp_path / "idx")
    assert removed_set(idx) == {("s", "s/ws", "exact"), ("s", "s/near", "near")}
    assert idx.stats["s"] == {"documents": 11, "exact_removed": 1, "near_removed": 1, "clusters": 2}


@pytest.fixture
def three_sources(tmp_path):
    base = [words_doc(i) for i in range(10)]
    a = [(f"a{i}", t) for i, t in enumerate(base)]
    b = [("b0", base[0].upper()),                                   # exact copy of a0
         ("b1", edit(base[1], 3)),                                   # near copy of a1
         ("b2", words_doc(100)), ("b3", words_doc(101)),            # unrelated
         ("b4", edit(base[2], 2, seed=5)), ("b5", edit(base[2], 2, seed=6)),  # two near copies of a2
         ("b6", words_doc(102)), ("b7", edit(words_doc(102), 3, seed=9))]    # near pair inside b only
    c = [("c0", base[0]), ("c1", words_doc(102))]                    # exact copies: of a0, and of b6
    return {"a": (10, write_source(tmp_path, "a", a)), "b": (1, write_source(tmp_path, "b", b)),
            "c": (1, write_source(tmp_path, "c", c))}


def test_cross_source_priority_clusters_and_stats(tmp_path, three_sources):
    idx = build_index(three_sources, R, tmp_path / "idx", cache_dir=tmp_path / "cache")
    assert removed_set(idx) == {
        ("b", "b/b0", "exact"), ("c", "c/c0", "exact"),                       # a (priority 10) wins
        ("c", "c/c1", "exact"),                                               # b6 vs c1: priority tie -> b
        ("b", "b/b1", "near"), ("b", "b/b4", "near"), ("b", "b/b5", "near"),  # near copies of a's docs
        ("b", "b/b7", "near")}                                                # b6 kept (b7 > b6 by id)
    clusters = pq.read_table(idx.clusters_path).to_pylist()
    by_cluster: dict[str, list[dict]] = {}
    for r in clusters:
        by_cluster.setdefault(r["cluster"], []).append(r)
    groups = {frozenset(r["id"] for r in rows): (rows[0]["kind"], {r["id"] for r in rows if r["kept"]})
              for rows in by_cluster.values()}
    assert groups == {
        frozenset({"a/a0", "b/b0", "c/c0"}): ("exact", {"a/a0"}),
        frozenset({"b/b6", "c/c1"}): ("exact", {"b/b6"}),
        frozenset({"a/a1", "b/b1"}): ("near", {"a/a1"}),
        frozenset({"a/a2", "b/b4", "b/b5"}): ("near", {"a/a2"}),
        frozenset({"b/b6", "b/b7"}): ("near", {"b/b6"})}
    assert all(sum(r["kept"] for r in rows) == 1 for rows in by_cluster.values())
    assert idx.stats == {
        "a": {"documents": 10, "exact_removed": 0, "near_removed": 0, "clusters": 3},
        "b": {"documents": 8, "exact_removed": 1, "near_removed": 4, "clusters": 5},
        "c": {"documents": 2, "exact_removed": 2, "near_removed": 0, "clusters": 2}}
    assert removed_ids(idx.removed_path, "b") == {"b/b0", "b/b1", "b/b4", "b/b5", "b/b7"}
    assert removed_ids(idx.removed_path, "a") == set()


def test_tie_breaks_by_source_name(tmp_path):
    t = words_doc(7)
    members = {"zeta": (0, write_source(tmp_path, "zeta", [("z", t)])),
               "alpha": (0, write_source(tmp_path, "alpha", [("a", t.upper())])),
               "mid": (0, write_source(tmp_path, "mid", [("m", edit(t, 3))]))}
    idx = build_index(members, R, tmp_path / "i")
    assert removed_set(idx) == {("zeta", "zeta/z", "exact"), ("mid", "mid/m", "near")}
    higher = dict(members, zeta=(5, members["zeta"][1]))
    idx = build_index(higher, R, tmp_path / "j")
    assert removed_set(idx) == {("alpha", "alpha/a", "exact"), ("mid", "mid/m", "near")}


def test_switches_exact_near_verify(tmp_path, three_sources):
    ex = build_index(three_sources, R.model_copy(update={"near": False}), tmp_path / "e")
    assert {k for _, _, k in removed_set(ex)} == {"exact"} and len(removed_set(ex)) == 3
    nr = build_index(three_sources, R.model_copy(update={"exact": False}), tmp_path / "n")
    assert {k for _, _, k in removed_set(nr)} == {"near"}
    assert len(removed_set(nr)) == 7  # exact copies are near copies too
    nv = build_index(three_sources, R.model_copy(update={"verify_candidates": False}), tmp_path / "v")
    assert removed_set(nv) >= removed_set(build_index(three_sources, R, tmp_path / "w"))


def test_big_bucket_is_one_cluster(tmp_path):
    """More copies than the all-pairs bucket limit: linked as star + chain, still one component."""
    base = words_doc(5)
    docs = [(f"{i:03d}", edit(base, 1, seed=i)) for i in range(90)] + [("zz", words_doc(6))]
    idx = build_index({"s": (0, write_source(tmp_path, "s", docs, per_shard=30))}, R, tmp_path / "i")
    removed = removed_set(idx)
    assert {k for _, _, k in removed} <= {"exact", "near"} and ("s", "s/000", "near") not in removed
    assert {i for _, i, _ in removed} == {f"s/{i:03d}" for i in range(1, 90)}
    near = [r for r in pq.read_table(idx.clusters_path).to_pylist() if r["kind"] == "near"]
    assert len({r["cluster"] for r in near}) == 1 and [r["id"] for r in near if r["kept"]] == ["s/000"]


def test_verification_drops_weak_candidates(tmp_path):
    """A pair sharing an LSH band but under the threshold: removed when unverified, kept when verified."""
    r = DedupRecipe(threshold=0.1, num_perm=16, shingle_size=1)
    assert lsh_params(0.1, 16) == (15, 1)  # one row per band: one equal signature value makes a candidate
    base = words_doc(1, 100)
    far = " ".join(base.split()[:5] + words_doc(2, 95).split())
    sig = signatures([base, far], r)
    assert (sig[0, :15] == sig[1, :15]).sum() == 1 and (sig[0] == sig[1]).mean() < 0.1
    members = {"s": (0, write_source(tmp_path, "s", [("0", base), ("1", far)]))}
    assert removed_ids(build_index(members, r, tmp_path / "v").removed_path, "s") == set()
    unverified = r.model_copy(update={"verify_candidates": False})
    assert removed_ids(build_index(members, unverified, tmp_path / "u").removed_path, "s") == {"s/1"}


def test_cache_hits_and_workers_give_identical_results(tmp_path, three_sources):
    i1 = build_index(three_sources, R, tmp_path / "i1", cache_dir=tmp_path / "cache", workers=1)
    n_shards = sum(len(s) for _, s in three_sources.values())
    assert i1.cache_hits == 0 and i1.signed_shards == n_shards == 6
    i2 = build_index(three_sources, R, tmp_path / "i2", cache_dir=tmp_path / "cache", workers=1)
    assert i2.cache_hits == n_shards and i2.signed_shards == 0
    i3 = build_index(three_sources, R, tmp_path / "i3", cache_dir=tmp_path / "cache2", workers=2)
    assert i3.cache_hits == 0 and i3.signed_shards == n_shards
    for other in (i2, i3):
        assert pq.read_table(other.removed_path).equals(pq.read_table(i1.removed_path))
        assert pq.read_table(other.clusters_path).equals(pq.read_table(i1.clusters_path))
        assert other.stats == i1.stats
    # the signature files themselves are identical whichever process wrote them
    for f in (tmp_path / "cache").rglob("*.parquet"):
        twin = next((tmp_path / "cache2").rglob(f.name))
        assert pq.read_table(f).equals(pq.read_table(twin))
    # another recipe with the same MinHash parameters reuses the cache; a different num_perm does not
    i4 = build_index(three_sources, R.model_copy(update={"exact": False}), tmp_path / "i4",
                     cache_dir=tmp_path / "cache")
    assert i4.cache_hits == n_shards
    i5 = build_index(three_sources, R.model_copy(update={"num_perm": 32}), tmp_path / "i5",
                     cache_dir=tmp_path / "cache")
    assert i5.cache_hits == 0


def test_same_shard_in_two_sources_and_empty(tmp_path):
    shards = write_source(tmp_path, "s", [("0", words_doc(1)), ("1", words_doc(2))])
    idx = build_index({"hi": (2, shards), "lo": (1, shards)}, R, tmp_path / "i")
    assert removed_set(idx) == {("lo", "s/0", "exact"), ("lo", "s/1", "exact")}
    assert idx.stats["hi"]["documents"] == idx.stats["lo"]["documents"] == 2 and idx.signed_shards == 1
    empty = build_index({"none": (0, [])}, R, tmp_path / "e")
    assert pq.read_table(empty.removed_path).num_rows == 0
    assert pq.read_table(empty.clusters_path).num_rows == 0
    assert empty.stats == {"none": {"documents": 0, "exact_removed": 0, "near_removed": 0, "clusters": 0}}


def test_apply_removals_keeps_order(tmp_path):
    shards = write_source(tmp_path, "a", [(f"{i:02d}", f"text {i} é") for i in range(23)], per_shard=5)
    drop = {"a/03", "a/07", "a/20", "a/missing"}
    shard_of = {f"a/{i:02d}": sha256_file(shards[i // 5]) for i in range(23)}
    removed = tmp_path / "removed.parquet"
    pq.write_table(pa.table({"source": ["a"] * 4 + ["b"], "id": sorted(drop) + ["a/00"],
                             "shard": [shard_of.get(i, "0" * 64) for i in sorted(drop)] + [shard_of["a/00"]]}),
                   removed)
    out, n, nbytes = apply_removals(shards, removed, "a", tmp_path / "out", shard_documents=3)
    docs = list(iter_documents([s.path for s in out]))
    assert [d["id"] for d in docs] == [f"a/{i:02d}" for i in range(23) if f"a/{i:02d}" not in drop]
    assert n == 20 and [s.documents for s in out] == [3, 1, 3, 1, 3, 2, 3, 2, 2]  # per input shard of 5
    assert [s.path.name for s in out][:3] == ["shard-00000-00000.parquet", "shard-00000-00001.parquet",
                                              "shard-00001-00000.parquet"]
    assert nbytes == sum(len(d["text"].encode()) for d in docs) == sum(s.bytes for s in out)
    assert pq.read_schema(out[0].path).names == DOCUMENT_SCHEMA.names
    kept_all = apply_removals(shards, None, "a", tmp_path / "o2")[0]
    assert [d["id"] for d in iter_documents([s.path for s in kept_all])] == [f"a/{i:02d}" for i in range(23)]
    two = apply_removals(shards, removed, "a", tmp_path / "o3", shard_documents=3,
                         engine=Engine(EngineConfig(workers=2)))[0]
    assert [s.path.read_bytes() for s in two] == [s.path.read_bytes() for s in out]


def test_agrees_with_datasketch_baseline(tmp_path):
    base = [words_doc(1000 + i) for i in range(80)]
    planted = [edit(base[i], 3, seed=i) for i in range(0, 80, 4)]  # J ~ 0.94 for k=3
    texts = base + planted
    expected = set(range(80, 100))
    assert baseline_datasketch(texts, R) == expected
    shards = write_source(tmp_path, "s", [(f"{i:03d}", t) for i, t in enumerate(texts)], per_shard=25)
    idx = build_index({"s": (0, shards)}, R, tmp_path / "i", workers=2)
    assert {int(i.split("/")[1]) for i in removed_ids(idx.removed_path, "s")} == expected


@pytest.mark.parametrize("buckets", [2, 7, 64])
def test_bucketed_join_finds_the_same_clusters(tmp_path, three_sources, buckets):
    """The LSH join split by band-hash range into buckets joined on their own: the same removals, clusters and
    stats as one join (buckets of a big group included: it never spans two)."""
    from minigpt_assets.data.dedup import bucket_count

    one = build_index(three_sources, R, tmp_path / "one", cache_dir=tmp_path / "cache", buckets=1)
    split = build_index(three_sources, R, tmp_path / "split", cache_dir=tmp_path / "cache", buckets=buckets)
    assert pq.read_table(split.removed_path).equals(pq.read_table(one.removed_path))
    assert pq.read_table(split.clusters_path).equals(pq.read_table(one.clusters_path))
    assert split.stats == one.stats and sum(v["near_removed"] for v in one.stats.values()) > 0
    base = words_doc(5)
    docs = [(f"{i:03d}", edit(base, 1, seed=i)) for i in range(90)]
    big = {"s": (0, write_source(tmp_path / "big", "s", docs, per_shard=30))}
    a = build_index(big, R, tmp_path / "b1", buckets=1)
    b = build_index(big, R, tmp_path / "b2", buckets=buckets)
    assert pq.read_table(a.clusters_path).equals(pq.read_table(b.clusters_path))
    assert bucket_count(10, 1) == 1 and bucket_count(2**20, 16) == 4 and bucket_count(2**20 + 1, 16) == 5
