"""Exact and MinHash-LSH near-duplicate removal across sources: parallel cached signing (`minhash.py`), then
the global join in DuckDB.

Design: signing is the expensive part and embarrassingly parallel, so it runs per shard as data-engine tasks
(local processes or Ray) and is cached by the shard's sha256. The LSH join is split by band-hash range into
buckets, each joined by a task of its own (DuckDB inside); everything else global (exact-hash groups, keeper
ranking, outputs) runs in DuckDB, which works in bounded memory and spills to disk. Python only holds the
candidate pairs (for verification and union-find). Removal is one task per input shard."""

from __future__ import annotations

import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from minigpt_assets.data.documents import ShardInfo, ShardWriter, iter_batches
from minigpt_assets.data.engine import Engine, EngineConfig, Expected
from minigpt_assets.data.minhash import _to_arrow, _to_numpy, lsh_params, shingles, sign_all, signature_key
from minigpt_assets.store import sha256_file

if TYPE_CHECKING:  # not imported at run time: signing workers start without pydantic
    from minigpt_assets.recipes import DedupRecipe

_BIG_BUCKET = 64  # LSH buckets with more members are linked as star + chain instead of all pairs


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
                cache_dir: Path | None = None, workers: int = 1, bucket_mb: int = 1024,
                buckets: int | None = None, engine: Engine | None = None,
                expected: dict[str, Expected] | None = None) -> DedupIndex:
    """Sign every shard (parallel, cached by content), then find exact and near-duplicate clusters in DuckDB.

    members: source -> (priority, shard paths). In each cluster one document is kept: highest priority, then
    source name, then id. Writes work_dir/removed.parquet and work_dir/clusters.parquet. The candidate pairs
    come from `buckets` independent joins over ranges of the band hashes (default: as many as keep each one's
    rows under `bucket_mb`); the clusters do not depend on the count. Signing and the buckets' joins are tasks
    of `engine` (`workers` local processes when none is given); `expected` (shard path -> size and sha256 from
    its manifest) names the signature cache entries without re-reading the shards here, and each signing task
    checks its shard against it.
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
            exp = (expected or {}).get(str(shard))
            sig_file = cache / f"{exp.sha256 if exp else sha256_file(Path(shard))}.parquet"
            entries.append((source, int(prio), sig_file))
            if sig_file.exists():
                cache_hits += 1
            else:
                todo.setdefault(sig_file, Path(shard))
    engine = engine or Engine(EngineConfig(workers=workers))
    sign_all([(s, o) for o, s in todo.items()], recipe, engine, expected)

    tmp_dir = work_dir / f".duckdb-{uuid.uuid4().hex[:8]}"
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET temp_directory={_sql_str(tmp_dir)}")
        stats = _join(con, entries, recipe, work_dir, tmp_dir, bucket_mb, buckets, engine)
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


def _join(con, entries: list[tuple[str, int, Path]], recipe: DedupRecipe, work_dir: Path, tmp_dir: Path,
          bucket_mb: int = 1024, buckets: int | None = None, engine: Engine | None = None
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
        _near(con, scan, bands, recipe, rank, tmp_dir, bucket_mb, buckets, engine)
    removed_path, clusters_path = work_dir / "removed.parquet", work_dir / "clusters.parquet"
    # each removed document names the sha256 of the shard it is in (its signature file's name), so a removal
    # task reads only its own shard's rows
    con.execute(f"COPY (SELECT m.source, m.id, m.kind, m.cluster, "
                f"regexp_extract(f.filename, '([0-9a-f]{{64}})\\.parquet$', 1) AS shard FROM members m "
                f"JOIN files f ON (m.key >> 32) = f.fidx WHERE NOT m.kept ORDER BY m.source, m.id) "
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


# bytes a band row takes in a bucket's join (key, hash, band, then grouped into lists): an estimate, generous
_ROW_BYTES = 64


def bucket_count(rows: int, bucket_mb: int) -> int:
    """How many hash-range buckets keep each bucket's band rows under `bucket_mb` of memory."""
    return max(1, -(-rows * _ROW_BYTES // (bucket_mb * 2**20)))


def _pairs_sql(rows: str) -> str:
    return f"""
        WITH shared AS (SELECT band, h FROM {rows} GROUP BY band, h HAVING count(*) > 1),
             g AS (SELECT list(key ORDER BY key) AS ks FROM {rows} SEMI JOIN shared USING (band, h)
                   GROUP BY band, h),
             m AS (SELECT ks, unnest(ks) AS k1, generate_subscripts(ks, 1) AS i FROM g),
             p AS (SELECT k1, unnest(CASE WHEN len(ks) <= {_BIG_BUCKET} THEN ks[i + 1:]
                                          ELSE [ks[1], ks[i + 1]] END) AS k2 FROM m)
        SELECT DISTINCT least(k1, k2) AS a, greatest(k1, k2) AS b FROM p
        WHERE k2 IS NOT NULL AND k1 <> k2"""


def _pairs(con, rows: str) -> np.ndarray:
    p = con.sql(_pairs_sql(rows)).fetchnumpy()
    return np.stack([np.asarray(p["a"], dtype=np.int64), np.asarray(p["b"], dtype=np.int64)], axis=1)


def bucket_pairs(folder: str) -> np.ndarray:
    """One bucket's candidate pairs [n, 2], joined on its own (an engine task: its own DuckDB, its own files)."""
    import duckdb

    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        return np.zeros((0, 2), dtype=np.int64)
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET threads=1")  # one task, one core: the engine runs the buckets side by side
        return _pairs(con, f"read_parquet([{', '.join(_sql_str(f) for f in files)}])")
    finally:
        con.close()


def candidate_pairs(con, buckets: int, engine: Engine | None = None, tmp_dir: Path | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (a < b, sorted) of the documents that share a (band, hash) in table `band_rows`: all
    pairs inside small groups, star + chain (enough for the components, linear in size) inside big ones.

    With several buckets, the band rows are written to one folder per bucket (by their band hash) and each
    bucket is joined by an engine task of its own (`bucket_pairs`); a group never spans buckets, so the union
    of the buckets' pairs is the single join's."""
    if buckets <= 1:
        parts = [_pairs(con, "band_rows")]
    else:
        folder = Path(tmp_dir or ".") / f"band-buckets-{uuid.uuid4().hex[:8]}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            con.execute(f"COPY (SELECT key, band, h, hash(band, h) % {buckets} AS bucket FROM band_rows) "
                        f"TO {_sql_str(folder)} (FORMAT parquet, PARTITION_BY (bucket))")
            engine = engine or Engine(EngineConfig())
            dirs = [str(folder / f"bucket={k}") for k in range(buckets)]
            parts = engine.map(bucket_pairs, [(d,) for d in dirs], [f"bucket {k}" for k in range(buckets)],
                               "dedup join")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    pairs = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs  # a pair may share several bands: once, sorted
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _near(con, scan: str, bands: int, recipe: DedupRecipe, rank: str, tmp_dir: Path, bucket_mb: int = 1024,
          buckets: int | None = None, engine: Engine | None = None) -> None:
    """Candidate pairs from shared (band, hash) buckets, verification, components, a keeper per component."""
    # (band, hash) of every document not removed as an exact duplicate
    con.execute(f"""CREATE TABLE band_rows AS
        SELECT key, unnest(bands) AS h, generate_subscripts(bands, 1) AS band FROM ({scan})
        WHERE key NOT IN (SELECT key FROM members WHERE NOT kept)""")
    n_rows = con.execute("SELECT count(*) FROM band_rows").fetchall()[0][0]
    a, b = candidate_pairs(con, buckets or bucket_count(n_rows, bucket_mb), engine, tmp_dir)
    con.execute("DROP TABLE band_rows")
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
def removed_ids(index_removed_path: Path, source: str, shard: str | None = None) -> set[str]:
    """Ids of one source's documents that the index removed (of one shard, by its sha256, when given)."""
    filters = [("source", "=", source)] + ([("shard", "=", shard)] if shard is not None else [])
    t = pq.read_table(index_removed_path, columns=["id"], filters=filters)
    return set(t.column("id").to_pylist())


def _remove_shard(index: int, path: str, removed_path: str | None, source: str, sha: str | None, out_dir: str,
                  shard_documents: int) -> list[ShardInfo]:
    """One input shard minus its removed ids, into `shard-<index>-<k>.parquet`, in order."""
    out_dir = Path(out_dir)
    removed = set()
    if removed_path is not None:
        removed = removed_ids(Path(removed_path), source, sha or sha256_file(Path(path)))
    drop = pa.array(sorted(removed), pa.string())
    # cut by documents only (no byte bound), as before the Arrow writer served removal too
    writer = ShardWriter(out_dir, prefix=f"shard-{index:05d}", max_documents=shard_documents, max_bytes=sys.maxsize)
    for batch in iter_batches([Path(path)], batch_size=4096):
        if len(drop):
            batch = batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=drop)))
        writer.write_batch(batch)
    return writer.close()


def apply_removals(in_paths: list[Path], removed_path: Path | None, source: str, out_dir: Path,
                   shard_documents: int = 20_000, engine: Engine | None = None,
                   expected: dict[str, Expected] | None = None) -> tuple[list[ShardInfo], int, int]:
    """Each input shard i minus the ids the index (`removed_path`, None: none) removed from `source`, into
    out_dir/shard-<i>-<k>.parquet in order, one engine task per shard: (shards, docs, bytes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = engine or Engine(EngineConfig())
    exp = expected or {}
    tasks = [(i, str(p), str(removed_path) if removed_path else None, source,
              exp[str(p)].sha256 if str(p) in exp else None, str(out_dir), shard_documents)
             for i, p in enumerate(in_paths)]
    outs = engine.map(_remove_shard, tasks, [str(p) for p in in_paths], "dedup removal",
                      [[(str(p), exp.get(str(p)))] for p in in_paths])
    shards = [s for o in outs for s in o]
    return shards, sum(s.documents for s in shards), sum(s.bytes for s in shards)


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
