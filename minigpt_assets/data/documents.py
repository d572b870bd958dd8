"""The normalized document record and its Parquet shards: schema, a bounded-memory shard writer, readers.

Every stage of the data half reads and writes shards of this one schema:
id, text, source, domain, provenance (where the record came from: file and line/row), meta (JSON string).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

DOCUMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("domain", pa.string()),
        ("provenance", pa.string()),
        ("meta", pa.string()),
    ]
)
COLUMNS = DOCUMENT_SCHEMA.names


def make_doc_id(source: str, key: str) -> str:
    """A stable document id from the source name and a stable key (a record id, or file + line)."""
    return f"{source}/{xxhash.xxh3_64_hexdigest(key.encode('utf-8', 'surrogatepass'))}"


def document(id: str, text: str, source: str, domain: str, provenance: str, meta: dict | None = None) -> dict:
    return {"id": id, "text": text, "source": source, "domain": domain, "provenance": provenance,
            "meta": json.dumps(meta or {}, ensure_ascii=False, sort_keys=True, default=str)}


@dataclass
class ShardInfo:
    path: Path
    documents: int
    bytes: int  # UTF-8 bytes of the text column


@dataclass
class ShardWriter:
    """Buffer documents and write `<prefix>-00000.parquet`, ... of at most `max_documents` rows / `max_bytes`.

    Memory stays bounded by one shard's buffer, whatever the size of the input.
    """

    out_dir: Path
    prefix: str = "shard"
    max_documents: int = 20_000
    max_bytes: int = 64 << 20
    schema: pa.Schema = DOCUMENT_SCHEMA
    shards: list[ShardInfo] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._rows: list = []  # dict rows from `write`, or Arrow slices from `write_batch` (one kind per shard)
        self._bytes = 0
        self._batched = 0  # rows buffered as Arrow slices

    def write(self, doc: dict) -> None:
        if self._batched:
            raise ValueError("ShardWriter: write() after write_batch() in the same shard")
        self._rows.append(doc)
        self._bytes += len(doc["text"].encode("utf-8", "surrogatepass")) if "text" in doc else 0
        if len(self._rows) >= self.max_documents or self._bytes >= self.max_bytes:
            self.flush()

    def write_many(self, docs: Iterable[dict]) -> None:
        for d in docs:
            self.write(d)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Append the rows of an Arrow batch (no Python objects per row), cutting shards where `write` would."""
        import numpy as np
        import pyarrow.compute as pc

        if self._rows and not self._batched:
            raise ValueError("ShardWriter: write_batch() after write() in the same shard")
        batch = pa.RecordBatch.from_arrays([batch.column(n) for n in self.schema.names], schema=self.schema)
        while batch.num_rows:
            if "text" in self.schema.names:
                sizes = pc.binary_length(batch.column("text")).fill_null(0).to_numpy(zero_copy_only=False)
            else:
                sizes = np.zeros(batch.num_rows, dtype=np.int64)
            nbytes = self._bytes + np.cumsum(sizes)
            count = self._batched + np.arange(1, batch.num_rows + 1)
            full = np.flatnonzero((count >= self.max_documents) | (nbytes >= self.max_bytes))
            take = int(full[0]) + 1 if len(full) else batch.num_rows
            self._rows.append(batch.slice(0, take))  # Arrow slices; `flush` joins them
            self._batched += take
            self._bytes = int(nbytes[take - 1])
            batch = batch.slice(take)
            if len(full):
                self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        path = self.out_dir / f"{self.prefix}-{len(self.shards):05d}.parquet"
        if self._batched:
            table = pa.Table.from_batches(self._rows, schema=self.schema)
        else:
            table = pa.Table.from_pylist(self._rows, schema=self.schema)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        self.shards.append(ShardInfo(path, table.num_rows, self._bytes))
        self._rows, self._bytes, self._batched = [], 0, 0

    def close(self) -> list[ShardInfo]:
        self.flush()
        return self.shards

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards) + (self._batched or len(self._rows))

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards) + self._bytes


def iter_batches(paths: Iterable[Path], columns: list[str] | None = None,
                 batch_size: int = 2048) -> Iterator[pa.RecordBatch]:
    """Stream record batches from Parquet shards without loading whole files."""
    for p in paths:
        pf = pq.ParquetFile(p)
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def iter_documents(paths: Iterable[Path], columns: list[str] | None = None,
                   batch_size: int = 2048) -> Iterator[dict[str, Any]]:
    for batch in iter_batches(paths, columns, batch_size):
        yield from batch.to_pylist()


def count_documents(paths: Iterable[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def sample_documents(paths: Iterable[Path], n: int, seed: int, columns: tuple[str, ...] = ("id", "text")
                     ) -> list[dict[str, Any]]:
    """A deterministic sample of n documents: the n largest seeded hashes of their ids, in a bounded heap.

    Independent of shard layout and read order, so the same documents are picked however the source was sharded.
    """
    import heapq

    heap: list[tuple[int, str, dict]] = []
    for doc in iter_documents(paths, columns=list(columns)):
        h = xxhash.xxh64_intdigest(doc["id"].encode(), seed=seed)
        if len(heap) < n:
            heapq.heappush(heap, (h, doc["id"], doc))
        elif h > heap[0][0]:
            heapq.heapreplace(heap, (h, doc["id"], doc))
    return [d for _, _, d in sorted(heap, key=lambda t: t[1])]
