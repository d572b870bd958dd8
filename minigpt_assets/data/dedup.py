"""Exact and near-duplicate (MinHash LSH) dedup across sources, with per-shard parallel, cached signing.

Signing (one MinHash per document) runs per shard in separate processes and is cached by the shard's checksum,
so an unchanged source is never re-signed. Only the join is global: exact-hash groups and LSH band buckets are
grouped in DuckDB (which spills to disk), and only documents that share a bucket reach Python.
Signatures are identical to `datasketch.MinHash(num_perm, seed, hashfunc=SHINGLE_HASH)` fed the same shingles.
"""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from datasketch import MinHash, MinHashLSH
from datasketch import minhash as _dsm
from datasketch.lsh import _optimal_param

from minigpt_assets.data.documents import DOCUMENT_SCHEMA, ShardInfo, iter_batches
from minigpt_assets.recipes import DedupRecipe, canonical_hash
from minigpt_assets.store import sha256_file

_P32 = 0x01000193  # FNV-1a 32-bit prime: combines word hashes into a shingle hash


def SHINGLE_HASH(shingle: bytes) -> int:
    """32-bit hash of a shingle ("w1 w2 ... wk"): word xxh32 hashes combined polynomially (mod 2^32).

    This is what `signatures()` computes vectorized (each word hashed once, not once per shingle); as a plain
    function it is a valid `hashfunc` for datasketch, which is how the tests prove the two agree.
    """
    h = 0
    for w in shingle.split(b" "):
        h = (h * _P32 + xxhash.xxh32_intdigest(w)) & 0xFFFFFFFF
    return h
_NON_WORD = re.compile(r"[^\w\s]+")
_CHUNK = 1 << 16  # shingles per vectorized block
MAX32 = np.uint32(0xFFFFFFFF)


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation removed, whitespace collapsed."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def exact_hash(text: str) -> int:
    """64-bit hash of the normalized text, as a signed int64."""
    return _exact(normalize(text))


def _exact(normalized: str) -> int:
    return int(np.int64(np.uint64(xxhash.xxh3_64_intdigest(normalized.encode()))))


def shingles(text: str, k: int) -> list[bytes]:
    """Word k-grams of the normalized text; a text shorter than k words is one shingle."""
    words = normalize(text).split()
    if len(words) <= k:
        return [" ".join(words).encode()]
    return [" ".join(words[i:i + k]).encode() for i in range(len(words) - k + 1)]


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) exactly as datasketch's MinHashLSH picks them (equal false positive/negative weights)."""
    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def _permutations(recipe: DedupRecipe) -> tuple[np.ndarray, np.ndarray]:
    a, b = MinHash(num_perm=recipe.num_perm, seed=recipe.seed).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


class _WordHasher:
    """xxh32 of words, memoized (word frequencies are Zipfian, so most lookups hit)."""

    def __init__(self, limit: int = 1 << 20):
        self.cache: dict[str, int] = {}
        self.limit = limit

    def __call__(self, words: list[str]) -> list[int]:
        c = self.cache
        if len(c) > self.limit:
            c.clear()
        out = []
        for w in words:
            h = c.get(w)
            if h is None:
                h = c[w] = xxhash.xxh32_intdigest(w.encode())
            out.append(h)
        return out


def _shingle_hashes(wh: np.ndarray, k: int) -> np.ndarray:
    """Vectorized SHINGLE_HASH over all word k-grams of one document's word hashes."""
    n = len(wh)
    if n <= k:  # one shingle made of all the words
        k = n
    m = n - k + 1
    h = np.zeros(m, dtype=np.uint32)
    for i in range(k):
        h = h * np.uint32(_P32) + wh[i:i + m]
    return h


def signatures(texts: list[str], recipe: DedupRecipe, normalized: list[str] | None = None) -> np.ndarray:
    """[n, num_perm] uint32 MinHash signatures, computed for many documents per numpy call."""
    a, b = _permutations(recipe)
    hasher = _WordHasher()
    norm = normalized if normalized is not None else [normalize(t) for t in texts]
    parts: list[np.ndarray] = []
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    with np.errstate(over="ignore"):
        for i, t in enumerate(norm):
            words = t.split() or [""]
            sh = _shingle_hashes(np.asarray(hasher(words), dtype=np.uint32), recipe.shingle_size)
            parts.append(sh)
            offsets[i + 1] = offsets[i] + len(sh)
        hv = _dsm._fmix(np.concatenate(parts) if parts else np.zeros(0, np.uint32), 32)
        out = np.full((len(texts), recipe.num_perm), MAX32, dtype=np.uint32)
        # docs in blocks of about _CHUNK shingles: one (shingles x perms) matrix and a reduceat per block
        start = 0
        while start < len(texts):
            end = start + 1
            while end < len(texts) and offsets[end + 1] - offsets[start] <= _CHUNK:
                end += 1
            lo, hi = offsets[start], offsets[end]
            block = a[:, None] * hv[None, lo:hi] + b[:, None]  # (perms x shingles); uint32 wraps: mod 2^32
            out[start:end] = np.minimum.reduceat(block, offsets[start:end] - lo, axis=1).T
            start = end
    return out


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n, bands] int64: a 64-bit polynomial hash of each band's rows (band index mixed in)."""
    n = sig.shape[0]
    x = sig[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    h = np.full((n, bands), np.uint64(1469598103934665603), dtype=np.uint64)
    mult = np.uint64(1099511628211)
    with np.errstate(over="ignore"):
        for r in range(rows):
            h = (h ^ x[:, :, r]) * mult
            h ^= h >> np.uint64(29)
        h = h * np.uint64(0x9E3779B97F4A7C15) + np.arange(bands, dtype=np.uint64)[None, :]
    return h.view(np.int64)


SIG_SCHEMA = lambda num_perm, bands: pa.schema([  # noqa: E731
    ("id", pa.string()), ("exact", pa.int64()), ("bands", pa.list_(pa.int64(), bands)),
    ("sig", pa.list_(pa.uint32(), num_perm))])


def sign_shard(shard: Path, recipe: DedupRecipe, out: Path) -> int:
    """Write id, exact hash, band hashes and signature of every document of one shard; returns rows."""
    bands, rows = lsh_params(recipe.threshold, recipe.num_perm)
    tables = []
    for batch in iter_batches([shard], columns=["id", "text"], batch_size=2048):
        texts = batch.column("text").to_pylist()
        norm = [normalize(t) for t in texts]
        sig = signatures(texts, recipe, norm)
        bh = band_hashes(sig, bands, rows)
        tables.append(pa.table({
            "id": batch.column("id"),
            "exact": pa.array([_exact(t) for t in norm], pa.int64()),
            "bands": pa.FixedSizeListArray.from_arrays(pa.array(bh.ravel(), pa.int64()), bands),
            "sig": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel(), pa.uint32()), recipe.num_perm),
        }))
    table = pa.concat_tables(tables) if tables else SIG_SCHEMA(recipe.num_perm, bands).empty_table()
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return table.num_rows


def _sign_task(args: tuple[str, DedupRecipe, str]) -> int:
    shard, recipe, out = args
    return sign_shard(Path(shard), recipe, Path(out))


def _params_key(recipe: DedupRecipe) -> str:
    return canonical_hash({k: getattr(recipe, k) for k in ("num_perm", "seed", "shingle_size", "threshold")})[:16]


# ------------------------------------------------------------------------------------------------ index
@dataclass
class DedupIndex:
    removed_path: Path
    clusters_path: Path
    stats: dict[str, dict[str, int]]
    signed_shards: int
    cache_hits: int


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        p = self.parent.setdefault(x, x)
        while p != x:
            self.parent[x] = self.parent.setdefault(p, p)
            x, p = p, self.parent[p]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def build_index(members: dict[str, tuple[int, list[Path]]], recipe: DedupRecipe, work_dir: Path,
                cache_dir: Path | None = None, workers: int = 1) -> DedupIndex:
    """Sign all shards (parallel, cached), then find exact and near-duplicate clusters across all members."""
    import duckdb

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir or work_dir / ".signatures") / _params_key(recipe)
    cache.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, int, str]] = []  # (signature file, priority, source)
    todo: list[tuple[str, DedupRecipe, str]] = []
    for source, (prio, shards) in sorted(members.items()):
        for shard in shards:
            sig_file = cache / f"{sha256_file(Path(shard))}.parquet"
            files.append((str(sig_file), prio, source))
            if not sig_file.exists():
                todo.append((str(shard), recipe, str(sig_file)))
    if workers > 1 and len(todo) > 1:
        ctx = __import__("multiprocessing").get_context("forkserver")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
            list(pool.map(_sign_task, todo))
    else:
        for t in todo:
            _sign_task(t)

    bands, _ = lsh_params(recipe.threshold, recipe.num_perm)
    con = duckdb.connect(":memory:")
    con.execute(f"SET temp_directory='{(work_dir / '.duckdb_tmp').as_posix()}'")
    con.execute("CREATE TABLE files (filename VARCHAR, prio INTEGER, source VARCHAR)")
    con.executemany("INSERT INTO files VALUES (?, ?, ?)", files)
    stats = {s: {"documents": 0, "exact_removed": 0, "near_removed": 0, "clusters": 0} for s in members}
    removed_rows: list[tuple[str, str, str, str]] = []  # (source, id, kind, cluster)
    cluster_rows: list[tuple[str, str, str, str, bool]] = []
    if files:
        file_list = "[" + ",".join(f"'{f}'" for f, _, _ in files) + "]"
        con.execute(f"""CREATE TABLE docs AS SELECT f.source, f.prio, s.id, s.exact, s.bands
                        FROM read_parquet({file_list}, filename=true) s JOIN files f USING (filename)""")
        for source, n in con.execute("SELECT source, count(*) FROM docs GROUP BY source").fetchall():
            stats[source]["documents"] = n
        # exact: rank inside each normalized-hash group; rank 1 (top priority, then source, then id) is kept
        con.execute("""CREATE TABLE ranked AS SELECT source, prio, id, exact, bands,
                         row_number() OVER (PARTITION BY exact ORDER BY prio DESC, source, id) AS rn,
                         count(*) OVER (PARTITION BY exact) AS group_size FROM docs""")
        if recipe.exact:
            for source, id_, exact, rn in con.execute(
                    "SELECT source, id, exact, rn FROM ranked WHERE group_size > 1 ORDER BY exact, rn").fetchall():
                cluster = f"x{exact & 0xFFFFFFFFFFFFFFFF:016x}"
                cluster_rows.append((cluster, "exact", source, id_, rn == 1))
                if rn > 1:
                    removed_rows.append((source, id_, "exact", cluster))
            survivors = "rn = 1"
        else:
            survivors = "true"
        if recipe.near:
            _near(con, survivors, bands, recipe, files, removed_rows, cluster_rows)
    con.close()
    for source, _, kind, _ in removed_rows:
        stats[source][f"{kind}_removed"] += 1
    seen: set[tuple[str, str]] = set()
    for cluster, _, source, _, _ in cluster_rows:
        if (cluster, source) not in seen:
            seen.add((cluster, source))
            stats[source]["clusters"] += 1
    removed_path, clusters_path = work_dir / "removed.parquet", work_dir / "clusters.parquet"
    pq.write_table(pa.table({k: pa.array(v, pa.string()) for k, v in zip(
        ("source", "id", "kind", "cluster"), zip(*removed_rows) if removed_rows else ([], [], [], []))}),
        removed_path)
    cols = list(zip(*cluster_rows)) if cluster_rows else [[], [], [], [], []]
    pq.write_table(pa.table({"cluster": pa.array(cols[0], pa.string()), "kind": pa.array(cols[1], pa.string()),
                             "source": pa.array(cols[2], pa.string()), "id": pa.array(cols[3], pa.string()),
                             "kept": pa.array(cols[4], pa.bool_())}), clusters_path)
    return DedupIndex(removed_path, clusters_path, stats, len(todo), len(files) - len(todo))


def _near(con, survivors: str, bands: int, recipe: DedupRecipe, files: list, removed_rows: list,
          cluster_rows: list) -> None:
    """LSH buckets in DuckDB -> (optionally verified) edges -> connected components -> keep the best of each."""
    buckets = con.execute(f"""
        WITH u AS (SELECT id, unnest(bands) AS h FROM ranked WHERE {survivors})
        SELECT list(id ORDER BY id) FROM u GROUP BY h HAVING count(*) > 1""").fetchall()
    if not buckets:
        return
    candidates = sorted({i for (ids,) in buckets for i in ids})
    con.execute("CREATE TABLE cand (id VARCHAR)")
    con.executemany("INSERT INTO cand VALUES (?)", [(c,) for c in candidates])
    info = {i: (s, p) for i, s, p in con.execute(
        "SELECT id, source, prio FROM ranked JOIN cand USING (id)").fetchall()}
    sigs: dict[str, np.ndarray] = {}
    if recipe.verify_candidates:
        file_list = "[" + ",".join(f"'{f}'" for f, _, _ in files) + "]"
        for id_, sig in con.execute(f"SELECT s.id, s.sig FROM read_parquet({file_list}) s JOIN cand USING (id)"
                                    ).fetchall():
            sigs[id_] = np.asarray(sig, dtype=np.uint32)
    uf = _UnionFind()
    for (ids,) in buckets:
        head = ids[0]
        for other in ids[1:]:
            if recipe.verify_candidates and float(np.mean(sigs[head] == sigs[other])) < recipe.threshold:
                continue
            uf.union(head, other)
    comps: dict[str, list[str]] = {}
    for i in candidates:
        comps.setdefault(uf.find(i), []).append(i)
    for root, ids in sorted(comps.items()):
        if len(ids) < 2:
            continue
        ids.sort(key=lambda i: (-info[i][1], info[i][0], i))
        cluster = f"n{xxhash.xxh64_hexdigest(root.encode())}"
        for rank, i in enumerate(ids):
            cluster_rows.append((cluster, "near", info[i][0], i, rank == 0))
            if rank > 0:
                removed_rows.append((info[i][0], i, "near", cluster))


def removed_ids(removed_path: Path, source: str) -> set[str]:
    t = pq.read_table(removed_path, columns=["source", "id"], filters=[("source", "=", source)])
    return set(t.column("id").to_pylist())


def apply_removals(in_paths: list[Path], removed: set[str], out_dir: Path,
                   shard_documents: int = 20_000) -> tuple[list[ShardInfo], int, int]:
    """Copy shards without the removed ids (order kept), re-chunked to `shard_documents` rows per shard."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drop = pa.array(sorted(removed), pa.string())
    shards: list[ShardInfo] = []
    buf: list[pa.RecordBatch] = []
    buffered = 0

    def flush() -> None:
        nonlocal buf, buffered
        if not buffered:
            return
        table = pa.Table.from_batches(buf, schema=DOCUMENT_SCHEMA)
        path = out_dir / f"shard-{len(shards):05d}.parquet"
        pq.write_table(table, path, compression="zstd")
        nbytes = int(pc.sum(pc.binary_length(table.column("text").cast(pa.binary()))).as_py() or 0)
        shards.append(ShardInfo(path, table.num_rows, nbytes))
        buf, buffered = [], 0

    for batch in iter_batches(in_paths, batch_size=2048):
        if len(drop):
            batch = batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=drop)))
        while batch.num_rows:
            take = min(batch.num_rows, shard_documents - buffered)
            buf.append(batch.slice(0, take))
            buffered += take
            batch = batch.slice(take)
            if buffered >= shard_documents:
                flush()
    flush()
    return shards, sum(s.documents for s in shards), sum(s.bytes for s in shards)


# ------------------------------------------------------------------------------------------------ baseline
def baseline_datasketch(texts: list[str], recipe: DedupRecipe) -> set[int]:
    """What a user writes by hand: one datasketch MinHash per document, fed shingle by shingle, and MinHashLSH."""
    lsh = MinHashLSH(threshold=recipe.threshold, num_perm=recipe.num_perm)
    removed: set[int] = set()
    for i, t in enumerate(texts):
        m = MinHash(num_perm=recipe.num_perm, seed=recipe.seed)
        for s in shingles(t, recipe.shingle_size):
            m.update(s)
        if lsh.query(m):
            removed.add(i)
        else:
            lsh.insert(str(i), m)
    return removed

