"""DeepSpeed ZeRO-2/3 as a parallel strategy of the trainer (`strategy: zero2 | zero3` in a compute profile).

DeepSpeed's engine owns the sharded optimizer, gradient accumulation and clipping; the trainer keeps its own
loop, LR schedule (on the wrapped torch AdamW, whose param groups ZeRO steps), metrics and checkpoint folder.
A checkpoint holds the consolidated weights (`model.safetensors`, like every other strategy, so it loads and
exports anywhere) plus DeepSpeed's per-rank optimizer shards under `deepspeed/`, which resume the run with the
same number of ranks. Non-finite gradients: ZeRO skips the update itself (`was_step_applied()`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

TAG = "state"


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, stage: int, micro: int, n_micro: int,
               world_size: int, clip: float | None, bf16: bool, device: torch.device):
    """A DeepSpeed engine around `model` and `optimizer` (torch AdamW)."""
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    config = {"train_batch_size": micro * n_micro * world_size, "train_micro_batch_size_per_gpu": micro,
              "gradient_accumulation_steps": n_micro, "gradient_clipping": float(clip or 0.0),
              "zero_optimization": {"stage": stage}, "bf16": {"enabled": bf16},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**12, "wall_clock_breakdown": False}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def full_state_dict(engine, rank: int) -> dict[str, torch.Tensor]:
    """The whole model's state on rank 0 (every rank must call: ZeRO-3 gathers the shards)."""
    import deepspeed

    model = engine.module
    params = list(model.parameters())
    gather = (deepspeed.zero.GatheredParameters(params, modifier_rank=None) if engine.zero_optimization_stage() == 3
              else _null())
    with gather:
        if rank != 0:
            return {}
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_shards(engine, folder: Path) -> None:
    """Every rank writes its optimizer shard (DeepSpeed's own format) under `folder`."""
    engine.save_checkpoint(str(folder), tag=TAG, save_latest=False)


def load_shards(engine, folder: Path) -> None:
    path, _ = engine.load_checkpoint(str(folder), tag=TAG, load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"{folder}: DeepSpeed could not load this checkpoint")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
