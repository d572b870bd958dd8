"""Mixture planning: exact per-source token budgets, realized as an ordered list of document segments.

Weights are shares of *tokens*. Each source's budget is allotted by largest remainder so budgets sum exactly to
the total; a source is read in a seeded permutation of its documents, repeated (a fresh permutation per epoch)
up to `max_epochs`, and its last document is cut to fit. Segments of all sources are then interleaved in a
seeded order. The plan is the provenance: any token position maps back to (source, document id, offset).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

PLAN_SCHEMA = pa.schema([("source", pa.string()), ("id", pa.string()), ("start", pa.int64()),
                         ("length", pa.int64()), ("doc_offset", pa.int64())])


class MixtureError(ValueError):
    """A mixture that cannot be realized (e.g. a source too small for its share); one line for the user."""


@dataclass
class SourceIndex:
    """One source's documents of one split: ids, token offsets into its .bin, lengths."""

    ids: list[str]
    offsets: np.ndarray
    lengths: np.ndarray

    @classmethod
    def read(cls, index_path: Path, split: str) -> "SourceIndex":
        t = pq.read_table(index_path, columns=["id", "split", "offset", "length"], filters=[("split", "=", split)])
        return cls(t.column("id").to_pylist(), t.column("offset").to_numpy().astype(np.int64),
                   t.column("length").to_numpy().astype(np.int64))

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())


def allot(weights: dict[str, float], total: int) -> dict[str, int]:
    """Integer budgets proportional to weights that sum exactly to total (largest remainder)."""
    names = sorted(weights)
    w = np.array([weights[n] for n in names], dtype=np.float64)
    raw = w / w.sum() * total
    base = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - base), kind="stable")[: total - int(base.sum())]:
        base[i] += 1
    return dict(zip(names, (int(x) for x in base)))


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(xxhash.xxh64_intdigest(repr((seed, *parts)).encode()))


def plan_split(indexes: dict[str, SourceIndex], weights: dict[str, float], total: int, seed: int,
               max_epochs: float, split: str) -> tuple[pa.Table, dict[str, dict]]:
    """The segments realizing `total` tokens with the given shares, and per-source stats."""
    budgets = allot(weights, total)
    segments: list[pa.Table] = []
    stats: dict[str, dict] = {}
    for name in sorted(budgets):
        idx, need = indexes[name], budgets[name]
        available = idx.tokens
        if need and available == 0:
            raise MixtureError(f"source {name!r} has no {split} tokens but its share needs {need}")
        epochs = need / available if available else 0.0
        if epochs > max_epochs:
            raise MixtureError(f"source {name!r} has {available} {split} tokens; its share needs {need} "
                               f"({epochs:.2f} epochs > max_epochs {max_epochs:g}): lower its weight or the total, "
                               f"or raise max_epochs")
        ids, starts, lengths, doc_off = [], [], [], []
        left, epoch, used_docs = need, 0, set()
        while left > 0:
            order = _rng(seed, split, name, epoch).permutation(len(idx.ids))
            csum = np.cumsum(idx.lengths[order])
            k = int(np.searchsorted(csum, left, side="left"))  # docs order[:k+1] cover `left`
            take = order[: k + 1]
            lens = idx.lengths[take].copy()
            if csum[min(k, len(csum) - 1)] > left:  # cut the last document to fit exactly
                lens[-1] -= int(csum[k] - left)
            ids += [idx.ids[i] for i in take]
            starts.append(idx.offsets[take])
            lengths.append(lens)
            doc_off.append(np.zeros(len(take), dtype=np.int64))
            used_docs.update(int(i) for i in take)
            left -= int(lens.sum())
            epoch += 1
        if ids:
            segments.append(pa.table({"source": [name] * len(ids), "id": ids, "start": np.concatenate(starts),
                                      "length": np.concatenate(lengths), "doc_offset": np.concatenate(doc_off)},
                                     schema=PLAN_SCHEMA))
        stats[name] = {"documents": len(used_docs), "tokens": need, "epochs": epochs, "available": available}
    table = pa.concat_tables(segments) if segments else PLAN_SCHEMA.empty_table()
    order = _rng(seed, split, "interleave").permutation(table.num_rows)
    return table.take(pa.array(order)), stats


def write_plan(out_dir: Path, split: str, table: pa.Table) -> Path:
    path = Path(out_dir) / f"plan_{split}.parquet"
    pq.write_table(table, path)
    return path


class Plan:
    """A mixture plan loaded for lookups: token position -> (source, document id, offset in document)."""

    def __init__(self, path: Path):
        t = pq.read_table(path)
        self.sources = t.column("source").to_pylist()
        self.ids = t.column("id").to_pylist()
        self.start = t.column("start").to_numpy()
        self.length = t.column("length").to_numpy()
        self.doc_offset = t.column("doc_offset").to_numpy()
        self.ends = np.cumsum(self.length)
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def provenance(self, start: int, end: int) -> list[dict]:
        """The documents whose tokens fill positions [start, end) of the mixture's token stream."""
        out = []
        i = int(np.searchsorted(self.ends, start, side="right"))
        pos = start
        while pos < end and i < len(self.ends):
            seg_start = int(self.ends[i] - self.length[i])
            a, b = pos - seg_start, min(end, int(self.ends[i])) - seg_start
            out.append({"source": self.sources[i], "id": self.ids[i], "doc_token_start": int(self.doc_offset[i]) + a,
                        "tokens": b - a})
            pos = seg_start + b
            i += 1
        return out


@dataclass
class MixtureSource:
    token_dir: Path  # a token_shards artifact: index.parquet, train.bin, val.bin
    dtype: str
    optional: bool = False


def build_mixture(name: str, recipe, sources: dict[str, MixtureSource], out_dir: Path
                  ) -> tuple[list[dict], list[str]]:
    """Plan both splits of a mixture recipe into out_dir; returns (mixture_stats rows, warnings).

    An optional source with no tokens (its corpus is absent on this machine) is dropped and the other weights
    renormalized, with a warning; any other shortfall is a MixtureError.
    """
    import json

    out_dir = Path(out_dir)
    weights, warnings = {}, []
    indexes = {sp: {} for sp in ("train", "val")}
    for src, w in recipe.sources.items():
        ms = sources[src]
        for sp in indexes:
            indexes[sp][src] = SourceIndex.read(ms.token_dir / "index.parquet", sp)
        if ms.optional and indexes["train"][src].tokens == 0:
            warnings.append(f"optional source {src!r} has no tokens on this machine: dropped, weights renormalized")
            continue
        weights[src] = w
    if not weights:
        raise MixtureError(f"mixture {name!r}: none of its sources has tokens")
    total_w = sum(weights.values())
    rows = []
    for split, total in (("train", recipe.total_tokens), ("val", recipe.validation_tokens)):
        if total == 0:
            continue
        table, stats = plan_split({s: indexes[split][s] for s in weights}, weights, total, recipe.seed,
                                  recipe.max_epochs, split)
        write_plan(out_dir, split, table)
        realized = {s: 0 for s in weights}
        for s, n in zip(table.column("source").to_pylist(), table.column("length").to_pylist()):
            realized[s] += n
        for s in sorted(weights):
            rows.append({"mixture": name, "split": split, "source": s, "documents": stats[s]["documents"],
                         "tokens": realized[s], "target_share": weights[s] / total_w,
                         "actual_share": realized[s] / total, "epochs": stats[s]["epochs"]})
    (out_dir / "mixture.json").write_text(json.dumps({
        "mixture": name, "seq_len": recipe.seq_len, "seed": recipe.seed, "weights": weights,
        "sources": {s: {"path": str(sources[s].token_dir), "dtype": sources[s].dtype} for s in weights}},
        indent=1, sort_keys=True))
    plot_composition(rows, out_dir / "composition.png", name)
    return rows, warnings


TOKENS_ASSET, MIXTURE_ASSET = "token_shards", "mixture"


def token_key(tokenizer: str, source: str) -> str:
    """The token_shards partition of one (tokenizer, source) pair; '.' never occurs in recipe names."""
    return f"{tokenizer}.{source}"


def publish_mixture(store, cat, name: str, recipe=None) -> tuple:
    """Plan a mixture from its recipe (or the `recipe` given: a sweep's point or searched mixture, whose weights
    come from an upstream artifact) over the published token shards, and publish it as `mixture/<name>`.
    Returns (artifact, mixture_stats rows, warnings)."""
    recipe = recipe or cat.mixtures[name]
    sources = {}
    for src in recipe.sources:
        art = store.require(TOKENS_ASSET, token_key(recipe.tokenizer, src))
        sources[src] = MixtureSource(art.path, art.manifest["meta"]["dtype"], cat.sources[src].optional)
    with store.stage(MIXTURE_ASSET, name) as st:
        rows, warnings = build_mixture(name, recipe, sources, st.path)
        train = [r for r in rows if r["split"] == "train"]
        art = st.publish(counts={"train_tokens": sum(r["tokens"] for r in train),
                                 "val_tokens": sum(r["tokens"] for r in rows if r["split"] == "val"),
                                 "sources": len(train)},
                         meta={"recipe_hash": cat.mixture_hash(name), "warnings": warnings,
                               "tokenizer": recipe.tokenizer})
    return art, rows, warnings


def plot_composition(rows: list[dict], path: Path, title: str) -> None:
    """Stacked bars: target vs realized token shares per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({r["split"] for r in rows}, reverse=True)
    sources = sorted({r["source"] for r in rows})
    bars = [(sp, kind) for sp in splits for kind in ("target_share", "actual_share")]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    left = np.zeros(len(bars))
    for s in sources:
        vals = np.array([next((r[k] for r in rows if r["split"] == sp and r["source"] == s), 0.0) for sp, k in bars])
        ax.barh(range(len(bars)), vals, left=left, label=s)
        left += vals
    ax.set_yticks(range(len(bars)), [f"{sp} {k.split('_')[0]}" for sp, k in bars])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of tokens")
    ax.set_title(f"mixture {title}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(4, len(sources)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
