"""Held-out documents of a source, and multiple-choice tasks generated from them offline.

The held-out split is the one `token_shards` assigns by a hash of the document id alone (`is_validation`), so no
mixture ever trains on it, whatever its tokenizer. The documents are taken in id order up to a document and byte
budget: the same fixed sample for every model, so runs are paired example by example.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from minigpt_assets.data.documents import iter_batches
from minigpt_assets.data.tokens import is_validation

_WORD = re.compile(r"\S+\s*")


def held_out_documents(shards: list[Path], fraction: float, max_documents: int | None = None,
                       max_bytes: int | None = None) -> list[tuple[str, str]]:
    """(id, text) of the held-out documents of one source's deduplicated shards, sorted by id, within budget."""
    docs = []
    for batch in iter_batches(shards, columns=["id", "text"]):
        for i, t in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
            if t and is_validation(i, fraction):
                docs.append((i, t))
    docs.sort()
    out, total = [], 0
    for i, t in docs:
        if max_documents is not None and len(out) >= max_documents:
            break
        n = len(t.encode("utf-8", "surrogatepass"))
        if max_bytes is not None and out and total + n > max_bytes:
            break
        out.append((i, t))
        total += n
    return out


def continuation_rows(docs: list[tuple[str, str]], context: int, continuation: int, choices: int, examples: int,
                      seed: int = 0) -> list[dict]:
    """Rows of the `choice` format: `context` words of a held-out passage, then its true next `continuation`
    words against the same number of words from other passages. Passages are the disjoint windows of every
    document, `examples` of them drawn at random (a long document gives several)."""
    rnd = random.Random(seed)
    spans = []
    for doc_id, text in docs:
        words = _WORD.findall(text)
        step = context + continuation
        for k, start in enumerate(range(0, len(words) - step + 1, step)):
            ctx = "".join(words[start:start + context]).rstrip()
            cont = " ".join(w.strip() for w in words[start + context:start + step])
            spans.append((f"{doc_id}#{k}", ctx, cont))
    picked = sorted(rnd.sample(range(len(spans)), min(examples, len(spans))))
    conts = sorted({s[2] for s in spans})
    rows = []
    for k in picked:
        span_id, ctx, cont = spans[k]
        others = [c for c in conts if c != cont]
        if len(others) < choices - 1:
            continue
        opts = rnd.sample(others, choices - 1) + [cont]
        rnd.shuffle(opts)
        rows.append({"id": span_id, "context": ctx, "choices": opts, "gold": opts.index(cont)})
    return rows


def next_line_rows(docs: list[tuple[str, str]], context: int, choices: int, examples: int, seed: int = 0,
                   min_chars: int = 12) -> list[dict]:
    """Rows of the `choice` format for code: the `context` lines before a line of a held-out file, then that
    line (indentation kept, after a newline) against other distinct lines of the same file. `examples` lines
    are drawn at random over all files."""
    rnd = random.Random(seed)
    cands, files = [], []
    for doc_id, text in docs:
        lines = text.split("\n")
        pool = sorted({ln for ln in lines if len(ln.strip()) >= min_chars})
        files.append((doc_id, lines, pool))
        cands += [(len(files) - 1, i) for i in range(context, len(lines)) if len(lines[i].strip()) >= min_chars]
    rows = []
    for f, i in sorted(rnd.sample(cands, min(examples, len(cands)))):
        doc_id, lines, pool = files[f]
        true = lines[i]
        others = [ln for ln in pool if ln != true]
        if len(others) < choices - 1:
            continue
        opts = rnd.sample(others, choices - 1) + [true]
        rnd.shuffle(opts)
        rows.append({"id": f"{doc_id}#L{i}", "context": "\n".join(lines[i - context:i]), "choices": opts,
                     "gold": opts.index(true), "delimiter": "\n"})
    return rows
