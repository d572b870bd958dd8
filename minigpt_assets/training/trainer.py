"""The training loop: AdamW, warmup + cosine/WSD, accumulation, clipping, bf16 autocast, non-finite-step
skipping, exact resume from checkpoints, metrics to a callback and `metrics.jsonl`. What a step optimizes is
the stage kind's objective (`training/objectives/`); the loop knows none of them.

Pure PyTorch; the Dagster layer launches it (a subprocess, torchrun) and records what it reports.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from minigpt_assets.data.loader import PackedLoader, Prefetcher
from minigpt_assets.models.config import ModelConfig
from minigpt_assets.models.registry import build_model
from minigpt_assets.store import OBJECTIVE_METRICS
from minigpt_assets.training import checkpoint as ckpt
from minigpt_assets.training.config import OptimConfig, StageConfig
from minigpt_assets.training.optimizers import OptimizerError, build_optimizer
from minigpt_assets.training.parallel import SHARDED, parallelize, reshard


STRATEGIES = ("none", "ddp", "fsdp", "hsdp", "zero2", "zero3")  # zero*: DeepSpeed ZeRO stage 2 or 3
#: what an objective's step statistics may add to a metrics row (the held-out `val_` ones come at evaluation steps)
STAGE_METRICS = tuple(k for k in OBJECTIVE_METRICS if not k.startswith("val_"))


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
                 strategy: str = "none", teacher: Path | None = None, deferred: bool | None = None,
                 reward_model: Path | None = None):
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
        # micro_batch_size auto: the whole batch first, halved on out-of-memory until a step fits (one process:
        # ranks that retried apart would fall out of step)
        self.autotune = stage.micro_batch_size == "auto" and world_size == 1
        mb = None if stage.micro_batch_size == "auto" else stage.micro_batch_size
        self.micro = min(mb or self.local_batch, self.local_batch)
        self.eval_micro = self.micro  # the validation set's size stays what the recipe says
        if self.local_batch % self.micro:
            raise TrainingError(f"per-rank batch {self.local_batch} is not a multiple of micro_batch_size {self.micro}")
        self.dtype = self._dtype()
        c = stage.compile
        self.compiled = self.device.type == "cuda" if c == "auto" else bool(c)
        torch.manual_seed(stage.seed)
        self.model = build_model(model_cfg).to(self.device)
        self.init_weights = init_weights
        if init_weights is not None:
            from minigpt_assets.models.interop import from_pretrained

            self.model.load_state_dict(from_pretrained(init_weights).state_dict())
        elif stage.kind != "pretrain":
            raise TrainingError(f"a {stage.kind} stage starts from the previous stage's checkpoint (init_weights)")
        if stage.kind in ("reward", "ppo"):  # the reward model's score, or PPO's value of each position
            self.model.add_score_head()
        from minigpt_assets.training.objectives import build_objective

        self.objective = build_objective(self, teacher, reward_model)  # a reference copy is of the weights just loaded
        self.adapters = stage.adapters
        if self.adapters is not None:
            from minigpt_assets.training.lora import apply_lora

            try:
                apply_lora(self.model, self.adapters)
            except ValueError as e:
                raise TrainingError(str(e)) from None
        if stage.precision == "fp8":  # before compiling and sharding, which wrap the swapped layers
            from minigpt_assets.training.precision import fp8_problem, to_float8

            problem = fp8_problem(self.device)
            if problem:
                raise TrainingError(problem)
            to_float8(self.model)
        self.stats: dict[str, float] = {}
        self.val_stats: dict[str, float] = {}
        try:
            self.train_model = parallelize(self.model, strategy, world_size, self.device, self.dtype, self.compiled,
                                           stage.reshard_after_forward)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        # read the loss and the gradient norm on the host only when they are logged: the fused AdamW can skip a
        # non-finite step by itself (MoE's router update and DeepSpeed need the answer at once); on by default on
        # a GPU, where a host sync per step stalls the queue of kernels
        o = stage.optim
        if o.name == "muon" and strategy not in ("none", "ddp"):
            raise TrainingError(f"optim name muon needs whole matrices (strategy none or ddp); {strategy} shards or "
                                "flattens them")
        if o.name == "adamw8bit" and strategy.startswith("zero"):
            raise TrainingError(f"optim name adamw8bit does not run under DeepSpeed {strategy}; use fsdp or ddp")
        can_defer = strategy in ("none", "ddp") and model_cfg.moe is None and o.name == "adamw"
        if deferred and not can_defer:
            raise ValueError("deferred steps need AdamW, no MoE router update and strategy none or ddp")
        self.deferred = (self.device.type == "cuda" and can_defer) if deferred is None else deferred
        try:
            self.optimizer = build_optimizer(self.model, o, fused=self.device.type == "cuda" or self.deferred)
        except OptimizerError as e:
            raise TrainingError(str(e)) from None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, stage.max_steps, o))
        self.engine = None
        if strategy.startswith("zero"):
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

    def _grad_sync(self, enabled: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
        import contextlib

        if self.strategy == "ddp" and not enabled:
            return self.train_model.no_sync()
        if self.strategy in SHARDED:
            self.model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def _dtype(self) -> torch.dtype:
        if self.stage.dtype == "bfloat16" or (self.stage.dtype == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return torch.float32

    # -- state (training/resume.py)
    def save(self) -> Path | None:
        from minigpt_assets.training import resume

        return resume.save(self)

    def resume(self) -> int:
        """Continue from the newest complete checkpoint, if any; returns its step (0 when starting fresh)."""
        from minigpt_assets.training import resume

        return resume.resume(self)

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
    def to_device(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A batch array on the training device (a pinned tensor from `batches()` copies without blocking)."""
        if not isinstance(a, torch.Tensor):
            a = torch.from_numpy(np.ascontiguousarray(a))
        return a.to(self.device, non_blocking=True)

    def batches(self) -> "Prefetcher":
        """The loader's batches from its current state, made ahead by a background thread (pinned on a GPU)."""
        return Prefetcher(self.loader, pin=self.device.type == "cuda")

    def train_step(self, batch: dict) -> dict:
        return self._step(self.objective.prepare(batch))  # GRPO samples and scores its rollouts first

    def _step(self, batch: dict) -> dict:
        self.model.train()
        if self.engine is not None:
            n_micro = self.local_batch // self.micro
            return self._deepspeed_step(batch, n_micro, torch.zeros((), device=self.device))
        lr = float(self.scheduler.get_last_lr()[0])  # a tensor for torchao optimizers
        updates = [self._update(batch) for _ in range(self.objective.epochs)]  # ppo: epochs on one batch
        loss_value, grad_value, finite = updates[-1]
        if len(updates) > 1:  # the loss is the mean over the updates; the gradient norm the last update's
            loss_value = sum(u[0] for u in updates) / len(updates)
            finite = all(u[2] for u in updates) if not self.deferred else torch.stack([u[2] for u in updates]).all()
        self.scheduler.step()
        out = {"loss": loss_value, "grad_norm": grad_value, "lr": lr, "finite": finite, **self._stats_over_ranks()}
        if "tokens" in batch:
            out["tokens"] = batch["tokens"]
        return out

    def _update(self, batch: dict) -> tuple:
        """One optimizer update on the batch: forward and backward of every micro-batch, clipping, the step.
        Returns (loss, gradient norm, finite), on the device in the deferred mode."""
        total = self._until_it_fits(
            lambda: self._accumulate(batch),
            lambda: f"out of memory at micro_batch_size {self.micro} (batch {self.local_batch} per rank); "
                    "lower micro_batch_size, set it to auto, or turn on activation_checkpointing")
        self.autotune = False  # a step fitted: keep this micro-batch
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
            total /= self.world_size
        clip = self.stage.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor over the shards
            grad_norm = grad_norm.full_tensor()
        if self.deferred:  # no host sync: the fused optimizer skips a non-finite step on the device itself
            finite = torch.isfinite(total) & torch.isfinite(grad_norm)
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.step()
            loss_value, grad_value = total, grad_norm.detach()
        else:
            loss_value, grad_value = float(total), float(grad_norm)
            finite = math.isfinite(loss_value) and math.isfinite(grad_value)
            if finite:
                self.optimizer.step()
                if self.model_cfg.moe is not None:
                    self.model.update_router_bias()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_value, finite

    def _until_it_fits(self, attempt: Callable[[], Any], message: Callable[[], str]) -> Any:
        """`attempt()`; after an out-of-memory error under `micro_batch_size: auto`, halve the micro-batch and
        try again, else stop with `message()`. The retry runs after the `except` block: the error's traceback
        would otherwise keep the failed attempt's activations alive during it."""
        while True:
            try:
                return attempt()
            except torch.OutOfMemoryError:
                pass
            if not self.autotune or self.micro == 1:
                raise TrainingError(message())
            self._shrink_micro_batch()

    def _accumulate(self, batch: dict) -> torch.Tensor:
        """Forward and backward of every micro-batch; the summed loss."""
        n_micro = self.local_batch // self.micro
        total = torch.zeros((), device=self.device)
        for m in range(n_micro):
            with self._grad_sync(m == n_micro - 1):
                loss, self.stats = self.objective.loss(batch, m * self.micro, (m + 1) * self.micro)
                loss = loss / n_micro
                loss.backward()
            total += loss.detach()
        return total

    def _shrink_micro_batch(self) -> None:
        """Drop the failed attempt's gradients (and MoE routing counts), free the cached blocks, and halve the
        micro-batch to a divisor of the batch."""
        import gc

        self.optimizer.zero_grad(set_to_none=True)
        for moe in self.model.moe_layers() if self.model_cfg.moe is not None else []:
            moe.gate.tokens_per_expert.zero_()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        smaller = self.micro // 2
        while self.local_batch % smaller:
            smaller -= 1
        print(f"micro_batch_size auto: {self.micro} does not fit, trying {smaller}", flush=True)
        self.micro = smaller

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
            loss, self.stats = self.objective.loss(batch, m * self.micro, (m + 1) * self.micro)
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach() / n_micro
        torch.distributed.all_reduce(total)
        loss_value = float(total) / self.world_size
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        finite = math.isfinite(loss_value) and bool(self.engine.was_step_applied()) and math.isfinite(grad_norm)
        lr = float(self.scheduler.get_last_lr()[0])  # a tensor for torchao optimizers
        if finite and self.model_cfg.moe is not None:
            self.model.update_router_bias()
        self.scheduler.step()
        return {"loss": loss_value, "grad_norm": grad_norm, "lr": lr, "finite": finite, **self._stats_over_ranks()}

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the first `eval_batches` batches of the validation windows (a fixed set)."""
        if self.val is None or len(self.val) == 0:
            return None
        self.model.eval()
        n = min(len(self.val), self.stage.eval_batches * self.eval_micro)
        # the step-0 evaluation comes before any step: it may be what finds the micro-batch that fits
        val_loss, self.val_stats = self._until_it_fits(
            lambda: self.objective.evaluate(self.val, n),
            lambda: f"out of memory evaluating at micro_batch_size {self.micro}; "
                    "lower micro_batch_size or set it to auto")
        if self.strategy in SHARDED:  # no backward follows to free the gathered weights
            reshard(self.model)
        return val_loss

    def fit(self, max_steps: int | None = None, resume: bool = True) -> TrainResult:
        """Run until `stage.max_steps` (or `max_steps`, to stop early), checkpointing every
        `checkpoint_every` steps and at the end. On a GPU the step's numbers stay on the device until a log,
        eval or checkpoint step reads them all at once (`_settle`); too many non-finite steps in a row then stop
        the run at that step."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start = self.resume() if resume else 0
        stop = min(self.stage.max_steps, max_steps or self.stage.max_steps)
        rows: list[dict] = []
        self._pending: list[tuple[dict, dict]] = []
        self._last_loss, val_loss = float("nan"), None
        window_tokens = self.stage.batch_size * (self.loader.data.window - 1)
        if start == 0 and self.stage.eval_every and self.val is not None:
            val_loss = self.evaluate()  # the starting point of the validation curve
            self._emit({"stage": self.stage.stage_name, "step": 0, "val_loss": val_loss, **self.val_stats})
        self._t_settled = time.perf_counter()  # evaluation time is not training throughput
        it = self.batches()
        try:
            while self.step < stop:
                batch = next(it)
                out = self.train_step(batch)
                self.step += 1
                step_tokens = out.get("tokens", window_tokens)
                self.tokens += step_tokens
                row = {"stage": self.stage.stage_name, "step": self.step, "loss": out["loss"], "lr": out["lr"],
                       "grad_norm": out["grad_norm"], "tokens": self.tokens, "tokens_per_s": step_tokens,
                       "skipped": out["finite"], **{k: out[k] for k in STAGE_METRICS if k in out}}
                self._pending.append(row)
                rows.append(row)
                evals = bool(self.stage.eval_every) and self.step % self.stage.eval_every == 0
                logs = self.step % self.stage.log_every == 0 or self.step == stop
                saves = self.step % self.stage.checkpoint_every == 0 or self.step == stop
                if not self.deferred or evals or logs or saves:
                    self._settle()
                if evals:
                    val_loss = row["val_loss"] = self.evaluate()
                    row.update(self.val_stats)
                    self._t_settled = time.perf_counter()
                if logs:
                    self._emit(row)
                if self.hook:
                    self.hook("step", self.step)
                if saves:
                    if self.step == stop and self.val is not None and "val_loss" not in row:
                        val_loss = self.evaluate()
                        self._emit({"stage": self.stage.stage_name, "step": self.step, "val_loss": val_loss,
                                    **self.val_stats})
                    self.save()
                    self._t_settled = time.perf_counter()  # checkpoint time is not training throughput
        finally:
            it.close()
        return TrainResult(self.step, self._last_loss, val_loss, self.bad_steps,
                           ckpt.latest_checkpoint(self.ckpt_root), rows, start)

    def _settle(self) -> None:
        """Read the pending steps' loss, gradient norm and finiteness (one host sync for all), count non-finite
        steps, and give each row the throughput of the stretch since the last settle. Rows come in with
        `tokens_per_s` holding their step's tokens and `skipped` holding `finite`."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        keys = ("loss", "grad_norm", "skipped")
        lazy = [r[k] for r in pending for k in keys if isinstance(r[k], torch.Tensor)]
        values = iter(torch.stack([t.float() for t in lazy]).tolist()) if lazy else iter(())
        now = time.perf_counter()
        rate = sum(r["tokens_per_s"] for r in pending) / max(now - self._t_settled, 1e-9)
        self._t_settled = now
        for r in pending:
            for k in keys:
                if isinstance(r[k], torch.Tensor):
                    r[k] = next(values)
            finite = bool(r["skipped"])
            r["skipped"], r["tokens_per_s"] = not finite, rate
            if finite:
                self._last_loss = r["loss"]
                self.bad_in_a_row = 0
                continue
            self.bad_steps += 1
            self.bad_in_a_row += 1
            if self.bad_in_a_row >= self.stage.max_bad_steps:
                last = ckpt.latest_checkpoint(self.ckpt_root)
                raise TrainingError(f"{self.bad_in_a_row} non-finite losses in a row at step {r['step']}; "
                                    f"stopping (last good checkpoint: {last or 'none'})")


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
