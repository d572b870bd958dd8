"""Token shards: documents -> flat memory-mappable token arrays (train.bin / val.bin) plus a document index.

Each document is encoded, followed by the end-of-document token, and assigned to train or validation by a hash
of its id alone, so the assignment never changes with sharding, tokenizer or mixture: validation never leaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from minigpt_assets.data.documents import iter_batches
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


def tokenize_documents(doc_paths: list[Path], tokenizer_dir: Path, out_dir: Path, validation_fraction: float,
                       batch_size: int = 512) -> TokenShards:
    """Stream documents through `encode_batch` (Rust, all cores) into train.bin / val.bin and index.parquet."""
    tok = load_tokenizer(tokenizer_dir)
    eos = eos_id(tokenizer_dir)
    dtype = token_dtype(tok.get_vocab_size())
    out_dir = Path(out_dir)
    files = {s: open(out_dir / f"{s}.bin", "wb") for s in SPLITS}
    offsets = dict.fromkeys(SPLITS, 0)
    docs = dict.fromkeys(SPLITS, 0)
    nbytes = dict.fromkeys(SPLITS, 0)
    writer = pq.ParquetWriter(out_dir / "index.parquet", INDEX_SCHEMA)
    try:
        for batch in iter_batches(doc_paths, columns=["id", "text"], batch_size=batch_size):
            ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
            encs = tok.encode_batch(texts, add_special_tokens=False)
            rows = {k: [] for k in INDEX_SCHEMA.names}
            for doc_id, text, enc in zip(ids, texts, encs):
                split = "val" if is_validation(doc_id, validation_fraction) else "train"
                arr = np.asarray(enc.ids + [eos], dtype=dtype)
                files[split].write(arr.tobytes())
                b = len(text.encode("utf-8", "surrogatepass"))
                for k, v in zip(INDEX_SCHEMA.names, (doc_id, split, offsets[split], len(arr), b)):
                    rows[k].append(v)
                offsets[split] += len(arr)
                docs[split] += 1
                nbytes[split] += b
            writer.write_table(pa.table(rows, schema=INDEX_SCHEMA))
    finally:
        writer.close()
        for f in files.values():
            f.close()
    return TokenShards(docs, offsets, nbytes, dtype.name, tok.get_vocab_size())


def open_tokens(folder: Path, split: str, dtype: str) -> np.ndarray:
    """Memory-map one split's flat token array (no copy, any size)."""
    path = Path(folder) / f"{split}.bin"
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
