"""Artifact store (immutable, content-addressed folders with manifests, atomic publish) and the DuckDB stats db.

Layout under the artifact root (`MINIGPT_HOME`):

    artifacts/<asset>/<partition>/<content-hash16>/   one immutable version: files + manifest.json
    artifacts/<asset>/<partition>/CURRENT             the hash of the version readers use (atomic replace)
    stats/<table>/<key>.parquet                       one Parquet file per (table, writer key)
    stats.duckdb                                      views over stats/<table>/*.parquet

A version is staged in a hidden temporary folder and becomes visible only by `os.rename`, so a killed writer
never leaves a half-written artifact a reader can see. Identical content lands in the same folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ArtifactError(Exception):
    """A missing or corrupt artifact; the message is one line for the user."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return self.manifest["content_hash"]

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest.get("counts", {})

    def files(self, suffix: str = "", prefix: str = "") -> list[Path]:
        return [self.path / f["path"] for f in self.manifest["files"]
                if f["path"].endswith(suffix) and f["path"].startswith(prefix)]

    def expected(self, suffix: str = "", prefix: str = "") -> dict:
        """Absolute path -> size and sha256 of the files `files()` lists, for the data tasks to check."""
        from minigpt_assets.data.engine import Expected

        return {str(self.path / f["path"]): Expected(f["bytes"], f["sha256"]) for f in self.manifest["files"]
                if f["path"].endswith(suffix) and f["path"].startswith(prefix)}

    def verify(self) -> list[str]:
        """Problems found re-hashing every file against the manifest (empty list: all good)."""
        problems = []
        for f in self.manifest["files"]:
            p = self.path / f["path"]
            if not p.exists():
                problems.append(f"{f['path']}: missing")
            elif p.stat().st_size != f["bytes"]:
                problems.append(f"{f['path']}: size {p.stat().st_size} != manifest {f['bytes']}")
            elif sha256_file(p) != f["sha256"]:
                problems.append(f"{f['path']}: sha256 differs from manifest")
        return problems


class Staging:
    """A temporary folder being filled; `publish()` writes the manifest and renames it into place."""

    def __init__(self, store: "ArtifactStore", asset: str, partition: str):
        self.store, self.asset, self.partition = store, asset, partition
        self.base = store.partition_dir(asset, partition)
        self.base.mkdir(parents=True, exist_ok=True)
        self.path = self.base / f".staging-{uuid.uuid4().hex}"
        self.path.mkdir()

    def publish(self, counts: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Artifact:
        files = []
        for p in sorted(self.path.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                rel = p.relative_to(self.path).as_posix()
                files.append({"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p)})
        counts = dict(counts or {})
        content_hash = hashlib.sha256(
            json.dumps({"files": [(f["path"], f["sha256"]) for f in files], "counts": counts},
                       sort_keys=True, default=str).encode()
        ).hexdigest()
        manifest = {
            "asset": self.asset, "partition": self.partition, "content_hash": content_hash,
            "files": files, "counts": counts, "meta": meta or {}, "created_at": time.time(),
        }
        atomic_write_bytes(self.path / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())
        final = self.base / content_hash[:16]
        if final.exists():  # identical content already published: keep the old folder, drop ours
            shutil.rmtree(self.path)
            manifest = json.loads((final / MANIFEST).read_text())
        else:
            os.rename(self.path, final)
        atomic_write_bytes(self.base / "CURRENT", content_hash[:16].encode())
        return Artifact(final, manifest)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def partition_dir(self, asset: str, partition: str | None) -> Path:
        return self.root / "artifacts" / asset / (partition or "__all__")

    @contextlib.contextmanager
    def stage(self, asset: str, partition: str | None) -> Iterator[Staging]:
        """Yield a staging folder; anything raised inside discards it. Call `publish()` before leaving."""
        st = Staging(self, asset, partition or "__all__")
        try:
            yield st
        finally:
            if st.path.exists():
                st.discard()

    def current(self, asset: str, partition: str | None) -> Artifact | None:
        base = self.partition_dir(asset, partition)
        try:
            ver = (base / "CURRENT").read_text().strip()
            manifest = json.loads((base / ver / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return Artifact(base / ver, manifest)

    def require(self, asset: str, partition: str | None) -> Artifact:
        art = self.current(asset, partition)
        if art is None:
            where = f"{asset}[{partition}]" if partition else asset
            raise ArtifactError(f"{where} has not been materialized under {self.root} (materialize it first)")
        return art

    def versions(self, asset: str, partition: str | None) -> list[Path]:
        base = self.partition_dir(asset, partition)
        return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) if base.exists() else []


# ----------------------------------------------------------------------------------------------------- stats
#: training_metrics' objective-specific columns, the one list the trainer's rows and the pipeline's table follow:
#: dpo/reward-model pair accuracy and margin, grpo/ppo mean reward, distill/grpo/ppo KL, ppo's update statistics;
#: `val_`: measured on held-out data at evaluation steps (grpo/ppo: greedy answers)
OBJECTIVE_METRICS = ("reward_accuracy", "val_reward_accuracy", "reward", "val_reward", "kl", "reward_margin",
                     "val_reward_margin", "completion_tokens", "clip_fraction", "value_loss", "entropy")
STATS_SCHEMAS: dict[str, pa.Schema] = {
    "source_stats": pa.schema([("source", pa.string()), ("stage", pa.string()), ("documents", pa.int64()),
                               ("bytes", pa.int64())]),
    "source_errors": pa.schema([("source", pa.string()), ("reason", pa.string()), ("count", pa.int64()),
                                ("example", pa.string())]),
    "filter_stats": pa.schema([("source", pa.string()), ("rule", pa.string()), ("documents_removed", pa.int64())]),
    "dedup_stats": pa.schema([("source", pa.string()), ("dedup_group", pa.string()), ("exact_removed", pa.int64()),
                              ("near_removed", pa.int64()), ("clusters", pa.int64())]),
    "dedup_clusters": pa.schema([("dedup_group", pa.string()), ("cluster", pa.string()), ("kind", pa.string()),
                                 ("source", pa.string()), ("id", pa.string()), ("kept", pa.bool_())]),
    "token_stats": pa.schema([("tokenizer", pa.string()), ("source", pa.string()), ("split", pa.string()),
                              ("documents", pa.int64()), ("tokens", pa.int64()), ("bytes", pa.int64())]),
    "mixture_stats": pa.schema([("mixture", pa.string()), ("split", pa.string()), ("source", pa.string()),
                                ("documents", pa.int64()), ("tokens", pa.int64()), ("target_share", pa.float64()),
                                ("actual_share", pa.float64()), ("epochs", pa.float64())]),
    "classifier_stats": pa.schema([("classifier", pa.string()), ("split", pa.string()), ("metric", pa.string()),
                                   ("value", pa.float64())]),
    "training_metrics": pa.schema([("mixture", pa.string()), ("experiment", pa.string()), ("stage", pa.string()),
                                   ("step", pa.int64()), ("loss", pa.float64()), ("val_loss", pa.float64()),
                                   ("lr", pa.float64()), ("grad_norm", pa.float64()), ("tokens", pa.int64()),
                                   ("tokens_per_s", pa.float64()), ("skipped", pa.bool_()),
                                   *[(k, pa.float64()) for k in OBJECTIVE_METRICS]]),
    # evaluation: per-example results (a run's score on a task is sum(value) / sum(weight)), per-run aggregates
    # with bootstrap intervals, the pairwise tests and verdicts of the latest comparison, n-gram contamination
    "eval_results": pa.schema([("mixture", pa.string()), ("experiment", pa.string()), ("stage", pa.string()),
                               ("task", pa.string()), ("metric", pa.string()), ("example", pa.string()),
                               ("value", pa.float64()), ("weight", pa.float64())]),
    "eval_scores": pa.schema([("mixture", pa.string()), ("experiment", pa.string()), ("stage", pa.string()),
                              ("task", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
                              ("stderr", pa.float64()), ("n", pa.int64()), ("ci_low", pa.float64()),
                              ("ci_high", pa.float64()), ("higher_is_better", pa.bool_())]),
    "eval_tests": pa.schema([("task", pa.string()), ("metric", pa.string()), ("run_a", pa.string()),
                             ("run_b", pa.string()), ("value_a", pa.float64()), ("value_b", pa.float64()),
                             ("diff", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
                             ("p_value", pa.float64()), ("p_adjusted", pa.float64()), ("significant", pa.bool_()),
                             ("better", pa.string()), ("correction", pa.string())]),
    "eval_verdicts": pa.schema([("task", pa.string()), ("metric", pa.string()), ("verdict", pa.string()),
                                ("winner", pa.string()), ("best", pa.string()), ("best_value", pa.float64()),
                                ("runner_up", pa.string()), ("runner_up_value", pa.float64()),
                                ("diff", pa.float64()), ("p_adjusted", pa.float64()), ("higher_is_better", pa.bool_())]),
    # sweeps: the points drawn, each run's objective, the mixture regressions and the transfer, scaling-law fits
    "sweep_points": pa.schema([("sweep", pa.string()), ("kind", pa.string()), ("point", pa.string()),
                               ("label", pa.string()), ("experiment", pa.string()), ("mixture", pa.string()),
                               ("sample", pa.int64()), ("weights", pa.string()), ("model", pa.string()),
                               ("params", pa.int64()), ("tokens", pa.int64()), ("held_out", pa.bool_())]),
    "proxy_objectives": pa.schema([("sweep", pa.string()), ("point", pa.string()), ("label", pa.string()),
                                   ("scale", pa.string()), ("experiment", pa.string()), ("objective", pa.float64()),
                                   ("metric", pa.string()), ("tasks", pa.string())]),
    "mixture_fits": pa.schema([("sweep", pa.string()), ("model", pa.string()), ("cv_spearman", pa.float64()),
                               ("chosen", pa.bool_()), ("points", pa.int64()), ("failed_points", pa.int64()),
                               ("predicted_optimum", pa.float64()), ("searched", pa.string()),
                               ("importances", pa.string()), ("converged", pa.bool_())]),
    "mixture_transfer": pa.schema([("sweep", pa.string()), ("mixture", pa.string()), ("label", pa.string()),
                                   ("role", pa.string()), ("proxy_objective", pa.float64()),
                                   ("predicted_objective", pa.float64()), ("target_objective", pa.float64()),
                                   ("target_experiment", pa.string()), ("diff_vs_searched", pa.float64()),
                                   ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("p_value", pa.float64()),
                                   ("searched_better", pa.bool_())]),
    "scaling_fits": pa.schema([("sweep", pa.string()), ("task", pa.string()), ("E", pa.float64()),
                               ("A", pa.float64()), ("B", pa.float64()), ("alpha", pa.float64()),
                               ("beta", pa.float64()), ("E_low", pa.float64()), ("E_high", pa.float64()),
                               ("alpha_low", pa.float64()), ("alpha_high", pa.float64()), ("beta_low", pa.float64()),
                               ("beta_high", pa.float64()), ("runs", pa.int64()), ("held_out_runs", pa.int64()),
                               ("held_out_max_rel_error", pa.float64()), ("converged", pa.bool_())]),
    "scaling_predictions": pa.schema([("sweep", pa.string()), ("task", pa.string()), ("kind", pa.string()),
                                      ("label", pa.string()), ("params", pa.float64()), ("tokens", pa.float64()),
                                      ("flops", pa.float64()), ("observed", pa.float64()),
                                      ("predicted", pa.float64()), ("low", pa.float64()), ("high", pa.float64()),
                                      ("rel_error", pa.float64())]),
    "eval_contamination": pa.schema([("mixture", pa.string()), ("task", pa.string()), ("ngram", pa.int64()),
                                     ("examples", pa.int64()), ("contaminated", pa.int64()),
                                     ("fraction", pa.float64()), ("max_fraction", pa.float64())]),
}


class StatsDB:
    """Statistics as Parquet files (one per writer, so partitions never contend) behind DuckDB views."""

    def __init__(self, home: str | Path):
        self.home = Path(home)
        self.dir = self.home / "stats"
        self.path = self.home / "stats.duckdb"

    def write(self, table: str, key: str, rows: list[dict[str, Any]]) -> Path:
        return self.write_table(table, key, pa.Table.from_pylist(rows, schema=STATS_SCHEMAS[table]))

    def write_table(self, table: str, key: str, tbl: pa.Table) -> Path:
        """Replace the rows this writer (`key`) contributed to `table`; other writers' rows are untouched."""
        tbl = tbl.select(STATS_SCHEMAS[table].names).cast(STATS_SCHEMAS[table])
        out = self.dir / table / f"{key}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(tbl, tmp)
        os.replace(tmp, out)
        self.ensure_views()
        return out

    def ensure_views(self) -> None:
        """Create the views once; an empty typed Parquet per table keeps each glob non-empty."""
        stamp = self.dir / ".views"
        wanted = ",".join(sorted(STATS_SCHEMAS))
        if self.path.exists() and stamp.exists() and stamp.read_text() == wanted:
            return
        import duckdb

        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for table, schema in STATS_SCHEMAS.items():
                empty = self.dir / table / "_empty.parquet"
                if not empty.exists():
                    empty.parent.mkdir(parents=True, exist_ok=True)
                    pq.write_table(schema.empty_table(), empty)
            for attempt in range(20):
                try:
                    con = duckdb.connect(str(self.path))
                    break
                except duckdb.IOException:
                    time.sleep(0.25 * (attempt + 1))
            else:
                return  # a reader holds the file; views are created by the next writer
            try:
                for table in STATS_SCHEMAS:
                    glob = (self.dir / table / "*.parquet").as_posix()
                    con.execute(f"CREATE OR REPLACE VIEW {table} AS "
                                f"SELECT * FROM read_parquet('{glob}', union_by_name=true)")
            finally:
                con.close()
            atomic_write_bytes(stamp, wanted.encode())

    def select(self, table: str, columns: str, where: str = "true", params: list | None = None) -> list[tuple]:
        """Rows of one table straight from its Parquet files (an in-memory DuckDB: no lock on stats.duckdb)."""
        import duckdb

        glob = (self.dir / table / "*.parquet").as_posix()
        if not (self.dir / table).is_dir():
            return []
        con = duckdb.connect()
        try:
            return con.execute(f"SELECT {columns} FROM read_parquet('{glob}', union_by_name=true) WHERE {where}",
                               params or []).fetchall()
        finally:
            con.close()

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run SQL against the stats views (read-only connection); returns (columns, rows)."""
        import duckdb

        self.ensure_views()
        con = duckdb.connect(str(self.path), read_only=True)
        try:
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description] if cur.description else []
            return cols, cur.fetchall()
        finally:
            con.close()
