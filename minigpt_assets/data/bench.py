"""`minigpt bench data`: docs/s and MB/s per data stage, next to the hand-written datasketch baseline, in one run."""

from __future__ import annotations

import itertools
import json
import platform
import tempfile
import time
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from minigpt_assets.data.builtin_corpora import gen_synthetic_web
from minigpt_assets.data.dedup import apply_removals, baseline_datasketch, build_index, removed_ids
from minigpt_assets.data.documents import make_doc_id
from minigpt_assets.data.filters import filter_shards
from minigpt_assets.data.minhash import shingles
from minigpt_assets.data.ingest import ingest_source
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


def _row(stage: str, variant: str, docs: int, mb: float, seconds: float, result: str, base: float | None = None,
         cores: int = 1):
    return {"stage": stage, "variant": variant, "docs": docs, "seconds": seconds, "docs/s": docs / seconds,
            "MB/s": mb / seconds, "cores": cores, "MB/s/core": mb / seconds / cores, "result": result,
            "speedup": f"{base / seconds:.1f}x" if base else ""}


def _train_tokenizer(shards: list[Path], tmp: Path) -> tuple[Path, dict]:
    from minigpt_assets.data.tokenizer import train_tokenizer
    from minigpt_assets.recipes import TokenizerRecipe

    tok_dir = tmp / "tok"
    tok_dir.mkdir()
    t0 = time.perf_counter()
    train_tokenizer(shards, TokenizerRecipe(vocab_size=6400, sample_documents=3000), tok_dir)
    return tok_dir, _row("tokenizer", "train BPE 6400 on 3000 docs", 3000, 0.0, time.perf_counter() - t0, "")


def _bench_tokens(texts: list[str], shards: list[Path], mb: float, tmp: Path, tok_dir: Path) -> list[dict]:
    """Tokenization next to raw `tokenizers.encode_batch` on the same texts, and the packed loader's tokens/s."""
    from minigpt_assets.data.loader import PackedLoader, PackedTokens
    from minigpt_assets.data.mixture import Plan, SourceIndex, plan_split, write_plan
    from minigpt_assets.data.tokenizer import load_tokenizer
    from minigpt_assets.data.tokens import open_tokens, tokenize_documents

    rows = []
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
    rows.append(_row("tokenize", "ours: shards -> train/val .bin + index, 1 process", len(texts), mb, dt,
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


def _quality_model(items: list, tmp: Path) -> Path:
    """A fastText quality classifier for the chain: clean pages against spam pages of another generated set."""
    from minigpt_assets.data.documents import ShardWriter, document
    from minigpt_assets.data.quality import train_classifier
    from minigpt_assets.recipes import ClassifierRecipe

    sets = {}
    for label, kinds in (("pos", {"clean"}), ("neg", {"spam"})):
        w = ShardWriter(tmp / f"clf-{label}", prefix="shard")
        for key, text, meta in items:
            if meta.get("kind") in kinds:
                w.write(document(f"clf/{key}", text, "clf", "web", "bench"))
        sets[label] = [s.path for s in w.close()]
    train_classifier(sets["pos"], sets["neg"], ClassifierRecipe(positive=("pos",), negative=("neg",)),
                     tmp / "clf")
    return tmp / "clf" / "model.bin"


def _engines(names: list[str], workers: int):
    """(label, engine) per name: the process pool of `workers`, or a local Ray instance of as many CPUs."""
    from minigpt_assets.data.engine import Engine, EngineConfig

    for name in names:
        if name == "local":
            yield f"local, {workers} process(es)", Engine(EngineConfig(workers=workers))
        elif name == "ray":
            import ray

            from minigpt_assets.data.engine import RayEngine

            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            eng = RayEngine(EngineConfig(engine="ray"))
            try:
                yield f"ray, {workers} CPU(s)", eng
            finally:
                ray.shutdown()
        else:
            raise ValueError(f"--engine {name}: expected local or ray")


def run_data_bench(settings: Settings, docs: int = 6000, engines: list[str] | None = None,
                   shard_documents: int = 500, out: Path | None = None) -> int:
    """Every stage on the same generated web text; per engine (`local`, `ray`) the per-shard stages run as that
    engine's tasks with `settings.workers` cores, next to one process, with MB/s per core."""
    from minigpt_assets.data.engine import Engine, EngineConfig
    from minigpt_assets.data.minhash import sign_all
    from minigpt_assets.data.tokens import tokenize_documents
    from minigpt_assets.tables import format_table

    workers = settings.workers
    engines = engines or ["local"]
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
            "kind": "jsonl", "location": str(raw), "id_field": "id", "domain": "web",
            "shard_documents": shard_documents}}).source
        t0 = time.perf_counter()
        res = ingest_source("web", recipe, tmp / "ingest")
        rows.append(_row("ingest", "jsonl.zst -> parquet shards", res.documents, mb, time.perf_counter() - t0,
                         f"{len(res.shards)} shards"))
        shards = [s.path for s in res.shards]
        tok_dir, tok_row = _train_tokenizer(shards, tmp)
        clf = _quality_model(list(gen_synthetic_web(num_documents=3000, seed=7)), tmp)
        profile = FilterProfile.model_validate({**WEB_PROFILE, "quality": {"classifier": "bench", "min_score": 0.5}})
        dr = DedupRecipe()
        runs = [("1 process", Engine(EngineConfig(workers=1)))] if workers > 1 else []
        labels: list[str] = []
        for label, eng in itertools.chain(runs, _engines(engines, workers)):  # lazily: Ray stops after its turn
            cores = eng.parallelism if label != "1 process" else 1
            labels += [] if label == "1 process" else [label]
            t0 = time.perf_counter()
            fr = filter_shards(shards, tmp / f"filter-{label}", profile, clf, shard_documents=shard_documents,
                               engine=eng)
            rows.append(_row("filter", f"Gopher+C4+langid+quality, {label}", fr.input_documents, mb,
                             time.perf_counter() - t0, f"{fr.input_documents - fr.documents} removed", cores=cores))
            t0 = time.perf_counter()
            sign_all([(p, tmp / f"sig-{label}" / f"{i}.parquet") for i, p in enumerate(shards)], dr, eng)
            rows.append(_row("dedup", f"MinHash signing only, {label}", len(texts), mb, time.perf_counter() - t0,
                             f"{len(shards)} shards", cores=cores))
            if label == "1 process":
                continue
            t0 = time.perf_counter()
            idx = build_index({"web": (0, shards)}, dr, tmp / f"idx-{label}", cache_dir=tmp / f"cache-{label}",
                              engine=eng)
            gone = removed_ids(idx.removed_path, "web")
            by_id = {make_doc_id("web", k): k for k, _, _ in items}
            rows.append(_row("dedup", f"ours: signing + bucketed LSH join, {label}", len(texts), mb,
                             time.perf_counter() - t0, f"{len(gone)} removed; "
                             + _recall(items, {by_id[i] for i in gone}), cores=cores))
            t0 = time.perf_counter()
            kept, n_kept, _ = apply_removals(shards, idx.removed_path, "web", tmp / f"dedup-{label}",
                                             shard_documents, engine=eng)
            rows.append(_row("removal", f"drop the removed ids, {label}", len(texts), mb, time.perf_counter() - t0,
                             f"{n_kept} kept", cores=cores))
            (tmp / f"tok-{label}").mkdir()
            t0 = time.perf_counter()
            tr = tokenize_documents([k.path for k in kept], tok_dir, tmp / f"tok-{label}", 0.02, engine=eng)
            dt = time.perf_counter() - t0
            kept_mb = sum(k.bytes for k in kept) / 1e6
            rows.append(_row("tokenize", f"shards -> .bin + index, {label}", n_kept, kept_mb, dt,
                             f"{sum(tr.tokens.values()) / dt:,.0f} tokens/s", cores=cores))
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
        for r in rows:  # the dedup rows' speedup: against the per-shingle loop
            if r["stage"] == "dedup" and r["variant"].startswith("ours"):
                r["speedup"] = f"{base / r['seconds']:.1f}x"
        t0 = time.perf_counter()  # the signatures the first engine's index build cached
        idx = build_index({"web": (0, shards)}, dr, tmp / "idx-warm", cache_dir=tmp / f"cache-{labels[0]}",
                          workers=workers)
        rows.append(_row("dedup", "ours: signatures cached (source unchanged)", len(texts), mb,
                         time.perf_counter() - t0, f"{idx.cache_hits} shards from cache", base))
        rows += [tok_row, *_bench_tokens(texts, shards, mb, tmp, tok_dir)]
        parquet_ratio = sum(p.stat().st_size for p in shards) / (mb * 1e6)

    cols = ["stage", "variant", "docs", "seconds", "docs/s", "MB/s", "cores", "MB/s/core", "result", "speedup"]
    print(f"minigpt bench data: {docs} generated web-like documents ({mb:.1f} MB) in {len(shards)} shards, "
          f"{workers} core(s) per engine ({', '.join(engines)}), {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    print(format_table(cols, [tuple(round(r[c], 2) if isinstance(r[c], float) else r[c] for c in cols)
                              for r in rows]))
    print("MB/s/core: MB/s / the cores the engine ran on; speedup: time of the stage's first baseline row / time "
          "of this row (same documents, same run); loader MB/s counts uint16 tokens read")
    if out is not None:
        rates = _rates(rows, labels[0])["mb_per_s_per_core"]
        out.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d"), "command": f"minigpt bench data --docs "
                                   f"{docs} --engine {','.join(engines)} --workers {workers}",
                                   "engine": labels[0], "mb_per_s_per_core": rates,
                                   "parquet_bytes_per_text_byte": parquet_ratio, "rows": rows}, indent=1) + "\n")
    return 0


def _rates(rows: list[dict], engine: str) -> dict:
    """Per-core MB/s of each stage on `engine` (its label), for `minigpt plan data`. The join's is the index build
    minus its signing, both per text MB."""
    def get(stage: str, prefix: str) -> dict:
        return next(r for r in rows if r["stage"] == stage and r["variant"].startswith(prefix)
                    and r["variant"].endswith(engine))

    sign = get("dedup", "MinHash signing only")
    index = get("dedup", "ours: signing + bucketed LSH join")
    join_s = max(index["seconds"] - sign["seconds"], 1e-9)
    mb = sign["MB/s"] * sign["seconds"]
    return {"mb_per_s_per_core": {
        "ingest": next(r for r in rows if r["stage"] == "ingest")["MB/s/core"],
        "filter": get("filter", "Gopher")["MB/s/core"], "sign": sign["MB/s/core"],
        "join": mb / join_s / index["cores"], "removal": get("removal", "drop")["MB/s/core"],
        "tokenize": get("tokenize", "shards")["MB/s/core"]}}
