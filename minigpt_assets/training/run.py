"""`python -m minigpt_assets.training.run SPEC.json`: one training stage in this process (or under torchrun).

SPEC is JSON: {"model": {model recipe fields}, "stage": {stage fields}, "run_dir": "...",
"data": {"kind": "mixture", "path": MIXTURE_ARTIFACT} | {"kind": "array", "path": "x.npy", "seq_len": N, "eos": E}
| {"kind": "chat" | "preferences" | "tasks", "chat": {ChatData fields}, "tokenizer": dir, ...},
"max_steps": optional int, "device": optional str, "init_weights": optional checkpoint folder,
"teacher": optional model folder (distill), "reward_model": optional reward model folder (ppo), "strategy": "none" | "ddp" | "fsdp" | "hsdp" | "zero2" | "zero3"}. Under `torchrun` (WORLD_SIZE > 1) it joins the process group (gloo on CPU,
NCCL on GPUs) and each rank trains its share of every global batch. Rank 0 prints `RESULT {json}` last.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from minigpt_assets.data.loader import ArrayTokens, open_mixture
from minigpt_assets.models.registry import make_config
from minigpt_assets.training.config import StageConfig
from minigpt_assets.training.trainer import Trainer, TrainingError, kill_hook_from_env


def open_data(spec: dict):
    """(train, validation) windows for a data spec."""
    if spec["kind"] == "mixture":
        folder = Path(spec["path"])
        val = open_mixture(folder, "val") if (folder / "plan_val.parquet").is_file() else None
        return open_mixture(folder, "train"), val
    if spec["kind"] == "array":
        tokens = np.load(spec["path"], mmap_mode="r")
        n_val = int(spec.get("validation_tokens", 0))
        train = ArrayTokens(tokens[n_val:], spec["seq_len"], spec["eos"])
        val = ArrayTokens(tokens[:n_val], spec["seq_len"], spec["eos"]) if n_val else None
        return train, val
    if spec["kind"] == "chat":
        return open_chat(spec)
    if spec["kind"] == "preferences":
        return open_preferences(spec)
    if spec["kind"] == "tasks":
        return open_tasks(spec)
    raise ValueError(f"unknown data kind {spec['kind']!r}")


def prompt_of(row) -> list:
    """The prompt of a data row: a task's or a preference pair's `messages`, a conversation without its last turn."""
    return row["messages"] if isinstance(row, dict) else row[:-1]


def split_rows(rows: list, fraction: float) -> tuple[list, list]:
    """(train, validation) by a hash of each row's prompt, so the split does not depend on the order, and every
    stage of a chain (sft conversations, dpo or reward pairs, grpo or ppo tasks, the chat_task eval) holds out
    the same prompts of a data set."""
    import hashlib

    train, val = [], []
    for r in rows:
        h = int(hashlib.sha256(json.dumps(prompt_of(r), sort_keys=True).encode()).hexdigest()[:8], 16) / 16**8
        (val if h < fraction else train).append(r)
    return train, val


def open_preferences(spec: dict):
    """(train, validation) PreferencePairs from {"chat": ChatData fields, "tokenizer": dir, "seq_len": N}."""
    from minigpt_assets.data.chat import (PreferencePairs, arithmetic_preferences, encode_preference,
                                          load_preferences, python_qa_preferences)
    from minigpt_assets.training.config import ChatData

    chat = ChatData.model_validate(spec["chat"])
    if chat.kind == "jsonl":
        rows = load_preferences(Path(chat.location))
    elif chat.name == "arithmetic":
        rows = arithmetic_preferences(chat.limit, max_operand=chat.max_operand)
    else:
        rows = python_qa_preferences(chat.limit, rejected=chat.preference)
    train, val = split_rows(rows[:chat.limit], chat.validation_fraction)
    tok, pad = Path(spec["tokenizer"]), int(spec.get("pad_id", 0))
    enc = lambda rs: PreferencePairs([encode_preference(tok, r) for r in rs], spec["seq_len"], pad)  # noqa: E731
    return enc(train), (enc(val) if val else None)


def open_chat(spec: dict):
    """(train, validation) PackedChat from a chat data spec: {"chat": ChatData fields, "tokenizer": dir,
    "seq_len": N}; the split is by a hash of the conversation, so it does not depend on the order."""
    from minigpt_assets.data.chat import (PackedChat, arithmetic_conversations, encode_conversation,
                                          load_conversations, python_qa)
    from minigpt_assets.training.config import ChatData

    chat = ChatData.model_validate(spec["chat"])
    if chat.kind == "jsonl":
        convs = load_conversations(Path(chat.location))[:chat.limit]
    else:
        convs = (arithmetic_conversations(chat.limit, max_operand=chat.max_operand) if chat.name == "arithmetic"
                 else python_qa(chat.limit))
    train, val = split_rows(convs, chat.validation_fraction)
    tok, pad = Path(spec["tokenizer"]), int(spec.get("pad_id", 0))
    enc = lambda cs: PackedChat([encode_conversation(tok, c) for c in cs], spec["seq_len"], pad)  # noqa: E731
    return enc(train), (enc(val) if val else None)


def task_rows(chat, answers: bool = True) -> list[dict]:
    """The prompts (with reference answers) of a ChatData for online RL and for the chat_task eval: a jsonl file
    (`answers=False`: the answer may be absent, a reward model judges), the builtin arithmetic tasks, or the
    builtin python_qa questions with their docstring answer as the reference."""
    from minigpt_assets.data.chat import arithmetic, load_tasks, python_qa

    if chat.kind == "jsonl":
        return load_tasks(Path(chat.location), answers=answers)[:chat.limit]
    if chat.name == "arithmetic":
        return arithmetic(chat.limit, max_operand=chat.max_operand)
    return [{"messages": c[:2], "answer": c[2]["content"]} for c in python_qa(chat.limit)]


def open_tasks(spec: dict):
    """(train, validation) PromptTasks for grpo and ppo: {"chat": ChatData fields, "tokenizer": dir,
    "max_prompt_len": N, "answers": whether each prompt needs a reference answer (a rule reward)}."""
    from minigpt_assets.data.chat import PromptTasks
    from minigpt_assets.training.config import ChatData

    chat = ChatData.model_validate(spec["chat"])
    train, val = split_rows(task_rows(chat, spec.get("answers", True)), chat.validation_fraction)
    tok = Path(spec["tokenizer"])
    return PromptTasks(tok, train, spec["max_prompt_len"]), (PromptTasks(tok, val, spec["max_prompt_len"])
                                                             if val else None)


def _pipes():
    """`open_dagster_pipes()` on rank 0 of a process Dagster launched through Pipes; otherwise a null context
    (the script runs the same by hand or under torchrun, and never imports dagster itself)."""
    import contextlib
    import os

    if os.environ.get("RANK", "0") == "0":
        try:
            from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes
        except ImportError:
            return contextlib.nullcontext()
        if os.environ.get(DAGSTER_PIPES_CONTEXT_ENV_VAR):
            return open_dagster_pipes()
    return contextlib.nullcontext()


def _wandb(spec: dict):
    """A W&B run for this stage (rank 0), or None. Offline unless the profile or WANDB_MODE says otherwise; the
    run id is the stage's run key, so a resumed stage continues the same W&B run."""
    import os

    cfg = spec.get("wandb") or {}
    mode = os.environ.get("WANDB_MODE") or cfg.get("mode", "offline")
    if mode == "disabled" or os.environ.get("RANK", "0") != "0":
        return None
    try:
        import wandb
    except ImportError:
        print("wandb is not installed; metrics go to metrics.jsonl and DuckDB only", file=sys.stderr)
        return None
    return wandb.init(project=cfg.get("project", "minigpt-assets"), entity=cfg.get("entity"), mode=mode,
                      name=cfg.get("name"), group=cfg.get("group"), id=cfg.get("id"), resume="allow",
                      dir=spec["run_dir"], config={"model": spec["model"], "stage": spec["stage"]},
                      settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False,
                                              x_disable_stats=True, x_disable_machine_info=True))


def _reporter(pipes, wandb_run=None):
    """Stream each metrics row to Dagster (a log line and a custom message) or stdout, and to W&B."""

    def report(row: dict) -> None:
        if wandb_run is not None:
            wandb_run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None
                           and k != "step"}, step=int(row["step"]))
        if "loss" in row:
            msg = (f"step {row['step']}: loss {row['loss']:.4f} lr {row['lr']:.2e} grad_norm {row['grad_norm']:.3f} "
                   f"{row['tokens_per_s']:,.0f} tok/s")
        else:
            msg = f"step {row['step']}"
        if row.get("val_loss") is not None:
            msg += f" val_loss {row['val_loss']:.4f}"
        if pipes is None:
            print(msg, flush=True)
            return
        pipes.log.info(msg)
        pipes.report_custom_message(row)

    return report


def join_distributed(spec: dict) -> tuple[int, int, str | None]:
    """(rank, world size, device) from torchrun's environment, with the process group joined."""
    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "LOCAL_RANK" in os.environ  # under torchrun, even with one process
    if world == 1 and not (launched and spec.get("strategy", "none") != "none"):
        return 0, 1, spec.get("device")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = spec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def run(spec: dict) -> dict:
    import torch

    rank, world, device = join_distributed(spec)
    train, val = open_data(spec["data"])
    wandb_run = _wandb(spec) if rank == 0 else None
    try:
        with _pipes() as pipes:
            trainer = Trainer(make_config(spec["model"]), StageConfig.model_validate(spec["stage"]), train,
                              Path(spec["run_dir"]), val=val, device=device,
                              init_weights=Path(spec["init_weights"]) if spec.get("init_weights") else None,
                              hook=kill_hook_from_env(), on_metrics=_reporter(pipes, wandb_run) if rank == 0 else None,
                              rank=rank, world_size=world, strategy=spec.get("strategy", "none"),
                              teacher=Path(spec["teacher"]) if spec.get("teacher") else None,
                              reward_model=Path(spec["reward_model"]) if spec.get("reward_model") else None)
            return _fit(trainer, spec)
    finally:
        if wandb_run is not None:
            wandb_run.finish()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _fit(trainer: Trainer, spec: dict) -> dict:
    res = trainer.fit(max_steps=spec.get("max_steps"), resume=spec.get("resume", True))
    return {"steps": res.steps, "final_loss": res.final_loss, "val_loss": res.val_loss, "bad_steps": res.bad_steps,
            "checkpoint": str(res.checkpoint) if res.checkpoint else None, "resumed_from": res.resumed_from,
            "losses": [r["loss"] for r in res.metrics]}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    import os

    try:
        result = run(spec)
    except (TrainingError, ValueError) as e:  # a diverged run, or bad data (file:line: what was expected)
        print(f"training: {e}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0" and not os.environ.get("DAGSTER_PIPES_CONTEXT"):
        print("RESULT " + json.dumps(result), flush=True)  # for scripts; under Dagster the metrics went via Pipes
    return 0


def _exit(code: int, spec_path: str) -> None:
    """Exit. After a DeepSpeed run (checkpoint durable, W&B finished, process group destroyed) skip the
    interpreter's teardown: DeepSpeed's CPU communication threads can abort it ("terminate called without an
    active exception", SIGABRT) after the work is done, which torchrun would report as a failed rank."""
    strategy = json.loads(Path(spec_path).read_text()).get("strategy", "none") if code == 0 else "none"
    if str(strategy).startswith("zero"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    import os

    _exit(main(sys.argv[1:]), sys.argv[1])
