"""Task formats, tokenization of requests, metrics, held-out task generation and n-gram contamination."""

from __future__ import annotations

import json

import pytest
import torch

from minigpt_assets.evaluation import tasks as T
from minigpt_assets.evaluation.decontamination import contaminated_examples
from minigpt_assets.evaluation.held_out import continuation_rows, next_line_rows


def test_bad_rows_get_one_line_naming_file_row_and_field(tmp_path):
    p = tmp_path / "arc.jsonl"
    p.write_text(json.dumps({"question": "q", "choices": {"text": ["a"], "label": ["A"]}}) + "\n")
    with pytest.raises(ValueError, match=r"arc.jsonl: row 1: missing field 'answerKey' expected by the arc format"):
        T.load_docs("arc", p)
    p.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"arc.jsonl:1: not valid JSON"):
        T.load_docs("arc", p)
    p.write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 5}) + "\n")
    with pytest.raises(ValueError, match=r"row 1: answer index 5 outside 0..1"):
        T.load_docs("piqa", p)


def test_encode_pair_moves_trailing_space_and_cuts_the_whole_encoding():
    enc = {"ab": [1], "ab c": [1, 2], "ab c d": [1, 3]}  # a merge across the seam ("c d") is kept

    def encode(s):
        return enc[s]

    assert T.encode_pair(encode, "ab ", "c") == ([1], [2])
    assert T.encode_pair(encode, "ab", " c d") == ([1], [3])


class Bigram(torch.nn.Module):
    """Logits depend only on the previous token: a[prev, next]."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, ids):
        return self.table[ids]


def test_metrics_acc_norm_and_mutual_info_as_lm_eval_defines_them():
    # vocabulary: characters; the model prefers "x" after anything, and "y" strongly after "q"
    chars = sorted(set("qxy z"))
    idx = {c: i for i, c in enumerate(chars)}
    table = torch.zeros(len(chars), len(chars))
    table[:, idx["x"]] = 2.0
    table[idx["q"], idx["y"]] = 6.0

    def encode(s):
        return [idx[c] for c in s]

    docs = [T.Doc("d0", "zq", ["y", "x"], 0, "y", delimiter="")]
    res = T.evaluate_task(Bigram(table), encode, "choice", docs, max_len=16, prefix_id=idx["z"], mutual_info=True)
    r = res[0]
    assert len(r.lls) == 2 and r.metrics["acc"] == 1.0  # "y" after "zq" beats "x"
    assert r.metrics["acc_norm"] == 1.0 and r.metrics["acc_mutual_info"] == 1.0
    lp = torch.log_softmax(table, -1)
    assert r.lls == pytest.approx([lp[idx["q"], idx["y"]].item(), lp[idx["q"], idx["x"]].item()], abs=1e-5)



def test_held_out_generators_are_deterministic_and_gold_is_the_true_text():
    docs = [(f"d{i}", " ".join(f"w{i}_{j}" for j in range(200))) for i in range(5)]
    rows = continuation_rows(docs, context=10, continuation=3, choices=4, examples=30, seed=1)
    assert rows == continuation_rows(docs, context=10, continuation=3, choices=4, examples=30, seed=1)
    assert len(rows) == 30 and len({r["id"] for r in rows}) == 30
    for r in rows:
        doc = dict(docs)[r["id"].split("#")[0]]
        assert r["context"] + " " + r["choices"][r["gold"]] in doc
        assert len(set(r["choices"])) == 4
    code = [("f", "\n".join(f"    line_number_{j} = compute({j})" for j in range(40)))]
    lines = next_line_rows(code, context=5, choices=4, examples=10)
    for r in lines:
        i = int(r["id"].split("#L")[1])
        assert r["choices"][r["gold"]] == f"    line_number_{i} = compute({i})" and r["delimiter"] == "\n"
        assert r["context"].endswith(f"compute({i - 1})")


def test_contamination_finds_shared_ngrams_only():
    train = ["the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat today"]
    examples = {"t": {"hit": "Yesterday THE quick brown fox jumps over the lazy dog while the cat sleeps!",
                      "miss": "a completely different sentence about rivers and mountains and the sea and sky",
                      "short": "brown fox jumps"}}
    hits = contaminated_examples(examples, train, n=13)
    assert hits == {"t": {"hit", "short"}}
