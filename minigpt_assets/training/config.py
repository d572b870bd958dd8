"""Experiment recipes: a model recipe, a chain of stages with their hyperparameters, and a compute profile.

No torch here, so recipes validate without it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimConfig(_Strict):
    """AdamW with a warmup then a cosine or warmup-stable-decay (WSD) schedule down to `min_lr_ratio`·lr."""

    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1)  # wsd: share of the steps spent decaying
    grad_clip: float | None = Field(1.0, gt=0)


class ChatData(_Strict):
    """Conversations for SFT (jsonl rows {"messages": [...]}) or preference pairs for DPO (jsonl rows
    {"messages": [...prompt...], "chosen": str, "rejected": str}); `builtin: python_qa` is the offline demo set
    (for DPO: the right answer against the answer to another question)."""

    kind: Literal["builtin", "jsonl"] = "builtin"
    name: Literal["python_qa"] | None = "python_qa"
    location: str | None = None
    limit: int = Field(4000, gt=0)
    validation_fraction: float = Field(0.05, ge=0, lt=1)
    seq_len: int | None = Field(None, gt=0)  # packing window; default: the mixture's seq_len

    @model_validator(mode="after")
    def _check(self) -> "ChatData":
        if self.kind == "jsonl" and not self.location:
            raise ValueError("a jsonl chat dataset needs `location`")
        return self


class DPOConfig(_Strict):
    """Direct preference optimization against the frozen starting model: `sigmoid` is DPO (Rafailov et al.),
    `ipo` the squared-loss variant (Azar et al.); beta scales the log-ratio margin."""

    beta: float = Field(0.1, gt=0)
    loss: Literal["sigmoid", "ipo"] = "sigmoid"


class StageConfig(_Strict):
    """One training stage. `batch_size` is global (sequences per optimizer step, over all ranks);
    `micro_batch_size` is per rank and forward pass, the rest is gradient accumulation."""

    kind: Literal["pretrain", "sft", "dpo"] = "pretrain"
    name: str | None = None
    chat: ChatData | None = None  # sft: the conversations (loss on assistant tokens only); dpo: the preferences
    dpo: DPOConfig = DPOConfig()
    max_steps: int = Field(100, gt=0)
    batch_size: int = Field(16, gt=0)
    micro_batch_size: int | None = Field(None, gt=0)
    optim: OptimConfig = OptimConfig()
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False
    activation_checkpointing: bool | None = None  # None: as the model recipe says
    document_masking: bool = True
    checkpoint_every: int = Field(100, gt=0)
    keep_last: int = Field(2, ge=1)
    eval_every: int | None = Field(None, gt=0)
    eval_batches: int = Field(4, ge=1)
    log_every: int = Field(1, gt=0)
    max_bad_steps: int = Field(5, ge=1)  # non-finite losses in a row before the run stops

    @property
    def stage_name(self) -> str:
        return self.name or self.kind

    @model_validator(mode="after")
    def _check(self) -> "StageConfig":
        if self.kind in ("sft", "dpo") and self.chat is None:
            raise ValueError(f"an {self.kind} stage needs `chat:` (e.g. {{kind: builtin, name: python_qa}})")
        mb = self.micro_batch_size or self.batch_size
        if self.batch_size % mb:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({mb})")
        return self


class ExperimentRecipe(_Strict):
    model: str
    stages: list[StageConfig] = Field(min_length=1)
    compute: str = "local"
    description: str = ""

    @model_validator(mode="after")
    def _unique_stage_names(self) -> "ExperimentRecipe":
        kinds = [s.kind for s in self.stages]
        if kinds not in (["pretrain"], ["pretrain", "sft"], ["pretrain", "sft", "dpo"]):
            raise ValueError(f"stages must be pretrain, then optionally sft, then optionally dpo (got {', '.join(kinds)});"
                             " each starts from the one before")
        names = [s.stage_name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique (repeated: {', '.join(dup)}); set `name:`")
        return self
