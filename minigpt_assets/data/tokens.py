"""Token shards: documents -> flat memory-mappable token arrays (train.bin / val.bin) plus a document index.

Each document is encoded, followed by the end-of-document token, and assigned to train or validation by a hash
of its id alone, so the assignment never changes with sharding, tokenizer or mixture: validation never leaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq
import xxhash

from minigpt_assets.data.documents import iter_batches
from minigpt_assets.data.engine import Engine, EngineConfig, Expected
from minigpt_assets.data.tokenizer import eos_id, load_tokenizer

SPLITS = ("train", "val")
INDEX_SCHEMA = pa.schema([("id", pa.string()), ("split", pa.string()), ("offset", pa.int64()),
                          ("length", pa.int64()), ("bytes", pa.int64())])


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def is_validation(doc_id: str, fraction: float) -> bool:
    """Deterministic from the id alone (salted so it is independent of other id hashes in the project)."""
    return fraction > 0 and xxhash.xxh64_intdigest(b"split:" + doc_id.encode()) % 1_000_000 < fraction * 1_000_000


@dataclass
class TokenShards:
    documents: dict[str, int]
    tokens: dict[str, int]
    bytes: dict[str, int]
    dtype: str
    vocab_size: int


_TOKENIZERS: dict[str, object] = {}  # a worker's tokenizer, loaded once


def _tokenize_shard(index: int, path: str, tokenizer_dir: str, out_dir: str, validation_fraction: float,
                    batch_size: int) -> dict:
    """One document shard into `part-<index>.<split>.bin` and `part-<index>.index.parquet` (offsets within the
    part; one row group per batch). Returns its documents, tokens and bytes per split."""
    if tokenizer_dir not in _TOKENIZERS:
        _TOKENIZERS.clear()
        _TOKENIZERS[tokenizer_dir] = load_tokenizer(Path(tokenizer_dir))
    tok = _TOKENIZERS[tokenizer_dir]
    eos = eos_id(Path(tokenizer_dir))
    dtype = token_dtype(tok.get_vocab_size())
    out = Path(out_dir)
    stats = {k: dict.fromkeys(SPLITS, 0) for k in ("documents", "tokens", "bytes")}
    files = {sp: open(out / f".part-{index:05d}.{sp}.bin", "wb") for sp in SPLITS}  # noqa: SIM115
    writer = pq.ParquetWriter(out / f".part-{index:05d}.index.parquet", INDEX_SCHEMA)
    try:
        for batch in iter_batches([Path(path)], columns=["id", "text"], batch_size=batch_size):
            ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
            encs = tok.encode_batch(texts, add_special_tokens=False)
            rows = {k: [] for k in INDEX_SCHEMA.names}
            for doc_id, text, enc in zip(ids, texts, encs):
                split = "val" if is_validation(doc_id, validation_fraction) else "train"
                arr = np.asarray(enc.ids + [eos], dtype=dtype)
                files[split].write(arr.tobytes())
                b = len(text.encode("utf-8", "surrogatepass"))
                for k, v in zip(INDEX_SCHEMA.names, (doc_id, split, stats["tokens"][split], len(arr), b)):
                    rows[k].append(v)
                stats["tokens"][split] += len(arr)
                stats["documents"][split] += 1
                stats["bytes"][split] += b
            writer.write_table(pa.table(rows, schema=INDEX_SCHEMA))
    finally:
        writer.close()
        for f in files.values():
            f.close()
    return stats


def tokenize_documents(doc_paths: list[Path], tokenizer_dir: Path, out_dir: Path, validation_fraction: float,
                       batch_size: int = 512, engine: Engine | None = None,
                       expected: dict[str, Expected] | None = None) -> TokenShards:
    """Encode documents (`encode_batch`: Rust, all cores) into train.bin / val.bin and index.parquet.

    Each shard is an engine task writing its own part files; the parts are then joined in shard order (offsets
    shifted), so the result does not depend on how the tasks were scheduled."""
    import shutil

    tok = load_tokenizer(tokenizer_dir)
    dtype = token_dtype(tok.get_vocab_size())
    out_dir = Path(out_dir)
    engine = engine or Engine(EngineConfig())
    tasks = [(i, str(p), str(tokenizer_dir), str(out_dir), validation_fraction, batch_size)
             for i, p in enumerate(doc_paths)]
    parts = engine.map(_tokenize_shard, tasks, [str(p) for p in doc_paths], "tokenization",
                       [[(str(p), (expected or {}).get(str(p)))] for p in doc_paths])
    offsets = dict.fromkeys(SPLITS, 0)
    with pq.ParquetWriter(out_dir / "index.parquet", INDEX_SCHEMA) as writer:
        for i, part in enumerate(parts):
            index = out_dir / f".part-{i:05d}.index.parquet"
            pf = pq.ParquetFile(index)
            for g in range(pf.num_row_groups):
                t = pf.read_row_group(g)
                base = pa.array([offsets[sp] for sp in t.column("split").to_pylist()], pa.int64())
                t = t.set_column(2, "offset", pa.compute.add(t.column("offset"), base))
                writer.write_table(t)
            index.unlink()
            for sp in SPLITS:
                offsets[sp] += part["tokens"][sp]
    for sp in SPLITS:
        with open(out_dir / f"{sp}.bin", "wb") as dst:
            for i in range(len(parts)):
                src = out_dir / f".part-{i:05d}.{sp}.bin"
                with open(src, "rb") as f:
                    shutil.copyfileobj(f, dst, 16 << 20)
                src.unlink()
    total = {k: {sp: sum(p[k][sp] for p in parts) for sp in SPLITS} for k in ("documents", "tokens", "bytes")}
    return TokenShards(total["documents"], total["tokens"], total["bytes"], dtype.name, tok.get_vocab_size())


def open_tokens(folder: Path, split: str, dtype: str) -> np.ndarray:
    """Memory-map one split's flat token array (no copy, any size)."""
    path = Path(folder) / f"{split}.bin"
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
