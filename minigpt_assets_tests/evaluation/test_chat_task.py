"""The chat_task eval: greedy answers to the prompts every post-training stage holds out, scored by the rule."""

from __future__ import annotations

import shutil

import torch

from minigpt_assets.evaluation.config import ChatTaskEval
from minigpt_assets.evaluation.suite import Evaluator
from minigpt_assets.models import build_model, make_config
from minigpt_assets.models.interop import save_model
from minigpt_assets.training.config import ChatData
from minigpt_assets.training.rewards import number_match
from minigpt_assets.training.run import open_chat, open_preferences, open_tasks, split_rows, task_rows

ARITH = {"kind": "builtin", "name": "arithmetic", "max_operand": 6, "validation_fraction": 0.25}


def test_every_stage_holds_out_the_same_prompts(chat_tokenizer):
    """sft conversations, dpo/reward pairs and grpo/ppo tasks of one data set split by the prompt alone."""
    spec = {"chat": ARITH, "tokenizer": str(chat_tokenizer), "seq_len": 64, "max_prompt_len": 48}
    _, tasks = open_tasks(spec)
    _, convs = open_chat(spec)
    _, pairs = open_preferences(spec)
    assert len(tasks) == len(convs) == len(pairs) > 5
    val = split_rows(task_rows(ChatData.model_validate(ARITH)), 0.25)[1]
    assert tasks.answers == [r["answer"] for r in val]


def test_chat_task_scores_the_greedy_answer_of_each_held_out_prompt(tmp_path, chat_tokenizer):
    from minigpt_assets.data.chat import PromptTasks, render
    from minigpt_assets.models.transformer import generate

    torch.manual_seed(0)
    model = build_model(make_config({"family": "llama", "vocab_size": 384, "hidden_size": 32, "num_layers": 2,
                                     "num_heads": 4, "num_kv_heads": 2, "max_seq_len": 96}), device="cpu")
    folder = save_model(model, tmp_path / "model")
    for f in chat_tokenizer.iterdir():
        shutil.copy2(f, folder / f.name)
    recipe = ChatTaskEval.model_validate({"kind": "chat_task", "chat": ARITH, "max_new_tokens": 5, "batch_size": 3})
    ev = Evaluator(folder)
    rows = ev.chat_task("arith", recipe)
    val = split_rows(task_rows(recipe.chat), 0.25)[1]
    assert [r["example"] for r in rows] == [v["messages"][-1]["content"] for v in val]
    assert {r["metric"] for r in rows} == {"number_match"} and {r["value"] for r in rows} <= {0.0, 1.0}
    # one prompt by hand: render, generate greedily, cut at the end token, decode, score
    tasks = PromptTasks(folder, val, 91)
    for i in (0, len(val) - 1):
        ids = tasks.prompts[i]
        assert tasks.decode(ids[-3:]) in render(folder, val[i]["messages"], add_generation_prompt=True)
        out = generate(ev.model, torch.from_numpy(ids)[None], 5, 0.0, eos_token_id=tasks.eos_id)[0, len(ids):].tolist()
        out = out[:out.index(tasks.eos_id) + 1] if tasks.eos_id in out else out
        assert rows[i]["value"] == number_match(tasks.decode(out), val[i]["answer"])
