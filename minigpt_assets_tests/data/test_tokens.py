"""Tokenizer, token shards, exact mixture plans and the packed loader on a small real corpus."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from minigpt_assets.data.documents import ShardWriter, document, iter_documents
from minigpt_assets.data.loader import PackedLoader, PackedTokens
from minigpt_assets.data.mixture import MixtureError, Plan, SourceIndex, allot, plan_split, write_plan
from minigpt_assets.data.tokenizer import eos_id, load_tokenizer, train_tokenizer
from minigpt_assets.data.tokens import is_validation, open_tokens, tokenize_documents
from minigpt_assets.recipes import TokenizerRecipe


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from minigpt_assets.data.builtin_corpora import gen_python_docstrings, gen_synthetic_web

    tmp = tmp_path_factory.mktemp("tok")
    out = {}
    for name, items in (("docs", list(gen_python_docstrings(max_documents=120))),
                        ("web", list(gen_synthetic_web(num_documents=300, seed=2)))):
        w = ShardWriter(tmp / name, max_documents=100)
        for key, text, meta in items:
            w.write(document(f"{name}/{key}", text, name, name, key, meta))
        out[name] = [s.path for s in w.close()]
    tok_dir = tmp / "tokenizer"
    tok_dir.mkdir()
    stats = train_tokenizer(out["docs"] + out["web"], TokenizerRecipe(vocab_size=800, sample_documents=300), tok_dir)
    shards = {}
    for name in ("docs", "web"):
        d = tmp / f"tokens_{name}"
        d.mkdir()
        shards[name] = (d, tokenize_documents(out[name], tok_dir, d, validation_fraction=0.1))
    return tmp, out, tok_dir, stats, shards


def test_tokenizer_is_hf_loadable_and_roundtrips(corpus):
    from transformers import AutoTokenizer

    _, docs, tok_dir, stats, _ = corpus
    assert stats["vocab_size"] == 800 and stats["bytes_per_token"] > 1.5
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    text = next(iter_documents(docs["docs"]))["text"]
    assert hf.decode(hf.encode(text)) == text
    assert hf.eos_token == "<|im_end|>" and hf.bos_token == "<|im_start|>"
    chat = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_token_shards_index_and_split(corpus):
    _, docs, tok_dir, _, shards = corpus
    d, res = shards["web"]
    assert res.dtype == "uint16" and res.documents["train"] + res.documents["val"] == 300
    assert 0 < res.documents["val"] < 60
    idx = pq.read_table(d / "index.parquet").to_pylist()
    assert all((r["split"] == "val") == is_validation(r["id"], 0.1) for r in idx)
    train = open_tokens(d, "train", res.dtype)
    assert len(train) == res.tokens["train"]
    tok, eos = load_tokenizer(tok_dir), eos_id(tok_dir)
    first = next(r for r in idx if r["split"] == "train")
    ids = train[first["offset"]: first["offset"] + first["length"]]
    assert ids[-1] == eos
    text = next(x["text"] for x in iter_documents(docs["web"]) if x["id"] == first["id"])
    assert tok.decode(list(map(int, ids[:-1]))) == text


def _indexes(shards, split):
    return {n: SourceIndex.read(d / "index.parquet", split) for n, (d, _) in shards.items()}


def test_allot_is_exact():
    assert allot({"a": 1, "b": 1, "c": 1}, 100) == {"a": 34, "b": 33, "c": 33}
    b = allot({"x": 0.7, "y": 0.2, "z": 0.1}, 999_999)
    assert sum(b.values()) == 999_999 and abs(b["x"] / 999_999 - 0.7) < 1e-6


def test_plan_realizes_exact_shares_and_repeats(corpus, tmp_path):
    _, _, _, _, shards = corpus
    idx = _indexes(shards, "train")
    total = int((idx["docs"].tokens + idx["web"].tokens) * 1.5)  # forces repetition of the small source
    table, stats = plan_split(idx, {"docs": 0.5, "web": 0.5}, total, seed=3, max_epochs=10, split="train")
    got = {s: int(sum(l for src, l in zip(table.column("source").to_pylist(), table.column("length").to_pylist())
                       if src == s)) for s in ("docs", "web")}
    assert got == allot({"docs": 0.5, "web": 0.5}, total)  # exact to the token
    assert stats["docs"]["epochs"] > 1 and stats["web"]["epochs"] < 2
    again, _ = plan_split(idx, {"docs": 0.5, "web": 0.5}, total, seed=3, max_epochs=10, split="train")
    assert again.equals(table)  # deterministic
    with pytest.raises(MixtureError, match="max_epochs"):
        plan_split(idx, {"docs": 0.99, "web": 0.01}, total * 4, seed=3, max_epochs=2, split="train")


def test_provenance_and_loader(corpus, tmp_path):
    _, docs, tok_dir, _, shards = corpus
    idx = _indexes(shards, "train")
    table, _ = plan_split(idx, {"docs": 0.3, "web": 0.7}, 60_000, seed=1, max_epochs=4, split="train")
    plan = Plan(write_plan(tmp_path, "train", table))
    arrays = {n: open_tokens(d, "train", r.dtype) for n, (d, r) in shards.items()}
    data = PackedTokens(plan, arrays, seq_len=64)
    assert len(data) == 60_000 // 65
    # provenance: the tokens of window 10 come from the documents the plan names, in order
    prov = plan.provenance(10 * 65, 11 * 65)
    toks, doc_ix = data.window_tokens(10)
    assert sum(p["tokens"] for p in prov) == 65 and len(set(doc_ix)) == len(prov)
    p0 = prov[0]
    d_idx = idx[p0["source"]]
    off = d_idx.offsets[d_idx.ids.index(p0["id"])] + p0["doc_token_start"]
    assert np.array_equal(toks[: p0["tokens"]], arrays[p0["source"]][off: off + p0["tokens"]])

    full = PackedLoader(data, batch_size=8, seed=5)
    b = full.batch(0, 3)
    # a training step traces back to its documents
    prov_step = full.provenance(0, 3)
    assert len(prov_step) == 8 and all(sum(p["tokens"] for p in win) == 65 for win in prov_step)
    assert prov_step[0] == plan.provenance(int(b["windows"][0]) * 65, (int(b["windows"][0]) + 1) * 65)
    assert b["input_ids"].shape == (8, 64) and np.array_equal(b["input_ids"][:, 1:], b["labels"][:, :-1])
    assert (b["position_ids"][b["doc_ids"] != np.roll(b["doc_ids"], 1, axis=1)][1:] == 0).all()
    # ranks partition the global batch, whatever the world size
    for world in (2, 4):
        parts = [PackedLoader(data, batch_size=8, seed=5, rank=r, world_size=world).batch(0, 3)["windows"]
                 for r in range(world)]
        assert sorted(np.concatenate(parts)) == sorted(b["windows"])
    # resume: a loader restarted from a state dict continues the exact stream, also on another world size
    it = iter(PackedLoader(data, batch_size=8, seed=5))
    seen = [next(it)["windows"] for _ in range(len(data) // 8 + 3)]  # crosses an epoch boundary
    ref = PackedLoader(data, batch_size=8, seed=5)
    ref_it = iter(ref)
    for _ in range(5):
        next(ref_it)
    state = ref.state_dict()
    resumed = [PackedLoader(data, batch_size=8, seed=5, rank=r, world_size=2) for r in range(2)]
    for r in resumed:
        r.load_state_dict(state)
    its = [iter(r) for r in resumed]
    for k in range(5, len(seen)):
        got = np.concatenate([next(i)["windows"] for i in its])
        assert sorted(got) == sorted(seen[k])
    # data-loader workers split steps without overlap
    w = [iter(PackedLoader(data, batch_size=8, seed=5, worker_id=i, num_workers=2)) for i in range(2)]
    assert np.array_equal(next(w[0])["windows"], seen[0]) and np.array_equal(next(w[1])["windows"], seen[1])
