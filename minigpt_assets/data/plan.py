"""`minigpt plan data`: wall time, core-hours, dedup buckets and storage of the data half for a token target on a
cluster, simulated from per-core rates that `minigpt bench data --json` measured.

The model is plain arithmetic, stated so it can be checked: every per-shard stage scales with cores (tasks are
independent; the shards outnumber the cores), so its wall time is its input divided by (per-core rate x cores).
The bytes each stage reads follow from the token target backwards through the yields: the tokens' text is what
dedup keeps, dedup reads what filtering kept, filtering reads the raw text. The yields and bytes per token are
inputs (they belong to the user's data and tokenizer; `minigpt sql` over `filter_stats` and `dedup_stats` gives
them for a sample); the rates are measurements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RATES_FILE = Path(__file__).with_name("rates.json")  # written by `minigpt bench data --json` (see docs/scale.md)
ROW_BYTES = 64  # bytes a band row takes in a bucket's join (data/dedup.py's estimate)


@dataclass(frozen=True)
class Assumptions:
    bytes_per_token: float = 4.0  # UTF-8 bytes of text per token of the tokenizer
    keep_filter: float = 0.5  # share of raw bytes the filter chain keeps
    keep_dedup: float = 0.7  # share of filtered bytes dedup keeps
    doc_bytes: float = 3000.0  # mean bytes of a document
    num_perm: int = 112
    bands: int = 14
    bucket_mb: int = 1024
    token_bytes: int = 4  # 2 for vocabularies up to 65,536, else 4


def load_rates(path: Path | None = None) -> dict:
    return json.loads(Path(path or RATES_FILE).read_text())


def plan(tokens: float, nodes: int, cores: int, rates: dict, a: Assumptions = Assumptions()) -> dict:
    """Per stage: input TB, core-hours, wall hours on nodes x cores, and TB written; plus the dedup buckets."""
    mbps = rates["mb_per_s_per_core"]
    ratio = rates["parquet_bytes_per_text_byte"]
    final = tokens * a.bytes_per_token  # text bytes the tokens come from
    filtered = final / a.keep_dedup
    raw = filtered / a.keep_filter
    docs = filtered / a.doc_bytes
    rows = docs * a.bands
    buckets = max(1, int(-(-rows * ROW_BYTES // (a.bucket_mb * 2**20))))
    sig_bytes = docs * (a.num_perm * 4 + a.bands * 8 + 8 + 24)  # sig + bands + exact hash + id
    stages = [  # (stage, text bytes read, bytes written)
        ("ingest", raw, raw * ratio),
        ("filter", raw, filtered * ratio),
        ("sign", filtered, sig_bytes),
        ("join", filtered, rows * 8 * 3 + docs * (1 - a.keep_dedup) * 64),  # band rows, pairs, removed ids
        ("removal", filtered, final * ratio),
        ("tokenize", final, tokens * a.token_bytes),
    ]
    total_cores = nodes * cores
    out = []
    for stage, read, written in stages:
        core_s = read / 1e6 / mbps[stage]
        out.append({"stage": stage, "reads_TB": read / 1e12, "core_hours": core_s / 3600,
                    "wall_hours": core_s / total_cores / 3600, "writes_TB": written / 1e12,
                    "rate_MB_s_core": mbps[stage]})
    return {"stages": out, "buckets": buckets, "bucket_mb": a.bucket_mb, "band_rows": rows, "documents": docs,
            "raw_TB": raw / 1e12, "wall_hours": sum(s["wall_hours"] for s in out),
            "core_hours": sum(s["core_hours"] for s in out)}


def print_plan(tokens: float, nodes: int, cores: int, rates: dict, a: Assumptions) -> None:
    from minigpt_assets.tables import format_table

    p = plan(tokens, nodes, cores, rates, a)
    print(f"minigpt plan data: {tokens:.3g} tokens on {nodes} node(s) x {cores} core(s); rates measured "
          f"{rates.get('measured', '?')} ({rates.get('command', '')})")
    print(f"assumed: {a.bytes_per_token} bytes/token, filter keeps {a.keep_filter:.0%}, dedup keeps "
          f"{a.keep_dedup:.0%}, {a.doc_bytes:.0f} bytes/document -> {p['raw_TB']:.1f} TB of raw text, "
          f"{p['documents']:.3g} documents after filtering")
    cols = ["stage", "reads TB", "MB/s/core", "core-hours", "wall hours", "writes TB"]
    rows = [(s["stage"], f"{s['reads_TB']:.2f}", f"{s['rate_MB_s_core']:.2f}", f"{s['core_hours']:,.0f}",
             f"{s['wall_hours']:.2f}", f"{s['writes_TB']:.2f}") for s in p["stages"]]
    rows.append(("total", "", "", f"{p['core_hours']:,.0f}", f"{p['wall_hours']:.2f}", ""))
    print(format_table(cols, rows))
    print(f"dedup join: {p['band_rows']:.3g} band rows in {p['buckets']:,} buckets of at most {p['bucket_mb']} MB "
          f"(one task each)")
