"""The training loop: schedules, learning, non-finite steps, checkpoints, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minigpt_assets.data.loader import ArrayTokens
from minigpt_assets.models import from_pretrained, make_config
from minigpt_assets.training import checkpoint as ckpt
from minigpt_assets.training.config import OptimConfig, StageConfig
from minigpt_assets.training.trainer import Trainer, TrainingError, lr_multiplier

EOS = 0
MODEL = {"family": "llama", "vocab_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
         "num_kv_heads": 2, "max_seq_len": 64}


def counting_corpus(n_tokens: int = 40_000, seed: int = 0) -> np.ndarray:
    """Documents that count upward mod 63 from a random start (ids 1..63), each ended by EOS=0."""
    rng = np.random.default_rng(seed)
    out = []
    total = 0
    while total < n_tokens:
        n, start = int(rng.integers(5, 40)), int(rng.integers(0, 63))
        doc = [(start + i) % 63 + 1 for i in range(n)] + [EOS]
        out.extend(doc)
        total += len(doc)
    return np.asarray(out[:n_tokens], dtype=np.uint16)


def stage(**kw) -> StageConfig:
    base = {"max_steps": 12, "batch_size": 8, "micro_batch_size": 4, "checkpoint_every": 4, "keep_last": 2,
            "optim": {"lr": 3e-3, "warmup_steps": 2}}
    base.update(kw)
    return StageConfig.model_validate(base)


def test_lr_schedules():
    o = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, 100, o) == pytest.approx(0.1) and lr_multiplier(9, 100, o) == 1.0
    assert lr_multiplier(100, 100, o) == pytest.approx(0.1)
    assert lr_multiplier(55, 100, o) == pytest.approx(0.55)
    w = OptimConfig(lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_multiplier(50, 100, w) == 1.0 and lr_multiplier(79, 100, w) == 1.0
    assert lr_multiplier(90, 100, w) == pytest.approx(0.5) and lr_multiplier(100, 100, w) == 0.0


def test_loss_falls_and_checkpoint_loads(tmp_path):
    data = ArrayTokens(counting_corpus(), 32, EOS)
    val = ArrayTokens(counting_corpus(4000, seed=1), 32, EOS)
    tr = Trainer(make_config(MODEL), stage(max_steps=60, checkpoint_every=30, eval_every=30,
                                          optim={"lr": 1e-2, "warmup_steps": 5}), data, tmp_path,
                 val=val, device="cpu")
    res = tr.fit()
    losses = [r["loss"] for r in res.metrics]
    assert losses[0] > 3.5 and res.final_loss < 1.5 and res.val_loss < 1.5
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path / "checkpoints")] == ["step-00000030", "step-00000060"]
    model = from_pretrained(res.checkpoint)  # a checkpoint is a model folder too
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    assert model(ids)[0, -1].argmax().item() == 11
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 61))
    assert all(r["lr"] > 0 and r["tokens_per_s"] > 0 for r in rows if "loss" in r)


def test_nonfinite_step_is_skipped_then_too_many_stop_the_run(tmp_path, monkeypatch):
    data = ArrayTokens(counting_corpus(), 32, EOS)
    tr = Trainer(make_config(MODEL), stage(max_steps=12, max_bad_steps=3), data, tmp_path, device="cpu")
    real = tr.objective.loss
    calls = {"n": 0}

    def flaky(batch, lo, hi):
        calls["n"] += 1
        loss, stats = real(batch, lo, hi)
        return (loss * float("nan") if calls["n"] in (11, 12) else loss), stats  # both micro-batches of step 6

    monkeypatch.setattr(tr.objective, "loss", flaky)
    before = {}

    def snapshot(where, step):
        if where == "step" and step == 5:
            before.update({k: v.clone() for k, v in tr.model.state_dict().items()})
        if where == "step" and step == 6:
            assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())

    tr.hook = snapshot
    res = tr.fit()
    assert res.bad_steps == 1 and res.steps == 12 and np.isfinite(res.final_loss)
    assert [r["skipped"] for r in res.metrics].count(True) == 1

    tr2 = Trainer(make_config(MODEL), stage(max_steps=20, max_bad_steps=3), data, tmp_path / "b", device="cpu")
    real2 = tr2.objective.loss

    def blown(b, lo, hi):
        loss, stats = real2(b, lo, hi)
        return loss * (float("inf") if tr2.step >= 9 else 1), stats

    monkeypatch.setattr(tr2.objective, "loss", blown)
    with pytest.raises(TrainingError, match=r"3 non-finite losses in a row at step 12.*step-00000008"):
        tr2.fit()
    assert ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-00000008"


def _spec(tmp_path: Path, run_dir: Path, model: dict | None = None, **stage_kw) -> Path:
    np.save(tmp_path / "tokens.npy", counting_corpus())
    spec = {"model": model or MODEL, "stage": stage(**stage_kw).model_dump(mode="json"), "run_dir": str(run_dir),
            "data": {"kind": "array", "path": str(tmp_path / "tokens.npy"), "seq_len": 32, "eos": EOS},
            "device": "cpu"}
    path = run_dir.with_suffix(".json")
    path.write_text(json.dumps(spec))
    return path


def _run(spec: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {"MINIGPT_KILL_AT": kill_at} if kill_at else {}
    import os

    return subprocess.run([sys.executable, "-m", "minigpt_assets.training.run", str(spec)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=300)


def _result(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1][len("RESULT "):])


@pytest.mark.parametrize("kill_at, resumed_from", [("step:7", 4), ("checkpoint:before_rename:8", 4),
                                                   ("checkpoint:weights:12", 8)])
def test_resume_after_sigkill_is_bit_identical(tmp_path, kill_at, resumed_from):
    ref = _result(_run(_spec(tmp_path, tmp_path / "ref")))
    assert len(ref["losses"]) == 12
    run_dir = tmp_path / "killed"
    spec = _spec(tmp_path, run_dir)
    killed = _run(spec, kill_at)
    assert killed.returncode == -9
    partial = list((run_dir / "checkpoints").glob("*.partial"))
    assert bool(partial) == kill_at.startswith("checkpoint")
    res = _result(_run(spec))
    assert res["resumed_from"] == resumed_from
    assert res["losses"] == ref["losses"][resumed_from:]  # the same floats, step for step
    assert not list((run_dir / "checkpoints").glob("*.partial"))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["loss"] for r in rows] == ref["losses"]


@pytest.mark.parametrize("stage, kind, row", [("sft", "chat", {"msgs": 1}),
                                               ("dpo", "preferences", {"messages": [], "chosen": "a"}),
                                               ("reward", "preferences", {"messages": [], "rejected": "b"}),
                                               ("ppo", "tasks", {"messages": [{"role": "user", "content": "1+1"}]})])
def test_bad_chat_file_is_one_line(tmp_path, capsys, stage, kind, row):
    from minigpt_assets.training.run import main

    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b",
                                "answer": "2"})
                    + "\n" + json.dumps(row) + "\n")
    chat = {"kind": "jsonl", "location": str(data)}
    extra = {"ppo": {"reward": "number_match"}} if stage == "ppo" else {}  # a rule reward needs each row's answer
    spec = {"model": MODEL, "stage": {"kind": stage, "chat": chat, **extra},
            "run_dir": str(tmp_path / "run"), "data": {"kind": kind, "chat": chat, "tokenizer": str(tmp_path),
                                                       "seq_len": 32, "max_prompt_len": 16}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main([str(tmp_path / "spec.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"training: {data}:2: expected")
