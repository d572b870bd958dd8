"""Document filters (length, code, Gopher, C4, language ID, fastText quality) applied to document shards.

A document is dropped by the first rule it fails, cheap rules first (data/filter_rules.py) and model-based rules
last (language, then quality), and every drop is counted per rule. Each input shard is one task of the data
engine (data/engine.py: local processes or Ray), writing its own deterministically named output shards.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from minigpt_assets.data.documents import ShardInfo, ShardWriter, iter_batches
from minigpt_assets.data.engine import Engine, EngineConfig, Expected
from minigpt_assets.data.filter_rules import _Doc, build_rules
from minigpt_assets.recipes import FilterProfile

SAMPLES_PER_RULE = 20  # removed documents kept per rule in removed_sample.parquet
SAMPLE_HEAD_CHARS = 300
LANGID_CHARS = 2000  # language ID reads the start of the document only
READ_BATCH = 1024


class DocumentFilter:
    """All rules of one profile; `reasons()` gives the first failing rule of each document (None: keep)."""

    def __init__(self, profile: FilterProfile | None, classifier_path: Path | None = None):
        self.profile = profile or FilterProfile()
        self.rules = build_rules(self.profile)
        self.language = self.profile.language
        self.quality = self.profile.quality
        self._scorer: Any = None
        if self.quality is not None:
            if classifier_path is None:
                raise ValueError("the filter profile has a quality rule but no classifier model was given")
            from minigpt_assets.data.quality import QualityScorer

            self._scorer = QualityScorer(Path(classifier_path))
        self.rule_names: list[str] = ([n for n, _ in self.rules] + (["language"] if self.language else [])
                                      + (["quality"] if self.quality else []))

    def detect_language(self, text: str) -> tuple[str, float]:
        """(ISO 639-1 code, probability) from py3langid on the start of the text, newlines as spaces."""
        return self.detect_languages([text])[0]

    def detect_languages(self, texts: list[str]) -> list[tuple[str, float]]:
        """`detect_language` of many texts, walked in lockstep (data/langid.py)."""
        from minigpt_assets.data.langid import classify_batch

        return classify_batch([" ".join(t[:LANGID_CHARS].split()) for t in texts])

    def reason(self, text: str) -> str | None:
        return self.reasons([text])[0]

    def reasons(self, texts: list[str], languages: Counter | None = None) -> list[str | None]:
        """The first failing rule per text (None: keep). `languages`, when given, counts the detected language
        of every text that reaches the language rule."""
        out: list[str | None] = []
        rules = self.rules
        for t in texts:
            d = _Doc(t)
            r = None
            for name, ok in rules:
                if not ok(d):
                    r = name
                    break
            out.append(r)
        if self.language is not None:
            keep, min_score = set(self.language.languages), self.language.min_score
            todo = [i for i, r in enumerate(out) if r is None]
            for i, (lang, prob) in zip(todo, self.detect_languages([texts[i] for i in todo])):
                if languages is not None:
                    languages[lang] += 1
                if lang not in keep or prob < min_score:
                    out[i] = "language"
        if self._scorer is not None:
            todo = [i for i, r in enumerate(out) if r is None]
            if todo:
                scores = self._scorer.score([texts[i] for i in todo])
                for i, s in zip(todo, scores):
                    if s < self.quality.min_score:
                        out[i] = "quality"
        return out


@dataclass
class FilterResult:
    shards: list[ShardInfo]
    documents: int
    bytes: int
    input_documents: int
    removed: dict[str, int]  # every rule of the profile -> documents it removed (zeros included)
    # detected language -> documents, over the documents that reach the language rule (empty when it is off)
    language_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _ShardOutcome:
    shards: list[ShardInfo]
    input_documents: int
    removed: dict[str, int]
    languages: dict[str, int]
    samples: list[dict[str, str]]


_FILTERS: dict[str, DocumentFilter] = {}  # a worker's filter per profile, built once (one fastText model each)


def _filter_for(profile: FilterProfile | None, classifier_path: str | None) -> DocumentFilter:
    key = f"{profile.model_dump_json() if profile else ''}|{classifier_path}"
    if key not in _FILTERS:
        _FILTERS.clear()
        _FILTERS[key] = DocumentFilter(profile, Path(classifier_path) if classifier_path else None)
    return _FILTERS[key]


def _filter_shard(profile: FilterProfile | None, classifier_path: str | None, index: int, path: str, out_dir: str,
                  shard_documents: int) -> _ShardOutcome:
    """Filter one input shard into `shard-<index>-*.parquet`; counts, languages and removed samples."""
    filt = _filter_for(profile, classifier_path)
    writer = ShardWriter(Path(out_dir), prefix=f"shard-{index:05d}", max_documents=shard_documents)
    removed: Counter[str] = Counter()
    langs: Counter[str] = Counter()
    samples: list[dict[str, str]] = []
    n_in = 0
    for batch in iter_batches([Path(path)], batch_size=READ_BATCH):
        n_in += batch.num_rows
        if not (filt.rules or filt.language or filt.quality):
            writer.write_batch(batch)
            continue
        texts = [t or "" for t in batch.column("text").to_pylist()]
        verdicts = filt.reasons(texts, langs if filt.language else None)
        writer.write_batch(batch.filter(pa.array([r is None for r in verdicts])))
        ids = None
        for i, r in enumerate(verdicts):
            if r is None:
                continue
            removed[r] += 1
            if removed[r] <= SAMPLES_PER_RULE:
                ids = ids if ids is not None else batch.column("id").to_pylist()
                samples.append({"id": ids[i], "rule": r, "text_head": texts[i][:SAMPLE_HEAD_CHARS]})
    return _ShardOutcome(writer.close(), n_in, dict(removed), dict(langs), samples)


SAMPLE_SCHEMA = pa.schema([("id", pa.string()), ("rule", pa.string()), ("text_head", pa.string())])


def filter_shards(in_paths: list[Path], out_dir: Path, profile: FilterProfile | None,
                  classifier_path: Path | None, workers: int = 1, shard_documents: int = 20_000,
                  engine: Engine | None = None, expected: dict[str, Expected] | None = None) -> FilterResult:
    """Filter every input shard into `out_dir/shard-<input index>-<k>.parquet`, one engine task per shard
    (`workers` local processes when no engine is given). `expected`: input path -> size and sha256 to check.

    Output names and contents do not depend on scheduling. Also writes `removed_sample.parquet`: the first
    SAMPLES_PER_RULE removed documents of each rule in input order (id, rule, text_head).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("shard-*.parquet"), out_dir / "removed_sample.parquet"]:
        stale.unlink(missing_ok=True)  # outputs of an earlier run into the same folder
    clf = str(classifier_path) if classifier_path is not None else None
    rule_names = _filter_for(profile, clf).rule_names  # fails early on a bad profile/model, here
    engine = engine or Engine(EngineConfig(workers=workers))
    tasks = [(profile, clf, i, str(p), str(out_dir), shard_documents) for i, p in enumerate(in_paths)]
    reads = [[(str(p), (expected or {}).get(str(p)))] for p in in_paths]
    outcomes = engine.map(_filter_shard, tasks, [str(p) for p in in_paths], "filtering", reads)

    removed: dict[str, int] = {n: 0 for n in rule_names}
    langs: Counter[str] = Counter()
    shards: list[ShardInfo] = []
    samples: list[dict[str, str]] = []
    per_rule: Counter[str] = Counter()
    n_in = 0
    for o in outcomes:
        shards += o.shards
        n_in += o.input_documents
        for r, c in o.removed.items():
            removed[r] = removed.get(r, 0) + c
        langs.update(o.languages)
        for s in o.samples:
            per_rule[s["rule"]] += 1
            if per_rule[s["rule"]] <= SAMPLES_PER_RULE:
                samples.append(s)
    pq.write_table(pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA), out_dir / "removed_sample.parquet")
    return FilterResult(shards, sum(s.documents for s in shards), sum(s.bytes for s in shards), n_in, removed,
                        dict(sorted(langs.items(), key=lambda kv: (-kv[1], kv[0]))))
