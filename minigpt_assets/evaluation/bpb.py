"""Bits per byte of held-out documents, per domain: tokenizer-independent, so models with different tokenizers
compare fairly (Paloma's and lm-evaluation-harness's `bits_per_byte`).

Each document is scored on its own, after one prefix token (the end-of-document token, as a beginning of text),
as lm-evaluation-harness scores rolling log-likelihoods: the sequence `[prefix] + tokens` is cut into disjoint
prediction windows of `max_len` tokens, each given only the token before it (no cross-document context, no
window overlap), so every token is predicted exactly once. BPB = total NLL / (ln 2 x total UTF-8 bytes of the
documents); the per-document values are kept for bootstrap intervals and paired tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch


@dataclass(frozen=True)
class DocScore:
    id: str
    tokens: int     # tokens predicted (the document's, without the end-of-document token)
    bytes: int      # UTF-8 bytes of the document's text
    nll: float      # summed negative log-likelihood in nats

    @property
    def bpb(self) -> float:
        return self.nll / (math.log(2) * self.bytes) if self.bytes else float("nan")


def rolling_windows(n_tokens: int, max_len: int) -> list[tuple[int, int]]:
    """[start, end) slices of `[prefix] + tokens` (length n_tokens + 1): each window is an input of at most
    `max_len` tokens whose next-token labels are the following ones, so the labels cover tokens 1..n exactly
    once."""
    return [(s, min(s + max_len, n_tokens)) for s in range(0, n_tokens, max_len)]


@torch.no_grad()
def score_documents(model: torch.nn.Module, docs: Iterable[tuple[str, np.ndarray, int]], prefix_id: int,
                    max_len: int, batch_size: int = 8, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> list[DocScore]:
    """NLL of each (id, token ids without end-of-document, bytes) document under `model`."""
    model.eval()
    device = torch.device(device)
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (doc index, input ids, labels)
    meta: list[tuple[str, int, int]] = []
    nll: list[float] = []

    def flush() -> None:
        width = max(len(x) for _, x, _ in pending)
        ids = torch.zeros(len(pending), width, dtype=torch.long)
        labels = torch.full((len(pending), width), -100, dtype=torch.long)
        for r, (_, x, y) in enumerate(pending):
            ids[r, :len(x)] = torch.from_numpy(x.astype(np.int64))
            labels[r, :len(y)] = torch.from_numpy(y.astype(np.int64))
        ids, labels = ids.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(ids)
        logp = torch.log_softmax(logits.float(), dim=-1)
        tok = -logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * (labels != -100)
        for (d, _, _), v in zip(pending, tok.sum(-1).double().cpu().tolist()):
            nll[d] += v
        pending.clear()

    for doc_id, tokens, nbytes in docs:
        seq = np.concatenate([[prefix_id], np.asarray(tokens)])
        d = len(meta)
        meta.append((doc_id, len(tokens), int(nbytes)))
        nll.append(0.0)
        for s, e in rolling_windows(len(tokens), max_len):
            pending.append((d, seq[s:e], seq[s + 1:e + 1]))
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return [DocScore(i, n, b, v) for (i, n, b), v in zip(meta, nll)]


def summarize(scores: list[DocScore]) -> dict[str, float]:
    """Corpus-level bits per byte (total NLL over total bytes), token perplexity and counts."""
    nll = sum(s.nll for s in scores)
    nbytes = sum(s.bytes for s in scores)
    ntok = sum(s.tokens for s in scores)
    return {"bits_per_byte": nll / (math.log(2) * nbytes) if nbytes else float("nan"),
            "token_perplexity": math.exp(nll / ntok) if ntok else float("nan"),
            "documents": len(scores), "tokens": ntok, "bytes": nbytes}


def token_shard_documents(folder: Path, split: str = "val", dtype: str = "uint16",
                          limit: int | None = None) -> Iterator[tuple[str, np.ndarray, int]]:
    """(id, tokens without the end-of-document token, bytes) of a `token_shards` artifact's split, in index
    order (the first `limit` documents: a fixed, reproducible sample)."""
    import pyarrow.parquet as pq

    from minigpt_assets.data.tokens import open_tokens

    index = pq.read_table(Path(folder) / "index.parquet", filters=[("split", "=", split)]).to_pylist()
    tokens = open_tokens(Path(folder), split, dtype)
    for row in index[:limit]:
        yield row["id"], np.asarray(tokens[row["offset"]:row["offset"] + row["length"] - 1]), row["bytes"]
