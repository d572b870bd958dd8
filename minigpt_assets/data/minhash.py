"""MinHash signatures of documents, bit-identical to
`datasketch.MinHash(num_perm, seed, hashfunc=SHINGLE_HASH)`: normalize, shingle, hash, permute and take the
minimum, vectorized over the documents of a shard. Also LSH band hashes, and the signing of shards as data-engine
tasks, cached by each shard's sha256 so an unchanged shard is never signed again. `dedup.py` joins the
signatures. datasketch (which pulls in scipy) and the recipe models are imported lazily, so signing workers
start fast."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
import unicodedata
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from minigpt_assets.data.documents import iter_batches
from minigpt_assets.data.engine import Engine, Expected

if TYPE_CHECKING:  # not imported at run time: signing workers start without pydantic
    from minigpt_assets.recipes import DedupRecipe

SIGNATURE_VERSION = 1  # bump when normalize/shingles/SHINGLE_HASH/band hashing change: invalidates the cache
_WORD_MULT = 0x01000193  # odd multiplier combining word hashes into a shingle hash (mod 2^32)
_MASK32 = 0xFFFFFFFF
_BLOCK_VALUES = 1 << 20  # uint32 values per (permutations x shingles) block: 4 MB, stays in cache
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


def _sign(shard: str | Path, out: str | Path, num_perm: int, seed: int, k: int,
          perms: tuple[np.ndarray, np.ndarray], bands: int, rows: int) -> int:
    shard, out = Path(shard), Path(out)
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


def signature_key(recipe: DedupRecipe) -> str:
    """Cache folder name: a hash of all a signature file depends on (not the exact/near/verify switches)."""
    bands, rows = lsh_params(recipe.threshold, recipe.num_perm)
    params = {"version": SIGNATURE_VERSION, "scheme": "affine32", "num_perm": recipe.num_perm,
              "seed": recipe.seed, "shingle_size": recipe.shingle_size, "bands": bands, "rows": rows}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def sign_all(todo: list[tuple[Path, Path]], recipe: DedupRecipe, engine: Engine,
             expected: dict[str, Expected] | None = None) -> None:
    """Sign (shard, out) pairs, one engine task each, largest shard first (better balance)."""
    bands, rows = lsh_params(recipe.threshold, recipe.num_perm)
    params = (recipe.num_perm, recipe.seed, recipe.shingle_size, _permutations(recipe.num_perm, recipe.seed),
              bands, rows)
    todo = sorted(todo, key=lambda t: -_size(t[0], expected))
    engine.map(_sign, [(str(s), str(o), *params) for s, o in todo], [str(s) for s, _ in todo], "MinHash signing",
               [[(str(s), (expected or {}).get(str(s)))] for s, _ in todo])


def _size(path: Path, expected: dict[str, Expected] | None) -> int:
    exp = (expected or {}).get(str(path))
    return exp.bytes if exp is not None else os.path.getsize(path)
