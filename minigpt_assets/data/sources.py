"""Streaming readers for every source kind, yielding normalized documents or counted rejects, and `ingest_source`.

Readers never hold a whole file: JSON lines are read line by line from (possibly compressed) byte streams,
Parquet and Arrow data in record batches, DuckDB results as record-batch streams.
"""

from __future__ import annotations

import glob as globlib
import gzip
import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from minigpt_assets.data.documents import ShardInfo, ShardWriter, document, make_doc_id
from minigpt_assets.recipes import expand_location, is_url

BATCH = 1024
MAX_REJECT_SAMPLES = 1000


@dataclass
class Rejected:
    """A bad record: counted per reason and sampled, never fatal and never silently dropped."""

    reason: str
    provenance: str
    example: str


class SourceMissing(Exception):
    """The source's location (or cached dataset) cannot be found; the message is one line."""


class SourceQueryError(ValueError):
    """A DuckDB source query failed; the message is one line."""


# ------------------------------------------------------------------------------------------------ helpers
def _head(raw: bytes | str, n: int = 200) -> str:
    if isinstance(raw, bytes):
        raw = raw[: n * 4].decode("utf-8", errors="replace")
    return raw[:n]


def _expand_files(location: str, patterns: tuple[str, ...] | None = None,
                  exclude: tuple[str, ...] = ()) -> tuple[Path, list[Path]]:
    """(root, sorted files) for a file, a glob, or a directory filtered by include/exclude globs."""
    loc = expand_location(location.removeprefix("file://"))
    if any(c in loc for c in "*?["):
        root = Path(loc.split("*")[0].split("?")[0].split("[")[0]).parent if "/" in loc else Path(".")
        files = [Path(p) for p in globlib.glob(loc, recursive=True) if Path(p).is_file()]
    else:
        p = Path(loc)
        if p.is_file():
            return p.parent, [p]
        if not p.is_dir():
            raise SourceMissing(f"file or directory not found: {loc}")
        root = p
        files = []
        for pat in patterns or ("**/*",):
            files += [q for q in p.glob(pat) if q.is_file()]
    if exclude:
        files = [f for f in files if not any(_glob_match(_rel(f, root), x) for x in exclude)]
    files = sorted(set(files))
    if not files and any(c in loc for c in "*?["):
        raise SourceMissing(f"no file matches {location!r}")
    return root, files


def _rel(f: Path, root: Path) -> Path:
    try:
        return f.relative_to(root)
    except ValueError:
        return f


def _glob_match(rel: Path, pattern: str) -> bool:
    """Match a path relative to the source root. As in fnmatch, `*` also crosses `/`; a leading `**/` also
    matches zero directories, so `**/test/**` excludes every test dir and `test/**` only the top-level one."""
    import fnmatch

    s = rel.as_posix()
    return fnmatch.fnmatch(s, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(s, pattern[3:]))


def _key(rec_id: Any, provenance: str) -> str:
    return str(rec_id) if rec_id is not None else provenance


# ------------------------------------------------------------------------------------------------ jsonl
def _open_lines(path: Path) -> Iterator[bytes]:
    name = path.name
    if name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            yield from f
    elif name.endswith(".zst") or name.endswith(".zstd"):
        yield from _zst_lines(path)
    else:
        with open(path, "rb") as f:
            yield from f


class TruncatedFile(EOFError):
    """A compressed stream ended in the middle of a frame."""


def _zst_lines(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a (multi-frame) zstd file; raises TruncatedFile if the last frame is incomplete."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    fed = False  # whether the current frame has received any input
    pending = b""
    with open(path, "rb") as raw:
        while data := raw.read(chunk):
            while data:
                out = dobj.decompress(data)
                fed = True
                data = b""
                if dobj.eof:  # a frame ended; the rest of the input starts the next one
                    data = dobj.unused_data
                    dobj, fed = dctx.decompressobj(), False
                pending += out
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line + b"\n"
    if fed and not dobj.eof:
        raise TruncatedFile("zstd stream ended inside a frame")
    if pending:
        yield pending


def _record_to_doc(name: str, recipe, rec: Any, prov: str) -> dict | Rejected:
    if not isinstance(rec, dict):
        return Rejected("invalid_json", prov, _head(json.dumps(rec, default=str)))
    text = rec.get(recipe.text_field)
    if text is None:
        return Rejected("missing_text", prov, _head(json.dumps(rec, default=str)))
    if not isinstance(text, str):
        return Rejected("not_a_string", prov, _head(json.dumps(rec, default=str)))
    if not text.strip():
        return Rejected("empty_text", prov, _head(json.dumps(rec, default=str)))
    rid = rec.get(recipe.id_field) if recipe.id_field else None
    meta = {k: v for k, v in rec.items() if k != recipe.text_field}
    return document(make_doc_id(name, _key(rid, prov)), text, name, recipe.domain, prov, meta)


def read_jsonl(name: str, recipe) -> Iterator[dict | Rejected]:
    root, files = _expand_files(recipe.location, ("**/*.jsonl", "**/*.jsonl.gz", "**/*.jsonl.zst",
                                                  "**/*.json.gz", "**/*.json.zst", "**/*.ndjson"))
    for path in files:
        rel = _rel(path, root).as_posix()
        lineno = 0
        try:
            for raw in _open_lines(path):
                lineno += 1
                prov = f"{rel}:{lineno}"
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield Rejected("invalid_utf8", prov, _head(raw))
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    yield Rejected("invalid_json", prov, _head(line))
                    continue
                yield _record_to_doc(name, recipe, rec, prov)
        except (EOFError, zlib.error, gzip.BadGzipFile, _zstd_error()) as e:  # a cut or corrupt stream
            yield Rejected("truncated_file", f"{rel}:{lineno + 1}", f"{type(e).__name__}: {e}"[:200])
        except OSError as e:
            yield Rejected("unreadable_file", rel, f"{type(e).__name__}: {e}"[:200])


def _zstd_error() -> type[Exception]:
    import zstandard

    return zstandard.ZstdError


# ------------------------------------------------------------------------------------------------ tables
def _batches_to_docs(name: str, recipe, batches: Iterable[pa.RecordBatch], prov_prefix: str) -> Iterator:
    row = 0
    for batch in batches:
        cols = batch.schema.names
        if recipe.text_field not in cols:
            raise SourceQueryError(f"column {recipe.text_field!r} (text_field) not found; columns: {', '.join(cols)}")
        for rec in batch.to_pylist():
            prov = f"{prov_prefix}:{row}"
            row += 1
            yield _record_to_doc(name, recipe, rec, prov)


def read_parquet(name: str, recipe) -> Iterator[dict | Rejected]:
    loc = recipe.location
    if is_url(loc) and not loc.startswith("file://"):
        import fsspec

        opened = fsspec.open_files(loc, mode="rb", **recipe.storage_options)
        if not opened:
            raise SourceMissing(f"no file matches {loc!r}")
        for of in sorted(opened, key=lambda o: o.path):
            try:
                with of as f:
                    pf = pq.ParquetFile(f)
                    yield from _batches_to_docs(name, recipe, pf.iter_batches(batch_size=BATCH), of.path)
            except FileNotFoundError:
                raise SourceMissing(f"file not found: {of.path}") from None
        return
    root, files = _expand_files(loc, ("**/*.parquet",))
    for path in files:
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            yield Rejected("unreadable_file", _rel(path, root).as_posix(), str(e)[:200])
            continue
        yield from _batches_to_docs(name, recipe, pf.iter_batches(batch_size=BATCH), _rel(path, root).as_posix())


def read_duckdb(name: str, recipe) -> Iterator[dict | Rejected]:
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        try:
            rel = con.sql(recipe.query)  # a lazy relation: rows stream out in record batches
            reader = (rel.to_arrow_reader(BATCH) if hasattr(rel, "to_arrow_reader")
                      else rel.fetch_arrow_reader(BATCH))  # duckdb < 2
        except duckdb.Error as e:
            raise SourceQueryError(f"query failed: {str(e).splitlines()[0]}") from None
        yield from _batches_to_docs(name, recipe, reader, "query")
    finally:
        con.close()


def read_hf(name: str, recipe) -> Iterator[dict | Rejected]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    loc = expand_location(recipe.location)
    if Path(loc).is_dir():
        ds = datasets.load_from_disk(loc)
        if isinstance(ds, datasets.DatasetDict):
            if recipe.split not in ds:
                raise SourceMissing(f"split {recipe.split!r} not in {loc} (has: {', '.join(ds)})")
            ds = ds[recipe.split]
        prov = Path(loc).name
    else:
        try:
            ds = datasets.load_dataset(loc, recipe.config_name, split=recipe.split)
        except Exception as e:  # datasets raises several types for "not cached offline"
            cache = os.environ.get("HF_DATASETS_CACHE") or os.path.expanduser("~/.cache/huggingface/datasets")
            raise SourceMissing(
                f"hf dataset {loc!r} is not in the local Hugging Face cache ({cache}): {type(e).__name__}; "
                "download it once with network access, or save_to_disk and point location at that folder"
            ) from None
        prov = loc
    yield from _batches_to_docs(name, recipe, (pa.RecordBatch.from_pydict(b) for b in ds.iter(batch_size=BATCH)),
                                prov)


# ------------------------------------------------------------------------------------------------ files
LANGUAGES = {
    ".py": "python", ".c": "c", ".h": "c", ".cpp": "cpp", ".cc": "cpp", ".hpp": "cpp", ".js": "javascript",
    ".ts": "typescript", ".rs": "rust", ".go": "go", ".java": "java", ".sh": "shell", ".rb": "ruby",
    ".md": "markdown", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".html": "html",
    ".css": "css",
}


def _read_text_file(path: Path, rel: str, encoding: str) -> str | Rejected:
    try:
        raw = path.read_bytes()
    except OSError as e:
        return Rejected("unreadable_file", rel, str(e)[:200])
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return Rejected("invalid_utf8", rel, _head(raw))


def read_text_dir(name: str, recipe) -> Iterator[dict | Rejected]:
    root, files = _expand_files(recipe.location, recipe.include, recipe.exclude)
    for path in files:
        rel = _rel(path, root).as_posix()
        text = _read_text_file(path, rel, recipe.encoding)
        if isinstance(text, Rejected):
            yield text
            continue
        chunks = text.split(recipe.split_on) if recipe.split_on else [text]
        for i, chunk in enumerate(chunks):
            chunk = chunk.strip()
            if not chunk:
                continue
            prov = f"{rel}#{i}" if recipe.split_on else rel
            yield document(make_doc_id(name, prov), chunk, name, recipe.domain, prov, {"path": rel})


def read_code_tree(name: str, recipe) -> Iterator[dict | Rejected]:
    root, files = _expand_files(recipe.location, recipe.include, recipe.exclude)
    for path in files:
        rel = _rel(path, root).as_posix()
        size = path.stat().st_size
        if size > recipe.max_file_bytes:
            yield Rejected("too_large", rel, f"{size} bytes > max_file_bytes {recipe.max_file_bytes}")
            continue
        text = _read_text_file(path, rel, "utf-8")
        if isinstance(text, Rejected):
            yield text
            continue
        if not text.strip():
            yield Rejected("empty_text", rel, "")
            continue
        lang = LANGUAGES.get(path.suffix.lower(), path.suffix.lower().lstrip(".") or "text")
        yield document(make_doc_id(name, rel), text, name, recipe.domain, rel, {"language": lang, "path": rel})


def read_builtin(name: str, recipe) -> Iterator[dict | Rejected]:
    from minigpt_assets.data import builtin_corpora

    for key, text, meta in builtin_corpora.generate(recipe.generator, **recipe.options):
        yield document(make_doc_id(name, key), text, name, recipe.domain, key, meta)


READERS = {
    "jsonl": read_jsonl, "parquet": read_parquet, "text_dir": read_text_dir, "code_tree": read_code_tree,
    "hf_dataset": read_hf, "duckdb_sql": read_duckdb, "builtin": read_builtin,
}


def read_source(name: str, recipe) -> Iterator[dict | Rejected]:
    """Every record of the source, as a normalized document dict or a `Rejected`."""
    return READERS[recipe.kind](name, recipe)


# ------------------------------------------------------------------------------------------------ ingest
@dataclass
class IngestResult:
    shards: list[ShardInfo] = field(default_factory=list)
    documents: int = 0
    bytes: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    reject_examples: dict[str, str] = field(default_factory=dict)
    missing: str | None = None


def ingest_source(name: str, recipe, out_dir: Path, limit: int | None = None) -> IngestResult:
    """Stream the source into `out_dir/shard-*.parquet` (and `rejects.parquet` when there are rejects)."""
    limit = recipe.limit_documents if limit is None else limit
    out_dir = Path(out_dir)
    writer = ShardWriter(out_dir, prefix="shard", max_documents=recipe.shard_documents)
    rejects: Counter[str] = Counter()
    examples: dict[str, str] = {}
    samples: list[dict] = []
    try:
        for item in read_source(name, recipe):
            if isinstance(item, Rejected):
                rejects[item.reason] += 1
                examples.setdefault(item.reason, f"{item.provenance}: {item.example}")
                if len(samples) < MAX_REJECT_SAMPLES:
                    samples.append({"reason": item.reason, "provenance": item.provenance, "example": item.example})
                continue
            writer.write(item)
            if limit is not None and writer.documents >= limit:
                break
    except SourceMissing as e:
        if not recipe.optional:
            raise
        return IngestResult(missing=str(e))
    shards = writer.close()
    if samples:
        pq.write_table(pa.Table.from_pylist(samples, schema=pa.schema(
            [("reason", pa.string()), ("provenance", pa.string()), ("example", pa.string())])),
            out_dir / "rejects.parquet")
    return IngestResult(shards, sum(s.documents for s in shards), sum(s.bytes for s in shards), dict(rejects),
                        examples)
