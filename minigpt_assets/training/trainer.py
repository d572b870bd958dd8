"""The training loop: AdamW, warmup + cosine/WSD, accumulation, clipping, bf16 autocast, non-finite-step
skipping, exact resume from checkpoints, metrics to a callback and `metrics.jsonl`.

Pure PyTorch; the Dagster layer launches it (a subprocess, torchrun) and records what it reports.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import xxhash

from minigpt_assets.data.loader import PackedLoader, make_batch
from minigpt_assets.models.config import ModelConfig
from minigpt_assets.models.registry import build_model
from minigpt_assets.training import checkpoint as ckpt
from minigpt_assets.training.config import OptimConfig, StageConfig


STRATEGIES = ("none", "ddp", "fsdp", "zero2", "zero3")  # zero*: DeepSpeed ZeRO stage 2 or 3
STAGE_METRICS = ("reward_accuracy", "reward_margin", "reward", "kl", "completion_tokens")


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over trained positions (labels != -100) of KL(teacher_T || student_T) x T^2, on the shared
    vocabulary (the first V ids of both, V the student's size)."""
    v = student.shape[-1]
    t = temperature
    s_logp = torch.log_softmax(student.float() / t, dim=-1)
    t_logp = torch.log_softmax(teacher[..., :v].float() / t, dim=-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    keep = labels != -100
    return (kl * keep).sum() / keep.sum().clamp(min=1) * t * t


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged, bad data); the message is one line for the user."""


def lr_multiplier(step: int, max_steps: int, o: OptimConfig) -> float:
    """LR factor after `step` optimizer steps: linear warmup, then cosine or WSD down to `min_lr_ratio`."""
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    lo = o.min_lr_ratio
    if o.schedule == "cosine":
        span = max(1, max_steps - o.warmup_steps)
        t = min(1.0, (step - o.warmup_steps) / span)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    decay_start = max(o.warmup_steps, int(max_steps * (1 - o.decay_fraction)))
    if step < decay_start:
        return 1.0
    t = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    return 1.0 - (1 - lo) * t


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No decay on norms, biases and embeddings-as-vectors (every parameter with fewer than 2 dimensions)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    val_loss: float | None
    bad_steps: int
    checkpoint: Path | None
    metrics: list[dict] = field(default_factory=list)
    resumed_from: int = 0


class Trainer:
    """Trains `model_cfg` for one stage on windows from `train` (PackedTokens or ArrayTokens)."""

    def __init__(self, model_cfg: ModelConfig, stage: StageConfig, train, run_dir: Path, val=None,
                 device: str | None = None, init_weights: Path | None = None, rank: int = 0, world_size: int = 1,
                 on_metrics: Callable[[dict], None] | None = None, hook: Callable[[str, int], None] | None = None,
                 strategy: str = "none", teacher: Path | None = None):
        if strategy not in STRATEGIES:
            raise TrainingError(f"unknown parallel strategy {strategy!r} ({', '.join(STRATEGIES)})")
        if strategy != "none" and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise TrainingError(f"strategy {strategy} needs torch.distributed (run under torchrun)")
        self.strategy = strategy
        self.stage, self.run_dir = stage, Path(run_dir)
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.on_metrics, self.hook = on_metrics, hook
        if stage.activation_checkpointing is not None:
            model_cfg = model_cfg.model_copy(update={"activation_checkpointing": stage.activation_checkpointing})
        self.model_cfg = model_cfg
        if stage.batch_size % world_size:
            raise TrainingError(f"batch_size {stage.batch_size} is not divisible by {world_size} ranks")
        self.local_batch = stage.batch_size // world_size
        self.micro = min(stage.micro_batch_size or self.local_batch, self.local_batch)
        if self.local_batch % self.micro:
            raise TrainingError(f"per-rank batch {self.local_batch} is not a multiple of micro_batch_size {self.micro}")
        self.dtype = self._dtype()
        torch.manual_seed(stage.seed)
        self.model = build_model(model_cfg).to(self.device)
        self.init_weights = init_weights
        if init_weights is not None:
            from minigpt_assets.models.interop import from_pretrained

            self.model.load_state_dict(from_pretrained(init_weights).state_dict())
        elif stage.kind != "pretrain":
            raise TrainingError(f"a {stage.kind} stage starts from the previous stage's checkpoint (init_weights)")
        self.reference = self.teacher = None
        if stage.kind in ("dpo", "grpo"):  # the frozen starting point the policy is measured against
            import copy

            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)  # the weights just loaded
        if stage.kind == "distill":
            self.teacher = self._load_teacher(teacher)
        if stage.kind == "grpo" and strategy == "fsdp":
            raise TrainingError("grpo samples a different number of tokens on each rank; use strategy none or ddp")
        self.adapters = stage.adapters
        if self.adapters is not None:
            from minigpt_assets.training.lora import apply_lora

            try:
                apply_lora(self.model, self.adapters)
            except ValueError as e:
                raise TrainingError(str(e)) from None
        self.stats: dict[str, float] = {}
        self.val_stats: dict[str, float] = {}
        self.train_model = self._parallelize()
        o = stage.optim
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, o.weight_decay), lr=o.lr, betas=o.betas,
                                           eps=o.eps, fused=fused)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, stage.max_steps, o))
        self.engine = None
        if strategy.startswith("zero"):
            if stage.kind == "grpo":
                raise TrainingError("grpo samples a different number of tokens on each rank; use strategy none or ddp")
            from minigpt_assets.training import zero

            self.engine = zero.initialize(self.model, self.optimizer, int(strategy[-1]), self.micro,
                                          self.local_batch // self.micro, world_size, o.grad_clip,
                                          self.dtype == torch.bfloat16, self.device)
            self.train_model = self.engine
        self.loader = PackedLoader(train, stage.batch_size, seed=stage.seed, rank=rank, world_size=world_size)
        self.val = val
        self.step = 0
        self.tokens = 0
        self.bad_steps = 0
        self.bad_in_a_row = 0
        self.ckpt_root = self.run_dir / "checkpoints"

    def _load_teacher(self, path: Path | None) -> torch.nn.Module:
        from minigpt_assets.models.interop import from_pretrained

        if path is None:
            raise TrainingError("a distill stage needs its teacher's folder")
        teacher = from_pretrained(path).to(self.device).eval().requires_grad_(False)
        if teacher.config.vocab_size < self.model_cfg.vocab_size:
            raise TrainingError(f"{path}: the teacher's vocabulary ({teacher.config.vocab_size}) is smaller than "
                                f"the student's ({self.model_cfg.vocab_size}); they must share a tokenizer")
        return teacher

    def _parallelize(self) -> torch.nn.Module:
        """DDP replicates the module; FSDP2 (`fully_shard`) shards every block and then the root, so the
        optimizer built afterwards holds only this rank's shard of each parameter."""
        model = self.model
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
        if self.stage.compile:
            model = torch.compile(model)
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None)
        return model

    def _grad_sync(self, enabled: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
        import contextlib

        if self.strategy == "ddp" and not enabled:
            return self.train_model.no_sync()
        if self.strategy == "fsdp":
            self.model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def _dtype(self) -> torch.dtype:
        if self.stage.dtype == "bfloat16" or (self.stage.dtype == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return torch.float32

    # -- state
    def _trainer_state(self) -> dict:
        return {"loader": self.loader.state_dict(), "tokens": self.tokens, "bad_steps": self.bad_steps,
                "bad_in_a_row": self.bad_in_a_row, "stage": self.stage.stage_name}

    def _full_state(self) -> tuple[dict, dict]:
        """Unsharded model and optimizer state keyed by parameter name, the same for every strategy, so a
        checkpoint written under FSDP resumes on one process and the other way round."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=self.strategy == "fsdp")
        return get_state_dict(self.model, self.optimizer, options=opts)

    def save(self) -> Path | None:
        extras = []
        if self.engine is not None:  # consolidated weights, plus DeepSpeed's optimizer shards from every rank
            from minigpt_assets.training import zero

            model_state, optim_state = zero.full_state_dict(self.engine, self.rank), None
            shards = self.ckpt_root / f".deepspeed-{self.step:08d}"
            zero.save_shards(self.engine, shards)
            torch.distributed.barrier()
            extras.append(lambda folder: os.rename(shards, folder / "deepspeed"))
        else:
            model_state, optim_state = self._full_state()  # every rank takes part in the gather
        path = None
        if self.rank == 0:
            state = {"optimizer": optim_state, "scheduler": self.scheduler.state_dict()}
            hook = (lambda point: self.hook(f"checkpoint:{point}", self.step)) if self.hook else None
            if self.adapters is not None:  # the merged weights load anywhere; the adapter alone is kept too
                from minigpt_assets.training import lora

                adapter = lora.adapter_state_dict(model_state)
                model_state = lora.merged_state_dict(self.model, model_state)
                extras.append(lambda folder: lora.write_peft_adapter(folder / "adapter", self.adapters, adapter))
            path = ckpt.save_checkpoint(self.ckpt_root, self.step, self.model, model_state, state,
                                        self._trainer_state(), self.stage.keep_last, hook,
                                        lambda folder: [write(folder) for write in extras])
        if self.world_size > 1:
            torch.distributed.barrier()
        return path

    def resume(self) -> int:
        """Continue from the newest complete checkpoint, if any; returns its step (0 when starting fresh)."""
        ckpt.clean_partial(self.ckpt_root)
        last = ckpt.latest_checkpoint(self.ckpt_root)
        if last is None:
            return 0
        model_state, optim_state, trainer, rng = ckpt.load_checkpoint(last)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        if (self.engine is not None) != (optim_state["optimizer"] is None):
            raise TrainingError(f"{last}: written {'without' if self.engine else 'with'} DeepSpeed; resume it with "
                                "the strategy that wrote it (its weights load anywhere as init_weights)")
        if self.engine is not None:
            from minigpt_assets.training import zero

            try:
                zero.load_shards(self.engine, last / "deepspeed")
            except (RuntimeError, AssertionError, ValueError, FileNotFoundError) as e:
                raise TrainingError(f"{last}: cannot resume the DeepSpeed state on {self.world_size} ranks ({e})") \
                    from None
            return self._restore_loop_state(last, optim_state, trainer, rng)

        own = set(self.model.state_dict())
        if self.adapters is not None:
            model_state = self._adapted_state(model_state, last / "adapter")
        if self.model_cfg.tie_embeddings:
            model_state.setdefault("lm_head.weight", model_state.get("model.embed_tokens.weight"))
        missing, unexpected = sorted(own - set(model_state)), sorted(set(model_state) - own)
        if missing or unexpected:
            raise TrainingError(f"{last}: checkpoint does not fit the model (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]})")
        set_state_dict(self.model, self.optimizer, model_state_dict=model_state,
                       optim_state_dict=optim_state["optimizer"],
                       options=StateDictOptions(full_state_dict=True, strict=False))
        return self._restore_loop_state(last, optim_state, trainer, rng)

    def _restore_loop_state(self, last: Path, optim_state: dict, trainer: dict, rng: dict) -> int:
        self.scheduler.load_state_dict(optim_state["scheduler"])
        self.loader.load_state_dict(trainer["loader"])
        self.step, self.tokens = trainer["step"], trainer["tokens"]
        self.bad_steps, self.bad_in_a_row = trainer["bad_steps"], trainer["bad_in_a_row"]
        ckpt.set_rng_state(rng)
        self._truncate_metrics(self.step)
        return self.step

    def _adapted_state(self, merged: dict[str, torch.Tensor], adapter_dir: Path) -> dict[str, torch.Tensor]:
        """The adapted model's full state from a LoRA checkpoint: the frozen base (the stage's starting
        weights, which never change) under peft's `base_layer.` names, plus the saved adapter."""
        from safetensors.torch import load_file

        from minigpt_assets.models.interop import from_pretrained
        from minigpt_assets.training.lora import ADAPTER

        own = set(self.model.state_dict())
        state = {}
        for k, v in from_pretrained(self.init_weights).state_dict().items():
            if k not in own:
                module, _, leaf = k.rpartition(".")
                k = f"{module}.base_layer.{leaf}"
            state[k] = v
        for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
            module, _, leaf = k.removeprefix("base_model.model.").rpartition(".")
            state[f"{module}.{ADAPTER}.{leaf}"] = v
        return state

    # -- metrics
    @property
    def metrics_file(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _truncate_metrics(self, step: int) -> None:
        """Drop rows logged after the checkpoint we resume from: they will be produced again."""
        if not self.metrics_file.is_file():
            return
        rows = [r for r in self.metrics_file.read_text().splitlines() if r and json.loads(r)["step"] <= step]
        self.metrics_file.write_text("".join(r + "\n" for r in rows))

    def _emit(self, row: dict) -> None:
        if self.rank == 0:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.on_metrics:
            self.on_metrics(row)

    # -- steps
    def _to(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)

    def _seq_logps(self, model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum of log-probabilities of the labelled tokens of each row."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            logits = model(ids)
        logp = torch.log_softmax(logits.float(), dim=-1)
        keep = labels != -100
        tok = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        return (tok * keep).sum(-1)

    def _dpo_loss(self, batch: dict, lo: int, hi: int) -> torch.Tensor:
        ids = self._to(np.concatenate([batch["chosen_ids"][lo:hi], batch["rejected_ids"][lo:hi]]))
        labels = self._to(np.concatenate([batch["chosen_labels"][lo:hi], batch["rejected_labels"][lo:hi]]))
        pol_c, pol_r = self._seq_logps(self.train_model, ids, labels).chunk(2)
        with torch.no_grad():
            ref_c, ref_r = self._seq_logps(self.reference, ids, labels).chunk(2)
        margin = (pol_c - ref_c) - (pol_r - ref_r)
        d = self.stage.dpo
        if d.loss == "sigmoid":
            loss = -F.logsigmoid(d.beta * margin).mean()
        else:
            loss = ((margin - 1 / (2 * d.beta)) ** 2).mean()
        self.stats = {"reward_accuracy": float((margin.detach() > 0).float().mean()),
                      "reward_margin": float(d.beta * margin.detach().mean())}
        return loss

    def _loss(self, batch: dict, lo: int, hi: int) -> torch.Tensor:
        if self.stage.kind == "dpo":
            return self._dpo_loss(batch, lo, hi)
        if self.stage.kind == "grpo":
            return self._grpo_loss(batch, lo, hi)
        ids = self._to(batch["input_ids"][lo:hi])
        labels = self._to(batch["labels"][lo:hi])
        kw = {}
        if self.stage.document_masking:
            kw = {"doc_ids": self._to(batch["doc_ids"][lo:hi]), "position_ids": self._to(batch["position_ids"][lo:hi])}
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            logits = self.train_model(ids, **kw)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(ids, **kw)
        # mean over the tokens that are trained (all of them in pretraining, the answers in SFT)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        loss = loss / (labels != -100).sum().clamp(min=1)
        if self.teacher is not None:
            d = self.stage.distill
            kl = distill_kl(logits, teacher_logits, labels, d.temperature)
            self.stats = {"kl": float(kl.detach())}
            loss = d.alpha * kl + (1 - d.alpha) * loss
        aux = self.model.aux_loss()
        return loss + aux if aux is not None else loss

    # -- grpo
    def _token_logps(self, model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Log-probability of each label under `model` [B, T] (0 where the label is ignored), at the sampling
        temperature, so the policy scored is the one that sampled."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            logits = model(ids)
        logp = torch.log_softmax(logits.float() / self.stage.grpo.temperature, dim=-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        return logp * (labels != -100)

    @torch.no_grad()
    def _rollouts(self, data, idx, greedy: bool = False) -> dict:
        """Sample `group_size` completions of each prompt in `idx` (one greedy one with `greedy`), reward them,
        and return padded sequences, completion labels and group-normalized advantages. Prompts of the same
        length are sampled in one batch (no padding inside the prompt, so the KV-cache decode is exact); the
        seed is a function of (stage seed, step, prompts), so a resumed run samples the same completions."""
        from minigpt_assets.models.transformer import generate
        from minigpt_assets.training.rewards import REWARDS

        g = self.stage.grpo
        n = 1 if greedy else g.group_size
        reward_fn = REWARDS[g.reward]
        idx = [int(i) for i in idx]
        buckets: dict[int, list[int]] = {}
        for j, i in enumerate(idx):
            buckets.setdefault(len(data.prompts[i]), []).append(j)
        slots: list[tuple | None] = [None] * (len(idx) * n)  # (sequence, prompt length, reward, completion length)
        self.model.eval()
        for plen, members in sorted(buckets.items()):
            prompts = torch.from_numpy(np.stack([data.prompts[idx[j]] for j in members])).to(self.device)
            prompts = prompts.repeat_interleave(n, dim=0)
            seed = xxhash.xxh64_intdigest(f"grpo:{self.stage.seed}:{self.step}:{[idx[j] for j in members]}".encode())
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                out = generate(self.model, prompts, g.max_new_tokens, temperature=0.0 if greedy else g.temperature,
                               top_k=g.top_k, eos_token_id=data.eos_id, seed=seed % 2**63)
            comp = out[:, plen:]
            is_eos = comp == data.eos_id
            keep = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to and including the first end token
            for row, (toks, k) in enumerate(zip(comp, keep)):
                j = members[row // n]
                toks = toks[k]
                reward = reward_fn(data.decode(toks.tolist()), data.answers[idx[j]])
                slots[j * n + row % n] = (torch.cat([prompts[row], toks]), plen, reward, int(k.sum()))
        seqs, starts, rewards, lengths = zip(*slots)
        width = max(len(x) for x in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long, device=self.device)
        labels = torch.full_like(ids, -100)
        for r, (x, s0) in enumerate(zip(seqs, starts)):
            ids[r, :len(x)] = x
            labels[r, s0 - 1:len(x) - 1] = x[s0:]  # predict the completion tokens only
        r = torch.tensor(rewards, device=self.device).view(-1, n)
        adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4) if n > 1 else torch.zeros_like(r)
        return {"input_ids": ids[:, :-1], "labels": labels[:, :-1], "advantages": adv.flatten(),
                "reward": float(r.mean()), "completion_tokens": float(np.mean(lengths)),
                "tokens": int((labels != -100).sum() + sum(starts))}

    def _grpo_loss(self, batch: dict, lo: int, hi: int) -> torch.Tensor:
        n = self.stage.grpo.group_size
        ids, labels = batch["input_ids"][lo * n:hi * n], batch["labels"][lo * n:hi * n]
        adv = batch["advantages"][lo * n:hi * n]
        mask = (labels != -100).float()
        logp = self._token_logps(self.train_model, ids, labels)
        with torch.no_grad():
            ref = self._token_logps(self.reference, ids, labels)
        d = ref - logp
        kl = torch.exp(d) - d - 1  # k3: unbiased, always >= 0
        ratio = torch.exp(logp - logp.detach())  # 1, with the policy gradient
        per_token = -(ratio * adv[:, None] - self.stage.grpo.beta * kl)
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
        self.stats = {"reward": batch["reward"], "kl": float((kl.detach() * mask).sum() / mask.sum().clamp(min=1)),
                      "completion_tokens": batch["completion_tokens"]}
        return loss

    def train_step(self, batch: dict) -> dict:
        if self.stage.kind == "grpo":  # sample and score first; then the update is an ordinary accumulation
            batch = self._rollouts(self.loader.data, batch["windows"])
        self.model.train()
        n_micro = self.local_batch // self.micro
        total = torch.zeros((), device=self.device)
        if self.engine is not None:
            return self._deepspeed_step(batch, n_micro, total)
        for m in range(n_micro):
            with self._grad_sync(m == n_micro - 1):
                loss = self._loss(batch, m * self.micro, (m + 1) * self.micro) / n_micro
                loss.backward()
            total += loss.detach()
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
            total /= self.world_size
        loss_value = float(total)
        clip = self.stage.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor over the shards
            grad_norm = grad_norm.full_tensor()
        finite = math.isfinite(loss_value) and bool(torch.isfinite(grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        if finite:
            self.optimizer.step()
            self.bad_in_a_row = 0
            if self.model_cfg.moe is not None:
                self.model.update_router_bias()
        else:
            self.bad_steps += 1
            self.bad_in_a_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        out = {"loss": loss_value, "grad_norm": float(grad_norm), "lr": lr, "finite": finite,
               **self._stats_over_ranks()}
        if "tokens" in batch:
            out["tokens"] = batch["tokens"]
        return out

    def _stats_over_ranks(self) -> dict[str, float]:
        """The objective's own numbers (reward, accuracy, KL) averaged over ranks, like the loss."""
        if self.world_size == 1 or not self.stats:
            return dict(self.stats)
        keys = sorted(self.stats)
        t = torch.tensor([float(self.stats[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def _deepspeed_step(self, batch: dict, n_micro: int, total: torch.Tensor) -> dict:
        """The engine accumulates (scaling each loss by 1/n_micro), clips, and steps on the last micro-batch;
        it skips the update itself when the gradients are not finite."""
        for m in range(n_micro):
            loss = self._loss(batch, m * self.micro, (m + 1) * self.micro)
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach() / n_micro
        torch.distributed.all_reduce(total)
        loss_value = float(total) / self.world_size
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        finite = math.isfinite(loss_value) and bool(self.engine.was_step_applied()) and math.isfinite(grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        if finite:
            self.bad_in_a_row = 0
            if self.model_cfg.moe is not None:
                self.model.update_router_bias()
        else:
            self.bad_steps += 1
            self.bad_in_a_row += 1
        self.scheduler.step()
        return {"loss": loss_value, "grad_norm": grad_norm, "lr": lr, "finite": finite, **self._stats_over_ranks()}

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the first `eval_batches` batches of the validation windows (a fixed set)."""
        if self.val is None or len(self.val) == 0:
            return None
        self.model.eval()
        n = min(len(self.val), self.stage.eval_batches * self.micro)
        if self.stage.kind == "grpo":  # the score that matters: greedy answers to held-out tasks
            out = self._rollouts(self.val, range(n), greedy=True)
            self.val_stats = {"val_reward": out["reward"]}
            return None
        losses = []
        accs = []
        for lo in range(0, n, self.micro):
            idx = list(range(lo, min(n, lo + self.micro)))
            losses.append(float(self._loss(make_batch(self.val, idx), 0, len(idx))))
            if "reward_accuracy" in self.stats:
                accs.append(self.stats["reward_accuracy"])
        self.val_stats = {"val_reward_accuracy": float(np.mean(accs))} if accs else {}
        return float(np.mean(losses))

    def fit(self, max_steps: int | None = None, resume: bool = True) -> TrainResult:
        """Run until `stage.max_steps` (or `max_steps`, to stop early), checkpointing every
        `checkpoint_every` steps and at the end."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start = self.resume() if resume else 0
        stop = min(self.stage.max_steps, max_steps or self.stage.max_steps)
        it = iter(self.loader)
        rows: list[dict] = []
        last_loss, val_loss = float("nan"), None
        t_last = time.perf_counter()
        window_tokens = self.stage.batch_size * (self.loader.data.window - 1)
        if start == 0 and self.stage.eval_every and self.val is not None:
            val_loss = self.evaluate()  # the starting point of the validation curve
            self._emit({"stage": self.stage.stage_name, "step": 0, "val_loss": val_loss, **self.val_stats})
        while self.step < stop:
            batch = next(it)
            out = self.train_step(batch)
            self.step += 1
            step_tokens = out.get("tokens", window_tokens)
            self.tokens += step_tokens
            if not out["finite"] and self.bad_in_a_row >= self.stage.max_bad_steps:
                last = ckpt.latest_checkpoint(self.ckpt_root)
                raise TrainingError(f"{self.bad_in_a_row} non-finite losses in a row at step {self.step}; "
                                    f"stopping (last good checkpoint: {last or 'none'})")
            now = time.perf_counter()
            row = {"stage": self.stage.stage_name, "step": self.step, "loss": out["loss"], "lr": out["lr"],
                   "grad_norm": out["grad_norm"], "tokens": self.tokens,
                   "tokens_per_s": step_tokens / max(now - t_last, 1e-9), "skipped": not out["finite"],
                   **{k: out[k] for k in STAGE_METRICS if k in out}}
            t_last = now
            if out["finite"]:
                last_loss = out["loss"]
            if self.stage.eval_every and self.step % self.stage.eval_every == 0:
                val_loss = row["val_loss"] = self.evaluate()
                row.update(self.val_stats)
            if self.step % self.stage.log_every == 0 or self.step == stop:
                self._emit(row)
            rows.append(row)
            if self.hook:
                self.hook("step", self.step)
            if self.step % self.stage.checkpoint_every == 0 or self.step == stop:
                if self.step == stop and self.val is not None and "val_loss" not in row:
                    val_loss = self.evaluate()
                    self._emit({"stage": self.stage.stage_name, "step": self.step, "val_loss": val_loss,
                                **self.val_stats})
                self.save()
                t_last = time.perf_counter()  # checkpoint time is not training throughput
        return TrainResult(self.step, last_loss, val_loss, self.bad_steps, ckpt.latest_checkpoint(self.ckpt_root),
                           rows, start)


def kill_hook_from_env() -> Callable[[str, int], None] | None:
    """Tests: MINIGPT_KILL_AT="step:7" or "checkpoint:before_rename:8" SIGKILLs this process at that point."""
    spec = os.environ.get("MINIGPT_KILL_AT")
    if not spec:
        return None
    point, _, at = spec.rpartition(":")

    def hook(where: str, step: int) -> None:
        if where == point and step == int(at):
            os.kill(os.getpid(), 9)

    return hook
