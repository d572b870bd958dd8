"""`ingest_source`: a source's records into normalized Parquet shards, with rejects counted and sampled.

Sources read file by file (jsonl, parquet: `sources.source_units`) are ingested as one data-engine task per input
file, each writing `shard-<file>-<k>.parquet`; the others (and any source with `limit_documents`, whose cut
depends on reading order) stream in this process into `shard-<k>.parquet`. Either way the output does not
depend on scheduling.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from minigpt_assets.data.documents import ShardInfo, ShardWriter
from minigpt_assets.data.engine import Engine, EngineConfig
from minigpt_assets.data.sources import Rejected, SourceMissing, read_source, read_unit, source_units

MAX_REJECT_SAMPLES = 1000
REJECTS_SCHEMA = pa.schema([("reason", pa.string()), ("provenance", pa.string()), ("example", pa.string())])


@dataclass
class IngestResult:
    shards: list[ShardInfo] = field(default_factory=list)
    documents: int = 0
    bytes: int = 0
    rejects: dict[str, int] = field(default_factory=dict)  # reason -> count
    reject_examples: dict[str, str] = field(default_factory=dict)  # reason -> "provenance: example"
    missing: str | None = None  # the optional source's location is missing: no documents


@dataclass
class _Part:
    """What one stream of records gave: shards, reject counts, first example per reason, first samples."""

    shards: list[ShardInfo] = field(default_factory=list)
    rejects: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    missing: str | None = None


def _consume(items, writer: ShardWriter, limit: int | None = None) -> _Part:
    part = _Part()
    for item in items:
        if isinstance(item, Rejected):
            part.rejects[item.reason] += 1
            part.examples.setdefault(item.reason, f"{item.provenance}: {item.example}")
            if len(part.samples) < MAX_REJECT_SAMPLES:
                part.samples.append({"reason": item.reason, "provenance": item.provenance, "example": item.example})
            continue
        writer.write(item)
        if limit is not None and writer.documents >= limit:
            break
    part.shards = writer.close()
    return part


def _ingest_file(name: str, recipe, index: int, file: str, prov: str, out_dir: str) -> _Part:
    """One input file into `shard-<index>-<k>.parquet` (an engine task)."""
    writer = ShardWriter(Path(out_dir), prefix=f"shard-{index:05d}", max_documents=recipe.shard_documents)
    try:
        return _consume(read_unit(name, recipe, file, prov), writer)
    except SourceMissing as e:
        for s in writer.shards:
            s.path.unlink(missing_ok=True)
        return _Part(missing=str(e))


def ingest_source(name: str, recipe, out_dir: Path, limit: int | None = None,
                  engine: Engine | None = None) -> IngestResult:
    """Stream the source into `out_dir/shard-*.parquet` (and `rejects.parquet` when there are rejects).

    An optional source whose location is missing gives an empty result with `missing` set; a required one raises
    SourceMissing.
    """
    limit = recipe.limit_documents if limit is None else limit
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        units = source_units(recipe) if limit is None else None
        if units is not None:
            engine = engine or Engine(EngineConfig())
            tasks = [(name, recipe, i, f, prov, str(out_dir)) for i, (f, prov) in enumerate(units)]
            parts = engine.map(_ingest_file, tasks, [prov for _, prov in units], "ingest")
            gone = next((p.missing for p in parts if p.missing), None)
            if gone:
                for p in parts:
                    for s in p.shards:
                        s.path.unlink(missing_ok=True)
                raise SourceMissing(gone)
        else:
            writer = ShardWriter(out_dir, prefix="shard", max_documents=recipe.shard_documents)
            try:
                with contextlib.closing(read_source(name, recipe)) as items:
                    parts = [_consume(items, writer, limit)]
            except SourceMissing:
                for s in writer.shards:  # anything flushed before a later file went missing
                    s.path.unlink(missing_ok=True)
                raise
    except SourceMissing as e:
        if not recipe.optional:
            raise
        return IngestResult(missing=str(e))
    shards = [s for p in parts for s in p.shards]
    rejects: Counter = Counter()
    examples: dict[str, str] = {}
    samples: list[dict] = []
    for p in parts:  # in reading order: the same first example and samples as one stream
        rejects.update(p.rejects)
        for r, ex in p.examples.items():
            examples.setdefault(r, ex)
        samples += p.samples[:MAX_REJECT_SAMPLES - len(samples)]
    if samples:
        pq.write_table(pa.Table.from_pylist(samples, schema=REJECTS_SCHEMA), out_dir / "rejects.parquet")
    return IngestResult(shards, sum(s.documents for s in shards), sum(s.bytes for s in shards), dict(rejects),
                        examples)
