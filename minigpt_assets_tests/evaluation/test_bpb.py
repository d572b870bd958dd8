"""Bits per byte: exact on a uniform model, equal to a plain forward pass on short documents, and every token of
a long document predicted exactly once by the rolling windows."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from minigpt_assets.data.tokens import INDEX_SCHEMA
from minigpt_assets.evaluation.bpb import rolling_windows, score_documents, summarize, token_shard_documents
from minigpt_assets.models import build_model, make_config

MODEL = {"family": "llama", "vocab_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
         "num_kv_heads": 2, "max_seq_len": 64}


def _model(seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(make_config(MODEL), device="cpu")
    m.init_weights()
    return m.eval()


def _docs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"d{i}", rng.integers(1, 64, size=n), 3 * n + i) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("n, max_len", [(1, 4), (4, 4), (5, 4), (17, 4), (10, 64)])
def test_rolling_windows_predict_every_token_once(n, max_len):
    wins = rolling_windows(n, max_len)
    labels = [i + 1 for s, e in wins for i in range(s, e)]
    assert labels == list(range(1, n + 1)) and all(e - s <= max_len for s, e in wins)


def test_uniform_model_gives_log2_vocab_bits_per_token():
    m = _model()
    with torch.no_grad():
        m.lm_head.weight.zero_()  # untied in this config: every logit 0
    docs = _docs([5, 40, 130])
    scores = score_documents(m, docs, prefix_id=0, max_len=16, batch_size=3)
    for s, (_, toks, nbytes) in zip(scores, docs):
        assert s.tokens == len(toks) and s.nll == pytest.approx(len(toks) * math.log(64), rel=1e-6)
        assert s.bpb == pytest.approx(len(toks) * math.log2(64) / nbytes, rel=1e-6)
    total = summarize(scores)
    assert total["bits_per_byte"] == pytest.approx(175 * 6 / sum(d[2] for d in docs), rel=1e-6)
    assert total["token_perplexity"] == pytest.approx(64, rel=1e-5)


def test_short_documents_match_one_forward_pass_and_long_ones_their_windows():
    m = _model(1)
    docs = _docs([3, 20, 50])
    got = score_documents(m, docs, prefix_id=0, max_len=64, batch_size=2)
    for s, (_, toks, _) in zip(got, docs):
        seq = torch.tensor([[0, *toks.tolist()]])
        with torch.no_grad():
            logp = torch.log_softmax(m(seq[:, :-1]), -1)[0]
        ref = -logp.gather(-1, seq[0, 1:, None]).sum().item()
        assert s.nll == pytest.approx(ref, rel=1e-5)
    # a long document in windows of 16: the sum over the windows, each seeing only the token before it
    (_, toks, _), = _docs([45], seed=3)
    (long,) = score_documents(m, [("x", toks, 100)], prefix_id=0, max_len=16, batch_size=1)
    seq = [0, *toks.tolist()]
    ref = 0.0
    for s, e in [(0, 16), (16, 32), (32, 45)]:
        with torch.no_grad():
            logp = torch.log_softmax(m(torch.tensor([seq[s:e]])), -1)[0]
        ref -= logp.gather(-1, torch.tensor(seq[s + 1:e + 1])[:, None]).sum().item()
    assert long.nll == pytest.approx(ref, rel=1e-5)
    assert score_documents(m, [("x", toks, 100)], 0, max_len=64)[0].nll != pytest.approx(long.nll, rel=1e-3)


def test_token_shard_documents_reads_the_split_without_end_tokens(tmp_path):
    val = np.array([5, 6, 7, 0, 9, 9, 0], dtype=np.uint16)
    val.tofile(tmp_path / "val.bin")
    np.array([1, 0], dtype=np.uint16).tofile(tmp_path / "train.bin")
    pq.write_table(pa.table({"id": ["t", "a", "b"], "split": ["train", "val", "val"], "offset": [0, 0, 4],
                             "length": [2, 4, 3], "bytes": [1, 11, 7]}, schema=INDEX_SCHEMA),
                   tmp_path / "index.parquet")
    docs = list(token_shard_documents(tmp_path, "val", "uint16"))
    assert [(i, t.tolist(), b) for i, t, b in docs] == [("a", [5, 6, 7], 11), ("b", [9, 9], 7)]
    assert len(list(token_shard_documents(tmp_path, "val", "uint16", limit=1))) == 1
