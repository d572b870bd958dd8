"""Exact and MinHash-LSH near-duplicate removal across sources: parallel cached signing, DuckDB join."""

# Design: signing (normalize, shingle, MinHash) is the expensive part and embarrassingly parallel, so it runs
# per shard in worker processes and is cached by the shard's sha256: an unchanged shard is never re-signed.
# Everything global (exact-hash groups, LSH band buckets, candidate pairs, keeper ranking, outputs) runs in
# DuckDB, which works in bounded memory and spills to disk. Python only holds the documents that share a
# bucket (for verification and union-find). Signatures are bit-identical to
# datasketch.MinHash(num_perm, seed, hashfunc=SHINGLE_HASH). datasketch (which pulls in scipy) and the recipe
# models are imported lazily so that signing workers start fast.

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import unicodedata
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from minigpt_assets.data.documents import DOCUMENT_SCHEMA, ShardInfo, iter_batches
from minigpt_assets.store import sha256_file

if TYPE_CHECKING:  # not imported at run time: signing workers start without pydantic
    from minigpt_assets.recipes import DedupRecipe

SIGNATURE_VERSION = 1  # bump when normalize/shingles/SHINGLE_HASH/band hashing change: invalidates the cache
_WORD_MULT = 0x01000193  # odd multiplier combining word hashes into a shingle hash (mod 2^32)
_MASK32 = 0xFFFFFFFF
_BLOCK_VALUES = 1 << 20  # uint32 values per (permutations x shingles) block: 4 MB, stays in cache
_BIG_BUCKET = 64  # LSH buckets with more members are linked as star + chain instead of all pairs
_PUNCT = re.compile(r"[^\w\s]+")


# ---------------------------------------------------------------------------------------- text -> hashes
def _ascii_tables() -> tuple[dict[int, str], bytes]:
    """normalize() on ASCII text as one translate: A-Z lowercased, every other non-word character a space."""
    keep = {c for c in range(128) if chr(c).isalnum() or chr(c) == "_"}
    to = [chr(c).lower() if c in keep else " " for c in range(128)]
    return {c: t for c, t in enumerate(to)}, bytes(ord(t) for t in to) + bytes(range(128, 256))


_ASCII_STR, _ASCII_BYTES = _ascii_tables()


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation replaced by spaces, whitespace collapsed to single spaces."""
    if text.isascii():  # NFKC is the identity on ASCII: one translate does the rest
        return " ".join(text.translate(_ASCII_STR).split())
    return " ".join(_PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def _words(text: str) -> list[bytes]:
    """The UTF-8 words of normalize(text) (normalize(text).encode().split()), fast on ASCII text."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_BYTES).split()
    return normalize(text).encode("utf-8", "surrogatepass").split()


def _int64(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def exact_hash(text: str) -> int:
    """xxh3_64 of the normalized text, as a signed int64 value."""
    return _int64(xxhash.xxh3_64_intdigest(normalize(text).encode("utf-8", "surrogatepass")))


def shingles(text: str, k: int) -> list[bytes]:
    """Word k-grams of the normalized text; a text of fewer than k words is one shingle of all its words."""
    words = normalize(text).split()
    if len(words) <= k:
        return [" ".join(words).encode("utf-8", "surrogatepass")]
    return [" ".join(words[i:i + k]).encode("utf-8", "surrogatepass") for i in range(len(words) - k + 1)]


def SHINGLE_HASH(shingle: bytes) -> int:
    """32-bit shingle hash: xxh32 of each word, combined as a polynomial h = h * M + xxh32(word) mod 2^32.

    A valid datasketch `hashfunc`. `signatures()` computes the same values vectorized: each word occurrence
    is hashed once (not k times inside k-gram strings) and the k-gram combination runs in numpy over a
    whole batch.
    """
    h = 0
    for w in shingle.split(b" "):
        h = (h * _WORD_MULT + xxhash.xxh32_intdigest(w)) & _MASK32
    return h


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 32-bit finalizer: the pre-mix datasketch's affine32 scheme applies to every input hash."""
    h = h ^ (h >> np.uint32(16))
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) as datasketch's MinHashLSH picks them (false positive and negative weights 0.5, 0.5)."""
    from datasketch.lsh import _optimal_param

    b, r = _optimal_param(threshold, num_perm, 0.5, 0.5)
    return int(b), int(r)


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of datasketch's MinHash(num_perm, seed): phv = a * fmix32(h) + b mod 2^32."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed)
    if m.scheme != "affine32":
        raise RuntimeError(f"datasketch MinHash default scheme is {m.scheme!r}; this module does affine32")
    a, b = m.permutations
    a, b = a.astype(np.uint32), b.astype(np.uint32)
    a.flags.writeable = b.flags.writeable = False
    return a, b


def _shingle_hashes(word_lists: list[list[bytes]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """SHINGLE_HASH of every shingle of every document (given as its normalized words), concatenated,
    and the doc offsets [n + 1] into that array."""
    word_lists = [ws or [b""] for ws in word_lists]  # an empty text is one empty shingle, like shingles()
    lens = np.fromiter(map(len, word_lists), np.int64, len(word_lists))
    total = int(lens.sum())
    w = np.zeros(total + k, dtype=np.uint32)  # k zeros of padding: windows never run off the end
    # one C call per word (measured faster than memoizing in a dict: bytes objects from split() rehash anyway)
    all_words = itertools.chain.from_iterable(word_lists)
    w[:total] = np.fromiter(map(xxhash.xxh32_intdigest, all_words), np.uint32, total)
    # Horner over the k-word windows of the concatenation; windows crossing a doc boundary are never selected
    h = w[:total].copy()
    for j in range(1, k):
        h *= np.uint32(_WORD_MULT)
        h += w[j:j + total]
    starts = np.zeros(len(lens), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    counts = np.maximum(lens - k + 1, 1)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    out = h[np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])]
    for i in np.flatnonzero(lens < k).tolist():  # short docs: one shingle of all their words (rare)
        s = 0
        for x in w[starts[i]:starts[i] + lens[i]].tolist():
            s = (s * _WORD_MULT + x) & _MASK32
        out[offsets[i]] = s
    return out, offsets


def _minhash(hv: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, num_perm]: per doc, the minimum of a * fmix32(h) + b (mod 2^32) over its slice of hv.

    Blocks of (permutations x shingles) a few MB large; the min runs along contiguous rows (reduceat on the
    last axis is several times faster than on the first).
    """
    n, p = len(offsets) - 1, len(a)
    out = np.full((n, p), _MASK32, dtype=np.uint32)
    total = int(offsets[-1])
    if n == 0:
        return out
    hv = _fmix32(hv.astype(np.uint32, copy=True))
    step = max(256, _BLOCK_VALUES // p)
    buf = np.empty((p, min(step, total)), dtype=np.uint32)
    a_col, b_col = a[:, None], b[:, None]
    for lo in range(0, total, step):
        hi = min(lo + step, total)
        d0 = int(np.searchsorted(offsets, lo, "right")) - 1  # doc holding shingle lo
        d1 = int(np.searchsorted(offsets, hi, "left"))  # docs d0..d1-1 start before hi
        block = buf[:, :hi - lo]
        np.multiply(a_col, hv[None, lo:hi], out=block)  # uint32 arithmetic wraps: mod 2^32
        block += b_col
        red = np.minimum.reduceat(block, np.maximum(offsets[d0:d1], lo) - lo, axis=1)  # [p, d1 - d0]
        np.minimum(out[d0:d1], red.T, out=out[d0:d1])
    return out


def _signatures_words(word_lists: list[list[bytes]], num_perm: int, seed: int, k: int,
                      perms: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    a, b = perms if perms is not None else _permutations(num_perm, seed)
    hv, offsets = _shingle_hashes(word_lists, k)
    return _minhash(hv, offsets, a, b)


def signatures(texts: list[str], recipe: DedupRecipe) -> np.ndarray:
    """[n, num_perm] uint32 MinHash signatures: datasketch MinHash(hashfunc=SHINGLE_HASH) fed shingles()."""
    return _signatures_words([_words(t) for t in texts], recipe.num_perm, recipe.seed, recipe.shingle_size)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n, bands] int64: a 64-bit hash of each band's `rows` signature values."""
    n = sig.shape[0]
    x = sig[:, :bands * rows].reshape(n, bands, rows).astype(np.uint64)
    h = np.full((n, bands), 0x243F6A8885A308D3, dtype=np.uint64)
    for r in range(rows):
        h *= np.uint64(0x9E3779B97F4A7C15)
        h += x[:, :, r]
    h ^= h >> np.uint64(33)  # MurmurHash3 fmix64
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h.view(np.int64)


# ---------------------------------------------------------------------------------------- per-shard signing
# numpy <-> arrow through raw buffers: pa.array(...) and Array.to_numpy() import pandas (~0.5 s in every fresh
# signing worker), and these arrays never hold nulls
_NUMPY_TYPES = {pa.int64(): np.int64, pa.uint32(): np.uint32}


def _to_arrow(x: np.ndarray, typ: pa.DataType) -> pa.Array:
    x = np.ascontiguousarray(x, dtype=_NUMPY_TYPES[typ])
    return pa.Array.from_buffers(typ, len(x), [None, pa.py_buffer(x)])


def _to_numpy(arr: pa.Array | pa.ChunkedArray, dtype: type) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if arr.null_count:
        raise ValueError("unexpected nulls")
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * itemsize)


def signature_schema(num_perm: int, bands: int) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("exact", pa.int64()), ("bands", pa.list_(pa.int64(), bands)),
                      ("sig", pa.list_(pa.uint32(), num_perm))])


def _sign(shard: Path, out: Path, num_perm: int, seed: int, k: int, perms: tuple[np.ndarray, np.ndarray],
          bands: int, rows: int) -> int:
    schema = signature_schema(num_perm, bands)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    n = 0
    try:
        # signature values are random: no dictionary, no compression (both cost time and save nothing)
        with pq.ParquetWriter(tmp, schema, compression={"id": "zstd", "exact": "none", "bands": "none",
                                                        "sig": "none"}, use_dictionary=["id"]) as writer:
            for batch in iter_batches([shard], columns=["id", "text"], batch_size=4096):
                words = [_words(t or "") for t in batch.column("text").to_pylist()]
                sig = _signatures_words(words, num_perm, seed, k, perms)
                ex = np.fromiter((xxhash.xxh3_64_intdigest(b" ".join(ws)) for ws in words),
                                 np.uint64, len(words)).view(np.int64)
                bh = band_hashes(sig, bands, rows)
                writer.write_table(pa.table({
                    "id": batch.column("id"),
                    "exact": _to_arrow(ex, pa.int64()),
                    "bands": pa.FixedSizeListArray.from_arrays(_to_arrow(bh.ravel(), pa.int64()), bands),
                    "sig": pa.FixedSizeListArray.from_arrays(_to_arrow(sig.ravel(), pa.uint32()), num_perm),
                }, schema=schema))
                n += batch.num_rows
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def sign_shard(shard: Path, recipe: DedupRecipe, out: Path) -> int:
    """Write id, exact (int64), bands (a 64-bit hash per LSH band) and sig (the MinHash) per doc; rows."""
    bands, rows = lsh_params(recipe.threshold, recipe.num_perm)
    return _sign(Path(shard), Path(out), recipe.num_perm, recipe.seed, recipe.shingle_size,
                 _permutations(recipe.num_perm, recipe.seed), bands, rows)


def _sign_task(args: tuple) -> int:
    shard, out, *params = args
    return _sign(Path(shard), Path(out), *params)


def signature_key(recipe: DedupRecipe) -> str:
    """Cache folder name: a hash of all a signature file depends on (not the exact/near/verify switches)."""
    bands, rows = lsh_params(recipe.threshold, recipe.num_perm)
    params = {"version": SIGNATURE_VERSION, "scheme": "affine32", "num_perm": recipe.num_perm,
              "seed": recipe.seed, "shingle_size": recipe.shingle_size, "bands": bands, "rows": rows}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _sign_all(todo: list[tuple[Path, Path]], recipe: DedupRecipe, workers: int) -> None:
    """Sign (shard, out) pairs with `workers` concurrent signers: this process plus workers - 1 processes."""
    bands, rows = lsh_params(recipe.threshold, recipe.num_perm)
    params = (recipe.num_perm, recipe.seed, recipe.shingle_size, _permutations(recipe.num_perm, recipe.seed),
              bands, rows)
    tasks = [(str(s), str(o), *params)
             for s, o in sorted(todo, key=lambda t: -os.path.getsize(t[0]))]  # largest first: better balance
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(workers, len(tasks), cpus)
    if workers <= 1:
        for t in tasks:
            _sign_task(t)
        return
    # forkserver: safe next to threads in the parent (DuckDB, Arrow, Dagster); workers fork from a server that
    # has this module imported already. The caller signs too, from the other end of the list, taking every
    # task no worker has started: it works while the server starts, so small jobs never wait for processes.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(max_workers=workers - 1, mp_context=ctx) as pool:
        futures = [pool.submit(_sign_task, t) for t in tasks]
        for fut, task in zip(reversed(futures), reversed(tasks)):
            if not fut.cancel():  # a worker has it, and every task before it
                break
            _sign_task(task)
        for fut in futures:
            if not fut.cancelled():
                fut.result()


# ---------------------------------------------------------------------------------------- global join
@dataclass
class DedupIndex:
    removed_path: Path
    clusters_path: Path
    stats: dict[str, dict[str, int]]  # source -> documents, exact_removed, near_removed, clusters
    signed_shards: int
    cache_hits: int


def _sql_str(s: str | Path) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _load(con, name: str, table: pa.Table, tmp_dir: Path) -> None:
    """CREATE TABLE name from an arrow table through a parquet file (registering Python objects with DuckDB
    imports pandas: half a second for nothing)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path = tmp_dir / f"{name}.parquet"
    pq.write_table(table, path)
    con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM read_parquet({_sql_str(path)})")
    path.unlink()


def _components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the edges (a[i], b[i]): (nodes, root of each node), nodes sorted."""
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    parent = list(range(len(nodes)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    m = len(a)
    for x, y in zip(inv[:m].tolist(), inv[m:].tolist()):
        rx, ry = find(x), find(y)
        if rx != ry:
            if rx < ry:
                parent[ry] = rx
            else:
                parent[rx] = ry
    roots = np.fromiter((find(i) for i in range(len(nodes))), np.int64, len(nodes))
    return nodes, nodes[roots]


def _verify(con, scan: str, pa_: np.ndarray, pb: np.ndarray, recipe: DedupRecipe, tmp_dir: Path
            ) -> np.ndarray:
    """Mask of candidate pairs whose estimated Jaccard (fraction of equal signature values) >= threshold."""
    keys = np.unique(np.concatenate([pa_, pb]))
    _load(con, "cand_keys", pa.table({"key": _to_arrow(keys, pa.int64())}), tmp_dir)
    t = con.sql(f"SELECT key, sig FROM ({scan}) WHERE key IN (SELECT key FROM cand_keys) ORDER BY key"
                ).to_arrow_table()
    con.execute("DROP TABLE cand_keys")
    got = _to_numpy(t.column("key"), np.int64)
    sig = _to_numpy(pc.list_flatten(t.column("sig")), np.uint32).reshape(len(got), recipe.num_perm)
    ia, ib = np.searchsorted(got, pa_), np.searchsorted(got, pb)
    keep = np.empty(len(pa_), dtype=bool)
    step = max(1, (1 << 22) // recipe.num_perm)
    for lo in range(0, len(pa_), step):
        eq = np.count_nonzero(sig[ia[lo:lo + step]] == sig[ib[lo:lo + step]], axis=1)
        keep[lo:lo + step] = eq / np.float64(recipe.num_perm) >= recipe.threshold  # as MinHash.jaccard()
    return keep


def build_index(members: dict[str, tuple[int, list[Path]]], recipe: DedupRecipe, work_dir: Path,
                cache_dir: Path | None = None, workers: int = 1) -> DedupIndex:
    """Sign every shard (parallel, cached by content), then find exact and near-duplicate clusters in DuckDB.

    members: source -> (priority, shard paths). In each cluster one document is kept: highest priority, then
    source name, then id. Writes work_dir/removed.parquet and work_dir/clusters.parquet.
    """
    import duckdb

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cache_root = (Path(cache_dir) if cache_dir is not None else work_dir / ".signatures").absolute()
    cache = cache_root / signature_key(recipe)
    entries: list[tuple[str, int, Path]] = []  # (source, priority, signature file)
    todo: dict[Path, Path] = {}  # signature file -> shard to sign
    cache_hits = 0
    for source in sorted(members):
        prio, shards = members[source]
        for shard in shards:
            sig_file = cache / f"{sha256_file(Path(shard))}.parquet"
            entries.append((source, int(prio), sig_file))
            if sig_file.exists():
                cache_hits += 1
            else:
                todo.setdefault(sig_file, Path(shard))
    _sign_all([(s, o) for o, s in todo.items()], recipe, workers)

    tmp_dir = work_dir / f".duckdb-{uuid.uuid4().hex[:8]}"
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET temp_directory={_sql_str(tmp_dir)}")
        stats = _join(con, entries, recipe, work_dir, tmp_dir)
    finally:
        con.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if cache_dir is None:
            shutil.rmtree(cache_root, ignore_errors=True)
    full = {s: {"documents": 0, "exact_removed": 0, "near_removed": 0, "clusters": 0} for s in members}
    for s, v in stats.items():
        full[s].update(v)
    return DedupIndex(work_dir / "removed.parquet", work_dir / "clusters.parquet", full, len(todo),
                      cache_hits)


def _join(con, entries: list[tuple[str, int, Path]], recipe: DedupRecipe, work_dir: Path, tmp_dir: Path
          ) -> dict[str, dict[str, int]]:
    """Exact groups, LSH buckets, verified components, the output files: all but union-find in DuckDB."""
    bands, _ = lsh_params(recipe.threshold, recipe.num_perm)
    con.execute("CREATE TABLE files (fidx BIGINT, filename VARCHAR, source VARCHAR, prio BIGINT)")
    if entries:
        con.executemany("INSERT INTO files VALUES (?, ?, ?, ?)",
                        [(i, str(f), source, prio) for i, (source, prio, f) in enumerate(entries)])
    unique_files = sorted({str(e[2]) for e in entries})
    if unique_files:
        # a document's key: (index of the (source, file) entry) << 32 | row in file; stable across re-reads
        scan = (f"SELECT (f.fidx << 32) | s.file_row_number AS key, f.source, f.prio, s.id, s.exact, "
                f"s.bands, s.sig FROM read_parquet([{', '.join(map(_sql_str, unique_files))}], "
                f"filename=true, file_row_number=true) s JOIN files f ON s.filename = f.filename")
    else:
        scan = ("SELECT NULL::BIGINT AS key, NULL::VARCHAR AS source, NULL::BIGINT AS prio, "
                "NULL::VARCHAR AS id, NULL::BIGINT AS exact, NULL::BIGINT[] AS bands, "
                "NULL::UINTEGER[] AS sig WHERE false")
    con.execute(f"CREATE TABLE docs AS SELECT key, source, prio, id, exact FROM ({scan})")
    rank = "PARTITION BY {} ORDER BY d.prio DESC, d.source, d.id"
    con.execute(f"""CREATE TABLE members AS
        SELECT printf('x%016x', d.exact) AS cluster, 'exact' AS kind, d.key, d.source, d.id,
               row_number() OVER ({rank.format('d.exact')}) = 1 AS kept
        FROM docs d WHERE {'true' if recipe.exact else 'false'}
          AND d.exact IN (SELECT exact FROM docs GROUP BY exact HAVING count(*) > 1)""")
    if recipe.near:
        _near(con, scan, bands, recipe, rank, tmp_dir)
    removed_path, clusters_path = work_dir / "removed.parquet", work_dir / "clusters.parquet"
    con.execute(f"COPY (SELECT source, id, kind, cluster FROM members WHERE NOT kept ORDER BY source, id) "
                f"TO {_sql_str(removed_path)} (FORMAT parquet)")
    con.execute(f"COPY (SELECT cluster, kind, source, id, kept FROM members "
                f"ORDER BY cluster, kept DESC, source, id) TO {_sql_str(clusters_path)} (FORMAT parquet)")
    stats: dict[str, dict[str, int]] = {}
    for source, n in con.execute("SELECT source, count(*) FROM docs GROUP BY source").fetchall():
        stats.setdefault(source, {})["documents"] = n
    for source, ex, nr, cl in con.execute("""
            SELECT source, count(*) FILTER (WHERE NOT kept AND kind = 'exact'),
                   count(*) FILTER (WHERE NOT kept AND kind = 'near'), count(DISTINCT cluster)
            FROM members GROUP BY source""").fetchall():
        stats.setdefault(source, {}).update(exact_removed=ex, near_removed=nr, clusters=cl)
    return stats


def _near(con, scan: str, bands: int, recipe: DedupRecipe, rank: str, tmp_dir: Path) -> None:
    """Candidate pairs from shared (band, hash) buckets, verification, components, a keeper per component."""
    # (band, hash) of every document not removed as an exact duplicate; buckets with more than one member;
    # all pairs inside small buckets, star + chain (enough for components, linear in size) inside big ones
    con.execute(f"""CREATE TABLE band_rows AS
        SELECT key, unnest(bands) AS h, generate_subscripts(bands, 1) AS band FROM ({scan})
        WHERE key NOT IN (SELECT key FROM members WHERE NOT kept)""")
    pairs = con.sql(f"""
        WITH shared AS (SELECT band, h FROM band_rows GROUP BY band, h HAVING count(*) > 1),
             g AS (SELECT list(key ORDER BY key) AS ks FROM band_rows SEMI JOIN shared USING (band, h)
                   GROUP BY band, h),
             m AS (SELECT ks, unnest(ks) AS k1, generate_subscripts(ks, 1) AS i FROM g),
             p AS (SELECT k1, unnest(CASE WHEN len(ks) <= {_BIG_BUCKET} THEN ks[i + 1:]
                                          ELSE [ks[1], ks[i + 1]] END) AS k2 FROM m)
        SELECT DISTINCT least(k1, k2) AS a, greatest(k1, k2) AS b FROM p WHERE k2 IS NOT NULL AND k1 <> k2
        ORDER BY a, b""").fetchnumpy()
    con.execute("DROP TABLE band_rows")
    a = np.asarray(pairs["a"], dtype=np.int64)
    b = np.asarray(pairs["b"], dtype=np.int64)
    if len(a) and recipe.verify_candidates:
        keep = _verify(con, scan, a, b, recipe, tmp_dir)
        a, b = a[keep], b[keep]
    if not len(a):
        return
    nodes, roots = _components(a, b)
    comp = pa.table({"key": _to_arrow(nodes, pa.int64()), "root": _to_arrow(roots, pa.int64())})
    _load(con, "comp", comp, tmp_dir)
    # the cluster is named after its keeper, so names do not depend on file order or keys
    con.execute(f"""INSERT INTO members
        SELECT 'n' || substr(md5(first_value(d.source || chr(0) || d.id) OVER w), 1, 16), 'near', d.key,
               d.source, d.id, row_number() OVER w = 1
        FROM comp c JOIN docs d USING (key) WINDOW w AS ({rank.format('c.root')})""")


# ---------------------------------------------------------------------------------------- applying
def removed_ids(index_removed_path: Path, source: str) -> set[str]:
    """Ids of one source's documents that the index removed."""
    t = pq.read_table(index_removed_path, columns=["source", "id"], filters=[("source", "=", source)])
    return set(t.column("id").to_pylist())


def apply_removals(in_paths: list[Path], removed: set[str], out_dir: Path,
                   shard_documents: int = 20_000) -> tuple[list[ShardInfo], int, int]:
    """Stream shards to out_dir/shard-NNNNN.parquet minus the removed ids, in order: (shards, docs, bytes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drop = pa.array(sorted(removed), pa.string())
    names = DOCUMENT_SCHEMA.names
    shards: list[ShardInfo] = []
    buf: list[pa.RecordBatch] = []
    buffered = 0

    def flush() -> None:
        nonlocal buf, buffered
        if not buffered:
            return
        table = pa.Table.from_batches(buf, schema=DOCUMENT_SCHEMA)
        path = out_dir / f"shard-{len(shards):05d}.parquet"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        nbytes = int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)
        shards.append(ShardInfo(path, table.num_rows, nbytes))
        buf, buffered = [], 0

    for batch in iter_batches(in_paths, batch_size=4096):
        batch = pa.RecordBatch.from_arrays([batch.column(n) for n in names], schema=DOCUMENT_SCHEMA)
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


# ---------------------------------------------------------------------------------------- baseline
def baseline_datasketch(texts: list[str], recipe: DedupRecipe) -> set[int]:
    """What a user writes by hand: datasketch MinHash (default sha1 hashfunc) per doc, fed shingle by shingle,
    then MinHashLSH: a document matching an earlier kept one is removed. Returns the removed indices."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=recipe.threshold, num_perm=recipe.num_perm)
    removed: set[int] = set()
    for i, t in enumerate(texts):
        m = MinHash(num_perm=recipe.num_perm, seed=recipe.seed)
        for s in shingles(t, recipe.shingle_size):
            m.update(s)
        if lsh.query(m):
            removed.add(i)
        else:
            lsh.insert(i, m)
    return removed
