"""`minigpt bench eval` on tiny models: it prints its table, and on the CPU in fp32 our scorer and lm-eval's HFLM
give the same log-likelihoods and decisions on its real-sentence rows (a Llama and a Qwen2 export)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from minigpt_assets.cli import main  # noqa: E402
from minigpt_assets_tests.conftest import write  # noqa: E402

TINY = "vocab_size: 512\nhidden_size: 64\nnum_layers: 2\nnum_heads: 4\nnum_kv_heads: 2\nmax_seq_len: 256\n"


def test_bench_eval_matches_lm_eval_and_prints_a_table(tmp_path, capsys):
    write(tmp_path / "recipes/models/tiny-llama.yaml", "family: llama\n" + TINY)
    write(tmp_path / "recipes/models/tiny-qwen2.yaml", "family: qwen2\n" + TINY)
    out = tmp_path / "rows.json"
    assert main(["--recipes", str(tmp_path / "recipes"), "bench", "eval", "--models", "tiny-llama,tiny-qwen2",
                 "--device", "cpu", "--examples", "6", "--tasks", "hellaswag,mmlu,lambada_openai",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vs_lm_eval" in text and "tiny-qwen2" in text
    rows = json.loads(out.read_text())
    assert {(r["model"], r["impl"]) for r in rows} == {(m, i) for m in ("tiny-llama", "tiny-qwen2")
                                                        for i in ("ours", "lm-eval")}
    ours = [r for r in rows if r["impl"] == "ours"]
    assert len(ours) == 2 * 4  # three tasks and the total, per model
    for r in ours:
        assert r["max_abs_dll"] < 1e-4 and r["same_decisions"] == 1.0, r
        assert r["seconds"] > 0 and r["vs_lm_eval"] > 0
    assert main(["--recipes", str(tmp_path / "recipes"), "bench", "eval", "--tasks", "nope"]) == 1
    assert "unknown task(s) nope" in capsys.readouterr().err
