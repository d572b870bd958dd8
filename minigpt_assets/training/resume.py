"""Checkpoints of a running `Trainer`. `save` writes the unsharded model and optimizer state keyed by
parameter name under every strategy, DeepSpeed's shards beside them, and for a LoRA run the merged weights and
the adapter. `resume` puts a trainer back where the newest complete checkpoint left it: loader position, step,
token and bad-step counts, RNG. The file format is `checkpoint.py`'s."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from minigpt_assets.training import checkpoint as ckpt


def _error(msg: str) -> Exception:
    from minigpt_assets.training.trainer import TrainingError

    return TrainingError(msg)


def _trainer_state(t) -> dict:
    return {"loader": t.loader.state_dict(), "tokens": t.tokens, "bad_steps": t.bad_steps,
            "bad_in_a_row": t.bad_in_a_row, "stage": t.stage.stage_name}


def _full_state(t) -> tuple[dict, dict]:
    """Unsharded model and optimizer state keyed by parameter name, the same for every strategy, so a
    checkpoint written under FSDP resumes on one process and the other way round."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from minigpt_assets.training.parallel import SHARDED

    opts = StateDictOptions(full_state_dict=True, cpu_offload=t.strategy in SHARDED)
    return get_state_dict(t.model, t.optimizer, options=opts)


def save(t) -> Path | None:
    """Write a checkpoint of the trainer `t` at its current step (every rank takes part; rank 0 writes)."""
    extras = []
    if t.engine is not None:  # consolidated weights, plus DeepSpeed's optimizer shards from every rank
        from minigpt_assets.training import zero

        model_state, optim_state = zero.full_state_dict(t.engine, t.rank), None
        shards = t.ckpt_root / f".deepspeed-{t.step:08d}"
        zero.save_shards(t.engine, shards)
        torch.distributed.barrier()
        extras.append(lambda folder: os.rename(shards, folder / "deepspeed"))
    else:
        model_state, optim_state = _full_state(t)  # every rank takes part in the gather
    path = None
    if t.rank == 0:
        state = {"optimizer": optim_state, "scheduler": t.scheduler.state_dict()}
        hook = (lambda point: t.hook(f"checkpoint:{point}", t.step)) if t.hook else None
        if t.adapters is not None:  # the merged weights load anywhere; the adapter alone is kept too
            from minigpt_assets.training import lora

            adapter = lora.adapter_state_dict(model_state)
            model_state = lora.merged_state_dict(t.model, model_state)
            extras.append(lambda folder: lora.write_peft_adapter(folder / "adapter", t.adapters, adapter))
        path = ckpt.save_checkpoint(t.ckpt_root, t.step, t.model, model_state, state,
                                    _trainer_state(t), t.stage.keep_last, hook,
                                    lambda folder: [write(folder) for write in extras])
    if t.world_size > 1:
        torch.distributed.barrier()
    return path


def resume(t) -> int:
    """Continue from the newest complete checkpoint, if any; returns its step (0 when starting fresh)."""
    ckpt.clean_partial(t.ckpt_root)
    last = ckpt.latest_checkpoint(t.ckpt_root)
    if last is None:
        return 0
    model_state, optim_state, trainer, rng = ckpt.load_checkpoint(last)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if (t.engine is not None) != (optim_state["optimizer"] is None):
        raise _error(f"{last}: written {'without' if t.engine else 'with'} DeepSpeed; resume it with "
                     "the strategy that wrote it (its weights load anywhere as init_weights)")
    if t.engine is not None:
        from minigpt_assets.training import zero

        try:
            zero.load_shards(t.engine, last / "deepspeed")
        except (RuntimeError, AssertionError, ValueError, FileNotFoundError) as e:
            raise _error(f"{last}: cannot resume the DeepSpeed state on {t.world_size} ranks ({e})") from None
        return _restore_loop_state(t, last, optim_state, trainer, rng)

    own = set(t.model.state_dict())
    if t.adapters is not None:
        model_state = _adapted_state(t, model_state, last / "adapter")
    if t.model_cfg.tie_embeddings:
        model_state.setdefault("lm_head.weight", model_state.get("model.embed_tokens.weight"))
    missing, unexpected = sorted(own - set(model_state)), sorted(set(model_state) - own)
    if missing or unexpected:
        raise _error(f"{last}: checkpoint does not fit the model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    set_state_dict(t.model, t.optimizer, model_state_dict=model_state,
                   optim_state_dict=optim_state["optimizer"],
                   options=StateDictOptions(full_state_dict=True, strict=False))
    return _restore_loop_state(t, last, optim_state, trainer, rng)


def _restore_loop_state(t, last: Path, optim_state: dict, trainer: dict, rng: dict) -> int:
    t.scheduler.load_state_dict(optim_state["scheduler"])
    t.loader.load_state_dict(trainer["loader"])
    t.step, t.tokens = trainer["step"], trainer["tokens"]
    t.bad_steps, t.bad_in_a_row = trainer["bad_steps"], trainer["bad_in_a_row"]
    ckpt.set_rng_state(rng)
    t._truncate_metrics(t.step)
    return t.step


def _adapted_state(t, merged: dict[str, torch.Tensor], adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The adapted model's full state from a LoRA checkpoint: the frozen base (the stage's starting
    weights, which never change) under peft's `base_layer.` names, plus the saved adapter."""
    from safetensors.torch import load_file

    from minigpt_assets.models.interop import from_pretrained
    from minigpt_assets.training.lora import ADAPTER

    own = set(t.model.state_dict())
    state = {}
    for k, v in from_pretrained(t.init_weights).state_dict().items():
        if k not in own:
            module, _, leaf = k.rpartition(".")
            k = f"{module}.base_layer.{leaf}"
        state[k] = v
    for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        module, _, leaf = k.removeprefix("base_model.model.").rpartition(".")
        state[f"{module}.{ADAPTER}.{leaf}"] = v
    return state
