"""`minigpt bench data`: docs/s and MB/s per data stage, next to the hand-written datasketch baseline, in one run."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from minigpt_assets.data.builtin_corpora import gen_synthetic_web
from minigpt_assets.data.dedup import baseline_datasketch, build_index, removed_ids
from minigpt_assets.data.documents import make_doc_id
from minigpt_assets.data.filters import filter_shards
from minigpt_assets.data.minhash import shingles
from minigpt_assets.data.sources import ingest_source
from minigpt_assets.recipes import DedupRecipe, FilterProfile, _SourceFile
from minigpt_assets.settings import Settings

WEB_PROFILE = {"length": {"min_chars": 300}, "gopher_quality": {}, "gopher_repetition": {}, "c4": {},
               "language": {"languages": ["en"]}}


def _baseline_batch(texts: list[str], recipe: DedupRecipe) -> set[int]:
    """A stronger hand-written baseline: datasketch's vectorized update_batch per document, same LSH loop."""
    lsh = MinHashLSH(threshold=recipe.threshold, num_perm=recipe.num_perm)
    removed = set()
    for i, t in enumerate(texts):
        m = MinHash(num_perm=recipe.num_perm, seed=recipe.seed)
        m.update_batch(shingles(t, recipe.shingle_size))
        if lsh.query(m):
            removed.add(i)
        else:
            lsh.insert(str(i), m)
    return removed


def _recall(items: list, removed_keys: set[str]) -> str:
    """Share of planted duplicate pairs (copy, original) of which at least one page was removed."""
    pairs = [(k, m["copy_of"]) for k, _, m in items if "copy_of" in m]
    found = sum(1 for a, b in pairs if a in removed_keys or b in removed_keys)
    return f"planted pairs found {found}/{len(pairs)}"


def _row(stage: str, variant: str, docs: int, mb: float, seconds: float, result: str, base: float | None = None):
    return {"stage": stage, "variant": variant, "docs": docs, "seconds": seconds, "docs/s": docs / seconds,
            "MB/s": mb / seconds, "result": result,
            "speedup": f"{base / seconds:.1f}x" if base else ""}


def _bench_tokens(texts: list[str], shards: list[Path], mb: float, tmp: Path) -> list[dict]:
    """Tokenization next to raw `tokenizers.encode_batch` on the same texts, and the packed loader's tokens/s."""
    from minigpt_assets.data.loader import PackedLoader, PackedTokens
    from minigpt_assets.data.mixture import Plan, SourceIndex, plan_split, write_plan
    from minigpt_assets.data.tokenizer import load_tokenizer, train_tokenizer
    from minigpt_assets.data.tokens import open_tokens, tokenize_documents
    from minigpt_assets.recipes import TokenizerRecipe

    rows = []
    tok_dir = tmp / "tok"
    tok_dir.mkdir()
    t0 = time.perf_counter()
    train_tokenizer(shards, TokenizerRecipe(vocab_size=6400, sample_documents=3000), tok_dir)
    rows.append(_row("tokenizer", "train BPE 6400 on 3000 docs", 3000, 0.0, time.perf_counter() - t0, ""))
    tok = load_tokenizer(tok_dir)
    t0 = time.perf_counter()
    n_raw = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    raw = time.perf_counter() - t0
    rows.append(_row("tokenize", "baseline: raw tokenizers encode_batch (all texts, in memory)", len(texts), mb, raw,
                     f"{n_raw / raw:,.0f} tokens/s"))
    out = tmp / "tokens"
    out.mkdir()
    t0 = time.perf_counter()
    res = tokenize_documents(shards, tok_dir, out, validation_fraction=0.02)
    dt = time.perf_counter() - t0
    n = sum(res.tokens.values())
    rows.append(_row("tokenize", "ours: shards -> train/val .bin + index (streaming)", len(texts), mb, dt,
                     f"{n / dt:,.0f} tokens/s", raw))
    idx = SourceIndex.read(out / "index.parquet", "train")
    table, _ = plan_split({"web": idx}, {"web": 1.0}, idx.tokens, seed=0, max_epochs=1, split="train")
    data = PackedTokens(Plan(write_plan(tmp, "train", table)), {"web": open_tokens(out, "train", res.dtype)}, 512)
    loader = PackedLoader(data, batch_size=16, seed=0)
    steps = min(200, loader.steps_per_epoch)
    t0 = time.perf_counter()
    for step in range(steps):
        loader.batch(0, step)
    dt = time.perf_counter() - t0
    toks = steps * 16 * 512
    rows.append(_row("loader", "packed 512+1 windows, batch 16, 1 process", steps * 16, toks * 2 / 1e6, dt,
                     f"{toks / dt:,.0f} tokens/s"))
    return rows


def run_data_bench(settings: Settings, docs: int = 6000) -> int:
    from minigpt_assets.tables import format_table

    workers = settings.workers
    items = list(gen_synthetic_web(num_documents=docs, seed=1))
    texts = [t for _, t, _ in items]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        import zstandard

        raw = tmp / "web.jsonl.zst"
        with zstandard.open(raw, "wt") as f:
            for key, text, meta in items:
                f.write(json.dumps({"id": key, "text": text, **meta}) + "\n")
        recipe = _SourceFile.model_validate({"source": {
            "kind": "jsonl", "location": str(raw), "id_field": "id", "domain": "web", "shard_documents": 1000}}).source
        t0 = time.perf_counter()
        res = ingest_source("web", recipe, tmp / "ingest")
        rows.append(_row("ingest", "jsonl.zst -> parquet shards", res.documents, mb, time.perf_counter() - t0,
                         f"{len(res.shards)} shards"))
        shards = [s.path for s in res.shards]

        profile = FilterProfile.model_validate(WEB_PROFILE)
        for w in sorted({1, workers}):
            t0 = time.perf_counter()
            fr = filter_shards(shards, tmp / f"filter{w}", profile, None, workers=w, shard_documents=1000)
            rows.append(_row("filter", f"Gopher+C4+langid, {w} worker(s)", fr.input_documents, mb,
                             time.perf_counter() - t0, f"{fr.input_documents - fr.documents} removed"))

        dr = DedupRecipe()
        t0 = time.perf_counter()
        base_removed = baseline_datasketch(texts, dr)
        base = time.perf_counter() - t0
        keys = [k for k, _, _ in items]
        rows.append(_row("dedup", "baseline: datasketch MinHash.update loop + MinHashLSH", len(texts), mb, base,
                         f"{len(base_removed)} removed; " + _recall(items, {keys[i] for i in base_removed})))
        t0 = time.perf_counter()
        batch_removed = _baseline_batch(texts, dr)
        rows.append(_row("dedup", "baseline: datasketch update_batch loop + MinHashLSH", len(texts), mb,
                         time.perf_counter() - t0, f"{len(batch_removed)} removed", base))
        members = {"web": (0, shards)}
        for w in sorted({1, workers}):
            t0 = time.perf_counter()
            idx = build_index(members, dr, tmp / f"idx{w}", cache_dir=tmp / f"cache{w}", workers=w)
            dt = time.perf_counter() - t0
            gone = removed_ids(idx.removed_path, "web")
            by_id = {make_doc_id("web", k): k for k in keys}
            rows.append(_row("dedup", f"ours: sharded signing + DuckDB LSH join, {w} worker(s)", len(texts), mb,
                             dt, f"{len(gone)} removed; " + _recall(items, {by_id[i] for i in gone}), base))
        t0 = time.perf_counter()
        idx = build_index(members, dr, tmp / "idx-warm", cache_dir=tmp / f"cache{workers}", workers=workers)
        rows.append(_row("dedup", "ours: signatures cached (source unchanged)", len(texts), mb,
                         time.perf_counter() - t0, f"{idx.cache_hits} shards from cache", base))
        rows += _bench_tokens(texts, shards, mb, tmp)

    cols = ["stage", "variant", "docs", "seconds", "docs/s", "MB/s", "result", "speedup"]
    print(f"minigpt bench data: {docs} generated web-like documents ({mb:.1f} MB), {workers} worker(s), "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(format_table(cols, [tuple(round(r[c], 2) if isinstance(r[c], float) else r[c] for c in cols)
                              for r in rows]))
    print("speedup: time of the stage's first baseline row / time of this row (same documents, same run); "
          "loader MB/s counts uint16 tokens read")
    return 0
