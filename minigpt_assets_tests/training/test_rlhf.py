"""RLHF's two stages on small models: the reward model (a score head at the last token, Bradley-Terry) and PPO
(a value head, GAE, clipped policy and value losses, KL to the starting policy), each checked against its
definition, shown to learn, and resumed bit for bit after SIGKILL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from minigpt_assets.models import build_model, from_pretrained, make_config
from minigpt_assets.training.objectives import last_token_scores
from minigpt_assets.training.objectives.ppo import response_positions
from minigpt_assets.training.run import open_preferences
from minigpt_assets.training.trainer import Trainer
from minigpt_assets_tests.training.test_stages import _ParityTasks, _saved_model
from minigpt_assets_tests.training.test_trainer import MODEL, _result, _run, stage

CHAT_MODEL = {**MODEL, "vocab_size": 384, "max_seq_len": 128}
PAIRS = {"kind": "builtin", "name": "python_qa", "preference": "repetition", "limit": 240,
         "validation_fraction": 0.2}


def _chat_base(path: Path, seed: int = 0) -> Path:
    return _saved_model(path, seed=seed, vocab_size=CHAT_MODEL["vocab_size"], max_seq_len=CHAT_MODEL["max_seq_len"])


# ---------------------------------------------------------------------------------------------------- reward
def test_the_score_is_read_after_the_last_answer_token():
    torch.manual_seed(0)
    model = build_model(make_config(MODEL), device="cpu")
    model.add_score_head()
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    labels = torch.tensor([[-100, 7, 8, 1, -100, -100], [-100, -100, -100, 13, 14, 2]])
    got = last_token_scores(model, ids, labels)
    # row 0 is the sequence 5 6 7 8 1, row 1 is 9 .. 14 2: the score at each one's last token
    want = [model(torch.tensor([[5, 6, 7, 8, 1]]), heads="score")[0, -1],
            model(torch.tensor([[9, 10, 11, 12, 13, 14, 2]]), heads="score")[0, -1]]
    assert torch.allclose(got, torch.stack(want), atol=1e-6)


def test_reward_model_learns_held_out_preferences_and_loads_with_its_head(tmp_path, chat_tokenizer):
    train, val = open_preferences({"chat": PAIRS, "tokenizer": str(chat_tokenizer), "seq_len": 96})
    st = stage(kind="reward", chat=PAIRS, max_steps=30, batch_size=8, micro_batch_size=8, checkpoint_every=30,
               eval_every=30, eval_batches=6, optim={"lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.0})
    tr = Trainer(make_config(CHAT_MODEL), st, train, tmp_path / "run", val=val, device="cpu",
                 init_weights=_chat_base(tmp_path / "base"))
    res = tr.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert len(val) >= 40 and 0.2 <= first["val_reward_accuracy"] <= 0.8  # held-out pairs: near chance at first
    # 48 held-out pairs: 34 or more right has a chance probability below 0.3 % (a 2-layer, 32-wide model)
    assert last["val_reward_accuracy"] >= 0.7 and last["val_reward_margin"] > first["val_reward_margin"]
    assert abs(res.metrics[0]["loss"] - np.log(2)) < 0.1 and np.mean([r["loss"] for r in res.metrics[-5:]]) < 0.6
    # the checkpoint loads as a reward model and scores a batch as the trainer did
    rm = from_pretrained(res.checkpoint)
    batch = val.make_batch(np.arange(8))
    ids = torch.from_numpy(np.concatenate([batch["chosen_ids"], batch["rejected_ids"]]))
    labels = torch.from_numpy(np.concatenate([batch["chosen_labels"], batch["rejected_labels"]]))
    with torch.no_grad():
        ours = last_token_scores(tr.model.eval(), ids, labels)
        theirs = last_token_scores(rm, ids, labels)
    assert torch.allclose(ours, theirs, atol=1e-5) and (theirs[:8] > theirs[8:]).float().mean() >= 0.75
    # and scores (prompt, answer) rows given as text, as the trainer scored the same pairs
    from minigpt_assets.data.chat import python_qa_preferences
    from minigpt_assets.training.objectives.reward import score_answers
    from minigpt_assets.training.run import split_rows

    rows = split_rows(python_qa_preferences(240, rejected="repetition"), 0.2)[1][:4]
    texts = [{"messages": r["messages"], "answer": r[side]} for side in ("chosen", "rejected") for r in rows]
    got = score_answers(res.checkpoint, texts, tokenizer_dir=chat_tokenizer, max_len=97)  # the pairs' window
    want = torch.cat([theirs[:4], theirs[8:12]]).tolist()
    assert np.allclose(got, want, atol=1e-4), (got, want)


# ---------------------------------------------------------------------------------------------------- PPO
def _ppo_stage(**kw):
    ppo = {"reward": "number_match", "max_new_tokens": 2, "epochs": 2, "beta": 0.0, **kw.pop("ppo", {})}
    base = {"kind": "ppo", "chat": {"kind": "builtin", "name": "arithmetic"}, "batch_size": 8, "micro_batch_size": 4}
    return stage(**{**base, **kw, "ppo": ppo})


def test_response_positions_left_align_each_answer():
    labels = torch.tensor([[-100, -100, 4, 5, -100], [-100, 7, 8, 9, -100], [-100] * 5])
    pos, mask = response_positions(labels)
    assert pos.tolist() == [[2, 3, 3], [1, 2, 3], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1], [0, 0, 0]]


def test_ppo_loss_is_the_clipped_objective_on_a_fixed_batch(tmp_path):
    """The loss of a fixed rollout batch, with the rollout policy's log-probabilities and values moved so that
    ratios and values fall on both sides of the clip range, equals the clipped objective written out token by
    token from the model's own outputs."""
    base = _saved_model(tmp_path / "base")
    st = _ppo_stage(max_steps=1, ppo={"clip": 0.2, "value_clip": 0.3, "vf_coef": 0.5, "max_new_tokens": 3})
    tr = Trainer(make_config(MODEL), st, _ParityTasks(16), tmp_path / "run", device="cpu", init_weights=base)
    batch = tr.objective.rollouts(tr.loader.data, list(range(8)))
    g = torch.Generator().manual_seed(0)
    batch["old_logp"] = batch["old_logp"] + 0.5 * torch.randn(batch["old_logp"].shape, generator=g)
    batch["old_values"] = batch["old_values"] + torch.randn(batch["old_values"].shape, generator=g)
    tr.model.train()
    loss, stats = tr.objective.loss(batch, 0, 8)
    logits, values = tr.model(batch["input_ids"], heads="both")
    logp = torch.log_softmax(logits, -1)
    pol, val, n, clipped = [], [], 0, 0
    for r in range(8):
        answer = (batch["labels"][r] != -100).nonzero().flatten().tolist()
        assert answer == list(range(answer[0], answer[0] + len(answer))) and 1 <= len(answer) <= 3
        for k, t in enumerate(answer):
            lp = logp[r, t, batch["labels"][r, t]]
            ratio = torch.exp(lp - batch["old_logp"][r, k])
            a = batch["advantages"][r, k]
            pol.append(torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2)))
            clipped += bool(-a * ratio.clamp(0.8, 1.2) > -a * ratio)
            v, v_old, ret = values[r, t], batch["old_values"][r, k], batch["returns"][r, k]
            val.append(0.5 * torch.maximum((v - ret) ** 2, (v_old + (v - v_old).clamp(-0.3, 0.3) - ret) ** 2))
            n += 1
    want = torch.stack(pol).mean() + 0.5 * torch.stack(val).mean()
    assert torch.allclose(loss, want, atol=1e-5)
    assert 0 < clipped < n and stats["clip_fraction"] == pytest.approx(clipped / n)
    assert stats["value_loss"] == pytest.approx(float(torch.stack(val).mean().detach()), rel=1e-5)


def test_ppo_advantages_are_gae_of_the_kl_shaped_reward(tmp_path):
    """Unwhitened: the last answer token's advantage is score - beta·(log pi - log pi_ref) - V, and with
    gamma = lam = 1 the first one's is the whole return minus its value."""
    base = _saved_model(tmp_path / "base")
    st = _ppo_stage(max_steps=1, ppo={"whiten_advantages": False, "gamma": 1.0, "lam": 1.0, "beta": 0.1,
                                      "max_new_tokens": 3})
    tr = Trainer(make_config(MODEL), st, _ParityTasks(16), tmp_path / "run", device="cpu", init_weights=base)
    with torch.no_grad():  # a reference that differs from the policy, so the KL term is not zero
        for p in tr.objective.reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    data = tr.loader.data
    b = tr.objective.rollouts(data, list(range(8)))
    ref, _ = tr.objective.forward(tr.objective.reference, b["input_ids"], b["labels"], b["pos"])
    score = torch.tensor([1.0 if data.decode(row[row != -100].tolist()) == "1" else 0.0 for row in b["labels"]])
    for r in range(8):
        n = int(b["mask"][r].sum())
        kl = -0.1 * (b["old_logp"][r, :n] - ref[r, :n])
        rewards = kl.clone()
        rewards[-1] += score[r]
        assert torch.allclose(b["advantages"][r, n - 1], rewards[-1] - b["old_values"][r, n - 1], atol=1e-5)
        assert torch.allclose(b["advantages"][r, 0], rewards.sum() - b["old_values"][r, 0], atol=1e-5)
        assert torch.allclose(b["returns"][r, :n], b["advantages"][r, :n] + b["old_values"][r, :n], atol=1e-6)


def test_ppo_raises_a_rule_reward(tmp_path):
    base = _saved_model(tmp_path / "base", seed=2)
    st = _ppo_stage(max_steps=30, batch_size=16, micro_batch_size=8, checkpoint_every=30, eval_every=30,
                    eval_batches=2, ppo={"beta": 0.02, "epochs": 2, "vf_coef": 0.1},
                    optim={"lr": 1e-2, "warmup_steps": 1, "schedule": "constant", "weight_decay": 0.0})
    tr = Trainer(make_config(MODEL), st, _ParityTasks(64), tmp_path / "run", val=_ParityTasks(16), device="cpu",
                 init_weights=base)
    res = tr.fit()
    rewards = [r["reward"] for r in res.metrics]
    assert np.mean(rewards[:5]) < 0.65 and np.mean(rewards[-10:]) > 0.85, rewards  # sampled at temperature 1
    last = res.metrics[-1]
    assert last["kl"] > 0 and last["entropy"] > 0 and last["value_loss"] >= 0 and 0 <= last["clip_fraction"] <= 1
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_reward"] == 1.0


# ---------------------------------------------------------------------------------------------------- resume
def _chat_spec(tmp_path: Path, run_dir: Path, data: dict, base: Path, **extra) -> Path:
    spec = {"model": CHAT_MODEL, "run_dir": str(run_dir), "data": data, "device": "cpu",
            "init_weights": str(base), **extra}
    path = run_dir.with_suffix(".json")
    path.write_text(json.dumps(spec))
    return path


def test_reward_then_ppo_against_it_resume_after_sigkill_bit_identical(tmp_path, chat_tokenizer):
    """A reward model, then PPO scored by it, each killed at step 7 and resumed from step 4: the same losses
    (and, for PPO, the same rewards) as the uninterrupted run."""
    base = _chat_base(tmp_path / "base", seed=3)
    tok = str(chat_tokenizer)
    reward = stage(kind="reward", chat=PAIRS, batch_size=4, micro_batch_size=2).model_dump(mode="json")
    data = {"kind": "preferences", "chat": PAIRS, "tokenizer": tok, "seq_len": 96}
    ref = _result(_run(_chat_spec(tmp_path, tmp_path / "rm", data, base, stage=reward)))
    killed = _chat_spec(tmp_path, tmp_path / "rm-killed", data, base, stage=reward)
    assert _run(killed, "step:7").returncode == -9
    res = _result(_run(killed))
    assert res["resumed_from"] == 4 and res["losses"] == ref["losses"][4:] and len(ref["losses"]) == 12

    tasks = {"kind": "builtin", "name": "arithmetic", "max_operand": 9}
    ppo = _ppo_stage(batch_size=4, micro_batch_size=2, chat=tasks,
                     ppo={"reward": None, "reward_from": {"path": ref["checkpoint"]}, "max_new_tokens": 6,
                          "beta": 0.05}).model_dump(mode="json")
    data = {"kind": "tasks", "chat": tasks, "tokenizer": tok, "max_prompt_len": 64, "answers": False}
    extra = {"stage": ppo, "reward_model": ref["checkpoint"]}
    full = _chat_spec(tmp_path, tmp_path / "ppo", data, base, **extra)
    ref_ppo = _result(_run(full))
    killed = _chat_spec(tmp_path, tmp_path / "ppo-killed", data, base, **extra)
    assert _run(killed, "step:7").returncode == -9
    res = _result(_run(killed))
    assert res["resumed_from"] == 4 and res["losses"] == ref_ppo["losses"][4:]
    def rows(d):
        keep = ("reward", "kl", "clip_fraction", "value_loss", "entropy", "val_reward")
        return [{k: r.get(k) for k in keep} for r in map(json.loads, (tmp_path / d / "metrics.jsonl").open())]

    assert rows("ppo-killed") == rows("ppo") and rows("ppo")[-1]["val_reward"] is not None
    assert len({r["reward"] for r in rows("ppo")}) > 5  # scored by the reward model: real-valued, not a rule
    published = from_pretrained(res["checkpoint"])
    assert getattr(published, "score", None) is not None  # the run's checkpoint keeps the value head for resuming


def test_ppo_recipe_errors_are_one_line():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a ppo stage needs `ppo:` with its reward source"):
        stage(kind="ppo", chat={"kind": "builtin", "name": "arithmetic"})
    with pytest.raises(ValidationError, match="exactly one reward source"):
        stage(kind="ppo", chat={"kind": "builtin", "name": "arithmetic"}, ppo={"epochs": 2})
    with pytest.raises(ValidationError, match="has none \\(use arithmetic, or a trained reward model\\)"):
        stage(kind="ppo", chat={"kind": "builtin", "name": "python_qa"}, ppo={"reward": "number_match"})
    with pytest.raises(ValidationError, match="`lora:` is not supported on a reward stage"):
        stage(kind="reward", chat=PAIRS, lora={"r": 4})
