"""Streaming readers for every source kind, yielding normalized documents or counted rejects (ingest: ingest.py).

Readers never hold a whole input: JSON lines are read line by line from (possibly compressed) byte streams
with a bounded decompression buffer (`streams.py`), Parquet and Hugging Face data in record batches, DuckDB
results as record-batch streams. Text and code trees are read one file at a time. A bad record becomes a
`Rejected` (counted by reason and sampled into `rejects.parquet`); it never stops the source and is never
dropped silently.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob as globlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from minigpt_assets.data.documents import document, make_doc_id
from minigpt_assets.data.streams import file_lines, stream_errors
from minigpt_assets.recipes import expand_location, is_url

BATCH = 1024  # rows per Arrow batch (Parquet, HF datasets, DuckDB)
MAX_REJECT_SAMPLES = 1000
REJECT_REASONS = ("invalid_utf8", "invalid_json", "missing_text", "empty_text", "truncated_file",
                  "unreadable_file", "not_a_string", "too_large")
JSONL_PATTERNS = ("**/*.jsonl", "**/*.jsonl.gz", "**/*.jsonl.zst", "**/*.jsonl.zstd", "**/*.json.gz",
                  "**/*.json.zst", "**/*.ndjson", "**/*.ndjson.gz", "**/*.ndjson.zst")
REJECTS_SCHEMA = pa.schema([("reason", pa.string()), ("provenance", pa.string()), ("example", pa.string())])


@dataclass
class Rejected:
    """A bad record: counted per reason and sampled, never fatal and never silently dropped."""

    reason: str  # one of REJECT_REASONS
    provenance: str  # "path/in/source.jsonl.gz:123"
    example: str  # the first ~200 characters of the raw record


class SourceMissing(Exception):
    """The source's location (or cached dataset) cannot be found; the message is one line."""


class SourceQueryError(ValueError):
    """A source's selection is invalid: a failing DuckDB query, an unknown split or text column; one line."""


# ------------------------------------------------------------------------------------------------ helpers
def _head(raw: bytes | str, n: int = 200) -> str:
    if isinstance(raw, bytes):
        raw = raw[: n * 4].decode("utf-8", errors="replace")
    return raw[:n]


def _one_line(e: BaseException, n: int = 300) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:n]


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _glob_root(pattern: str) -> Path:
    """The directory part of a glob before its first wildcard component: what provenance is relative to."""
    head = pattern[: min(i for i in (pattern.find(c) for c in "*?[") if i >= 0)]
    cut = head.rfind("/")
    return Path(head[: cut + 1]) if cut >= 0 else Path(".")


def _glob_match(rel: Path, pattern: str) -> bool:
    """Match a path relative to the source root. As in fnmatch, `*` also crosses `/`; a leading `**/` also
    matches zero directories, so `**/test/**` excludes every test dir and `test/**` only the top-level one."""
    s = rel.as_posix()
    return fnmatch.fnmatch(s, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(s, pattern[3:]))


def _rel(f: Path, root: Path) -> Path:
    try:
        return f.relative_to(root)
    except ValueError:
        return f


def _expand_files(location: str, include: Iterable[str] | None = None,
                  exclude: Iterable[str] = ()) -> tuple[Path, list[Path]]:
    """(root, sorted files) for a local file, a glob, or a directory filtered by include/exclude globs.

    Raises SourceMissing when the path does not exist or the glob matches nothing.
    """
    loc = expand_location(location.removeprefix("file://"))
    if _has_magic(loc):
        root = _glob_root(loc)
        files = [Path(p) for p in globlib.glob(loc, recursive=True) if os.path.isfile(p)]
        if not files:
            raise SourceMissing(f"no file matches {location!r}")
    else:
        p = Path(loc)
        if p.is_file():
            return p.parent, [p]
        if not p.is_dir():
            raise SourceMissing(f"file or directory not found: {loc}")
        root = p
        files = [q for pat in (include or ("**/*",)) for q in p.glob(pat) if q.is_file()]
    exclude = tuple(exclude)
    if exclude:
        files = [f for f in files if not any(_glob_match(_rel(f, root), x) for x in exclude)]
    return root, sorted(set(files))


def _key(rec_id: Any, provenance: str) -> str:
    return str(rec_id) if rec_id is not None else provenance


def _record_to_doc(name: str, recipe, rec: Any, prov: str) -> dict | Rejected:
    """A parsed record (dict) as a document, or the reason it is not one."""
    if not isinstance(rec, dict):
        return Rejected("invalid_json", prov, _head(json.dumps(rec, default=str, ensure_ascii=False)))
    text = rec.get(recipe.text_field)
    if text is None or not isinstance(text, str):
        reason = "missing_text" if text is None else "not_a_string"
        return Rejected(reason, prov, _head(json.dumps(rec, default=str, ensure_ascii=False)))
    if not text.strip():
        return Rejected("empty_text", prov, _head(json.dumps(rec, default=str, ensure_ascii=False)))
    rid = rec.get(recipe.id_field) if recipe.id_field else None
    meta = {k: v for k, v in rec.items() if k != recipe.text_field}
    return document(make_doc_id(name, _key(rid, prov)), text, name, recipe.domain, prov, meta)


# ------------------------------------------------------------------------------------------------ jsonl
def read_jsonl(name: str, recipe) -> Iterator[dict | Rejected]:
    for path, rel in _jsonl_units(recipe):
        yield from _jsonl_file(name, recipe, Path(path), rel)


def _jsonl_units(recipe) -> list[tuple[str, str]]:
    root, files = _expand_files(recipe.location, JSONL_PATTERNS)
    return [(str(p), _rel(p, root).as_posix()) for p in files]


def _jsonl_file(name: str, recipe, path: Path, rel: str) -> Iterator[dict | Rejected]:
    errors = stream_errors()
    lineno = 0
    try:
        for raw in file_lines(path):
            lineno += 1
            prov = f"{rel}:{lineno}"
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark
            if not raw.strip():
                continue  # a blank line is no record
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield Rejected("invalid_utf8", prov, _head(raw))
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                yield Rejected("invalid_json", prov, _head(line))
                continue
            yield _record_to_doc(name, recipe, rec, prov)
    except errors as e:  # a cut or corrupt stream: what was read before is kept
        yield Rejected("truncated_file", f"{rel}:{lineno + 1}", _one_line(e, 200))
    except OSError as e:
        yield Rejected("unreadable_file", rel, _one_line(e, 200))


# ------------------------------------------------------------------------------------------------ tables
def _batches_to_docs(name: str, recipe, batches: Iterable[pa.RecordBatch], prov_prefix: str) -> Iterator:
    row = 0
    checked = False
    for batch in batches:
        if not checked:
            cols = batch.schema.names
            if recipe.text_field not in cols:
                raise SourceQueryError(f"{prov_prefix}: text_field {recipe.text_field!r} is not a column "
                                       f"(columns: {', '.join(cols)})")
            checked = True
        for rec in batch.to_pylist():
            prov = f"{prov_prefix}:{row}"
            row += 1
            yield _record_to_doc(name, recipe, rec, prov)


def _parquet_file(name: str, recipe, opener: Callable[[], Any], prov: str) -> Iterator[dict | Rejected]:
    """One Parquet file, batch by batch; a file that cannot be opened or decoded is one `unreadable_file`."""
    try:
        with contextlib.ExitStack() as stack:
            handle = opener()
            if not isinstance(handle, (str, Path)):
                stack.enter_context(handle)  # an fsspec file: closed after the last batch
            pf = pq.ParquetFile(handle)
            yield from _batches_to_docs(name, recipe, pf.iter_batches(batch_size=BATCH), prov)
    except FileNotFoundError:
        raise SourceMissing(f"file not found: {prov}") from None
    except (pa.ArrowException, OSError) as e:
        yield Rejected("unreadable_file", prov, _one_line(e, 200))


def read_parquet(name: str, recipe) -> Iterator[dict | Rejected]:
    for path, prov in _parquet_units(recipe):
        yield from read_unit(name, recipe, path, prov)


def _remote(recipe) -> bool:
    return is_url(recipe.location) and not recipe.location.startswith("file://")


def _parquet_units(recipe) -> list[tuple[str, str]]:
    """(file, provenance) of every Parquet file of the location, local or over fsspec, sorted."""
    loc = recipe.location
    if not _remote(recipe):
        root, files = _expand_files(loc, ("**/*.parquet",))
        return [(str(p), _rel(p, root).as_posix()) for p in files]
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(expand_location(loc), **recipe.storage_options)
    if _has_magic(path):
        root, files = _glob_root(path).as_posix(), sorted(fs.glob(path))
        if not files:
            raise SourceMissing(f"no file matches {loc!r}")
    elif fs.isdir(path):
        root = path
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    elif fs.exists(path):
        root, files = path.rsplit("/", 1)[0] if "/" in path else "", [path]
    else:
        raise SourceMissing(f"not found: {loc}")
    return [(p, p[len(root):].lstrip("/") if root and p.startswith(root) else p) for p in files]


def source_units(recipe) -> list[tuple[str, str]] | None:
    """(file, provenance) of each input file of a source read file by file (jsonl, parquet), in reading order;
    None for the other kinds. Ingest runs one task per file (data/ingest.py)."""
    if recipe.kind == "jsonl":
        return _jsonl_units(recipe)
    if recipe.kind == "parquet":
        return _parquet_units(recipe)
    return None


def read_unit(name: str, recipe, file: str, prov: str) -> Iterator[dict | Rejected]:
    """The records of one input file of `source_units`."""
    if recipe.kind == "jsonl":
        return _jsonl_file(name, recipe, Path(file), prov)
    if _remote(recipe):
        from fsspec.core import url_to_fs

        fs, _ = url_to_fs(expand_location(recipe.location), **recipe.storage_options)
        return _parquet_file(name, recipe, lambda: fs.open(file, "rb"), prov)
    return _parquet_file(name, recipe, lambda: Path(file), prov)


def read_duckdb(name: str, recipe) -> Iterator[dict | Rejected]:
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        try:
            rel = con.sql(recipe.query)  # a lazy relation: rows stream out in record batches
            if rel is None:
                raise SourceQueryError("query returns no rows (the last statement must be a SELECT)")
            reader = (rel.to_arrow_reader(BATCH) if hasattr(rel, "to_arrow_reader")
                      else rel.fetch_arrow_reader(BATCH))  # duckdb < 1.4
            yield from _batches_to_docs(name, recipe, reader, "query")
        except duckdb.Error as e:
            raise SourceQueryError(f"query failed: {str(e).strip().splitlines()[0]}") from None
    finally:
        con.close()


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Force Hugging Face offline mode (environment and the already-imported config flags), then restore."""
    import datasets.config
    import huggingface_hub.constants as hub

    from minigpt_assets.settings import environment

    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"), (hub, "HF_HUB_OFFLINE")]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr in flags if hasattr(mod, attr)]
    for mod, attr, _ in saved:
        setattr(mod, attr, True)
    try:
        with environment({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}):
            yield
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)


def _looks_local(loc: str) -> bool:
    return loc.startswith(("/", "./", "../", "~"))


def read_hf(name: str, recipe) -> Iterator[dict | Rejected]:
    import datasets

    loc = expand_location(recipe.location)
    if Path(loc).is_dir():
        try:
            ds = datasets.load_from_disk(loc)
        except FileNotFoundError as e:
            raise SourceQueryError(f"{loc} is not a datasets save_to_disk folder ({_one_line(e, 150)})") from None
        if isinstance(ds, datasets.DatasetDict):
            if recipe.split not in ds:
                raise SourceQueryError(f"split {recipe.split!r} not in {loc} (has: {', '.join(ds)})")
            ds = ds[recipe.split]
        prov = Path(loc).name
    elif os.path.exists(loc):
        raise SourceQueryError(f"{loc} is not a folder (expected a datasets save_to_disk folder or a dataset name)")
    elif _looks_local(loc):
        raise SourceMissing(f"directory not found: {loc}")
    else:
        with _hf_offline():
            try:
                ds = datasets.load_dataset(loc, recipe.config_name, split=recipe.split)
            except OSError as e:  # ConnectionError, FileNotFoundError, DatasetNotFoundError
                cache = datasets.config.HF_DATASETS_CACHE
                raise SourceMissing(
                    f"hf dataset {loc!r} is not in the local Hugging Face cache ({cache}); download it once with "
                    f"network access, or save_to_disk and point location at that folder [{_one_line(e, 120)}]"
                ) from None
            except ValueError as e:  # an unknown split or config of a cached dataset
                raise SourceQueryError(f"hf dataset {loc!r}: {_one_line(e)}") from None
        if isinstance(ds, (datasets.IterableDataset, datasets.DatasetDict)):
            raise SourceQueryError(f"hf dataset {loc!r}: expected one split, got {type(ds).__name__}")
        prov = loc
    tables = ds.with_format("arrow").iter(batch_size=BATCH)  # memory-mapped Arrow, one batch at a time
    yield from _batches_to_docs(name, recipe, (b for t in tables for b in t.to_batches()), prov)


# ------------------------------------------------------------------------------------------------ files
LANGUAGES = {
    ".py": "python", ".c": "c", ".h": "c", ".cpp": "cpp", ".cc": "cpp", ".hpp": "cpp", ".js": "javascript",
    ".ts": "typescript", ".rs": "rust", ".go": "go", ".java": "java", ".sh": "shell", ".rb": "ruby",
    ".md": "markdown", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".html": "html",
    ".css": "css",
}


def language_of(path: str | Path) -> str:
    """The language tag of a source file from its extension (the bare extension when unknown)."""
    suffix = Path(path).suffix.lower()
    return LANGUAGES.get(suffix, suffix.lstrip(".") or "text")


def _read_text_file(path: Path, rel: str, encoding: str) -> str | Rejected:
    try:
        raw = path.read_bytes()
    except OSError as e:
        return Rejected("unreadable_file", rel, _one_line(e, 200))
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return Rejected("invalid_utf8", rel, _head(raw))
    except LookupError:
        raise SourceQueryError(f"unknown encoding {encoding!r}") from None


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
        try:
            size = path.stat().st_size
        except OSError as e:
            yield Rejected("unreadable_file", rel, _one_line(e, 200))
            continue
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
        yield document(make_doc_id(name, rel), text, name, recipe.domain, rel,
                       {"language": language_of(path), "path": rel})


def read_builtin(name: str, recipe) -> Iterator[dict | Rejected]:
    from minigpt_assets.data import builtin_corpora

    for key, text, meta in builtin_corpora.generate(recipe.generator, **recipe.options):
        yield document(make_doc_id(name, key), text, name, recipe.domain, key, meta)


READERS: dict[str, Callable[[str, Any], Iterator[dict | Rejected]]] = {
    "jsonl": read_jsonl, "parquet": read_parquet, "text_dir": read_text_dir, "code_tree": read_code_tree,
    "hf_dataset": read_hf, "duckdb_sql": read_duckdb, "builtin": read_builtin,
}


def read_source(name: str, recipe) -> Iterator[dict | Rejected]:
    """Every record of the source, as a normalized document dict or a `Rejected`, in a stable order.

    Lazy: a missing location raises SourceMissing on the first `next()`.
    """
    return READERS[recipe.kind](name, recipe)
