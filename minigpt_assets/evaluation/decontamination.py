"""N-gram overlap between a mixture's training documents and eval examples (GPT-3's and lm-eval's check).

Text is normalized to lower-case word tokens (`\\w+`); an eval example is contaminated when any of its word
n-grams (13 by default, as GPT-3; an example shorter than n words is compared whole) occurs in a training
document. The eval side is small, so its n-grams sit in one dict; the training side is streamed once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

_TOKEN = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def ngrams(ws: list[str], n: int) -> Iterable[tuple[str, ...]]:
    if len(ws) < n:
        if ws:
            yield tuple(ws)
        return
    for i in range(len(ws) - n + 1):
        yield tuple(ws[i:i + n])


def contaminated_examples(examples: dict[str, dict[str, str]], train_texts: Iterable[str],
                          n: int = 13) -> dict[str, set[str]]:
    """{task: {example ids whose text shares an n-gram with some training text}} for {task: {id: text}}."""
    index: dict[int, set[tuple[str, str]]] = {}
    short: dict[int, set[int]] = {}  # examples shorter than n words: matched as a whole n'-gram
    for task, exs in examples.items():
        for ex_id, text in exs.items():
            ws = words(text)
            for g in ngrams(ws, n):
                index.setdefault(hash(g), set()).add((task, ex_id))
            if 0 < len(ws) < n:
                short.setdefault(len(ws), set()).add(hash(tuple(ws)))
    hit: dict[str, set[str]] = {t: set() for t in examples}
    for text in train_texts:
        ws = words(text)
        keys = {hash(tuple(ws[i:i + n])) for i in range(max(0, len(ws) - n + 1))}
        for k in keys & index.keys():
            for task, ex_id in index[k]:
                hit[task].add(ex_id)
        for m, hashes in short.items():
            found = {hash(tuple(ws[i:i + m])) for i in range(max(0, len(ws) - m + 1))} & hashes
            for k in found:
                for task, ex_id in index.get(k, ()):
                    hit[task].add(ex_id)
    return hit


def training_texts(shards: list[Path], fraction: float) -> Iterable[str]:
    """Texts of the documents a mixture trains on from one source: its deduplicated documents, minus the
    held-out split."""
    from minigpt_assets.data.documents import iter_batches
    from minigpt_assets.data.tokens import is_validation

    for batch in iter_batches(shards, columns=["id", "text"]):
        for i, t in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
            if t and not is_validation(i, fraction):
                yield t
