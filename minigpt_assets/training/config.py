"""Experiment recipes: a model recipe, a chain of stages with their hyperparameters, and a compute profile.

No torch here, so recipes validate without it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimConfig(_Strict):
    """AdamW (or Muon on the hidden matrices with AdamW on the rest) with a warmup then a cosine or
    warmup-stable-decay (WSD) schedule down to `min_lr_ratio`·lr."""

    # adamw8bit: AdamW with 8-bit states (torchao), a quarter of AdamW's optimizer memory
    name: Literal["adamw", "muon", "adamw8bit"] = "adamw"
    momentum: float = Field(0.95, ge=0, lt=1)  # muon's (Nesterov) momentum
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
    """The data of a post-training stage, one jsonl row per example:
    - sft, lora, distill: conversations `{"messages": [{"role": ..., "content": ...}, ...]}`;
    - dpo: preference pairs `{"messages": [...prompt...], "chosen": str, "rejected": str}`;
    - grpo: tasks with a checkable answer `{"messages": [...prompt...], "answer": str}`.
    Offline demo sets (`kind: builtin`): `python_qa` (stdlib docstring questions; for dpo the rejected answer is
    the answer to another question, or with `preference: repetition` the right answer stuck in a loop) and
    `arithmetic` (generated sums and differences; for sft worked answers, for grpo tasks, for dpo a wrong
    result as the rejected answer)."""

    kind: Literal["builtin", "jsonl"] = "builtin"
    name: Literal["python_qa", "arithmetic"] | None = "python_qa"
    preference: Literal["other_answer", "repetition"] = "other_answer"  # builtin python_qa pairs for dpo
    max_operand: int = Field(20, ge=1, le=999)  # builtin arithmetic: operands from 0 to this
    location: str | None = None
    limit: int = Field(4000, gt=0)
    validation_fraction: float = Field(0.05, ge=0, lt=1)
    seq_len: int | None = Field(None, gt=0)  # packing window; default: the mixture's seq_len

    def file_digest(self) -> str | None:
        """sha256 of a jsonl file's bytes (None for the builtin sets or a missing file): part of the stage's run
        key and of the experiment's recipe version, so editing the data re-trains the stage."""
        if self.kind != "jsonl" or not self.location:
            return None
        path = Path(os.path.expandvars(self.location)).expanduser()
        if not path.is_file():
            return None
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

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


class LoraConfig(_Strict):
    """Low-rank adapters (peft) on the named linear layers; the base weights stay frozen. Checkpoints and the
    published model hold the merged weights, and the adapter alone in peft's format (`adapter/`)."""

    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"], min_length=1)
    rslora: bool = False  # scale by alpha/sqrt(r) instead of alpha/r


class DistillConfig(_Strict):
    """Knowledge distillation: KL(teacher || student) on softened logits (x temperature^2, as Hinton et al.),
    mixed with the plain next-token loss as `alpha`·KL + (1 - alpha)·CE. The teacher is a model folder (ours,
    a Hugging Face folder or a MiniMind .pth) or the published result of another experiment on the same
    mixture (its last stage, or `teacher_stage`). It must share the student's tokenizer."""

    teacher_path: str | None = None
    teacher_experiment: str | None = None
    teacher_stage: str | None = None
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)

    @model_validator(mode="after")
    def _one_teacher(self) -> "DistillConfig":
        if (self.teacher_path is None) == (self.teacher_experiment is None):
            raise ValueError("a distill stage names its teacher by exactly one of teacher_path or teacher_experiment")
        return self


class GRPOConfig(_Strict):
    """Group-relative policy optimization (Shao et al., DeepSeekMath): for each prompt sample `group_size`
    answers, reward each with a rule, normalize the rewards within the group as advantages, and maximize
    them with a per-token KL penalty (k3 estimator) to the frozen starting model. One policy update per
    batch of rollouts, so the PPO ratio is 1 in value and only its gradient counts."""

    group_size: int = Field(8, ge=2)
    max_new_tokens: int = Field(32, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, gt=0)
    beta: float = Field(0.04, ge=0)
    reward: Literal["number_match"] = "number_match"  # 1 if the last number of the answer equals the task's
    # a control run: the advantages permuted across the batch (seeded), noise of the same size and spread, so
    # what real advantages add over any update of that size shows
    shuffle_advantages: bool = False


class RewardConfig(_Strict):
    """A reward model (`kind: reward`): the starting model with a scalar head (`score`) read at the last token
    of prompt + answer, trained on preference pairs with the Bradley-Terry loss -log sigmoid(r_chosen -
    r_rejected). `center` adds `center`·(r_chosen + r_rejected)^2, which keeps the scores near 0 (InstructGPT
    normalizes its reward model's scores; this is the soft version, as in TRL's `center_rewards_coefficient`)."""

    center: float = Field(0.0, ge=0)


class RewardSource(_Strict):
    """Where a ppo stage's reward comes from: a trained reward model — another experiment's `reward` stage on
    the same mixture (`experiment`, and `stage` when it has several) — or a model folder (`path`)."""

    experiment: str | None = None
    stage: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "RewardSource":
        if (self.experiment is None) == (self.path is None):
            raise ValueError("reward_from names exactly one of experiment or path")
        return self


class PPOConfig(_Strict):
    """PPO against a reward (Schulman et al. 2017; the RLHF recipe of InstructGPT, Ouyang et al. 2022): sample
    one answer per prompt, score it (a trained reward model named by `reward_from`, or the rule `reward`), give
    every answer token the reward -beta·(log pi - log pi_ref) and the score on its last token, estimate
    advantages with GAE (gamma, lam) against a value head on the policy, then take `epochs` clipped updates
    (policy ratio clip `clip`, value clip `value_clip`, value loss weight `vf_coef`) per batch of rollouts."""

    reward: Literal["number_match"] | None = None  # a rule reward (as grpo), when no reward model is named
    reward_from: RewardSource | None = None
    epochs: int = Field(4, ge=1)
    clip: float = Field(0.2, gt=0)
    value_clip: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    beta: float = Field(0.05, ge=0)  # KL penalty to the frozen starting policy, per token
    max_new_tokens: int = Field(32, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, gt=0)
    whiten_advantages: bool = True
    # a control run, as grpo's: the advantages permuted across the batch's answer tokens (seeded)
    shuffle_advantages: bool = False

    @model_validator(mode="after")
    def _one_reward(self) -> "PPOConfig":
        if (self.reward is None) == (self.reward_from is None):
            raise ValueError("a ppo stage needs exactly one reward source: `reward: number_match` (a rule) or "
                             "`reward_from: {experiment: NAME}` (a trained reward model)")
        return self


STAGE_SLOTS = {"pretrain": 0, "sft": 1, "lora": 1, "distill": 1, "dpo": 2, "grpo": 2, "reward": 2, "ppo": 2}


class StageConfig(_Strict):
    """One training stage. `batch_size` is global (sequences per optimizer step, over all ranks; for grpo,
    prompts); `micro_batch_size` is per rank and forward pass, the rest is gradient accumulation."""

    kind: Literal["pretrain", "sft", "lora", "distill", "dpo", "grpo", "reward", "ppo"] = "pretrain"
    name: str | None = None
    chat: ChatData | None = None  # the stage's data (see ChatData); distill without it uses the mixture
    dpo: DPOConfig = DPOConfig()
    lora: LoraConfig | None = None  # adapters instead of full fine-tuning (implied by kind: lora)
    distill: DistillConfig | None = None
    grpo: GRPOConfig = GRPOConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig | None = None
    max_steps: int = Field(100, gt=0)
    batch_size: int = Field(16, gt=0)
    # auto: start at the whole per-rank batch and halve on CUDA out-of-memory until a step fits (one process)
    micro_batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] | None = None
    optim: OptimConfig = OptimConfig()
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool | Literal["auto"] = "auto"  # torch.compile each block; auto: on CUDA only
    fused_loss: bool | Literal["auto"] = "auto"  # chunked linear + cross-entropy, no fp32 logits; auto: on CUDA
    precision: Literal["default", "fp8"] = "default"  # fp8: linear matmuls in float8 (torchao; Ada/Hopper GPUs)
    activation_checkpointing: bool | None = None  # None: as the model recipe says
    # fsdp/hsdp: free each block's gathered weights after its forward (False: keep them for its backward, as
    # ZeRO-2 does: one all-gather a step instead of two, for the memory of the unsharded blocks)
    reshard_after_forward: bool = True
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

    @property
    def adapters(self) -> LoraConfig | None:
        """The LoRA settings this stage trains with, if any."""
        return self.lora or (LoraConfig() if self.kind == "lora" else None)

    @model_validator(mode="after")
    def _check(self) -> "StageConfig":
        if self.kind in ("sft", "lora", "dpo", "grpo", "reward", "ppo") and self.chat is None:
            example = "arithmetic" if self.kind in ("grpo", "ppo") else "python_qa"
            raise ValueError(f"a {self.kind} stage needs `chat:` (e.g. {{kind: builtin, name: {example}}})")
        if self.kind == "distill" and self.distill is None:
            raise ValueError("a distill stage needs `distill:` with teacher_path or teacher_experiment")
        if self.kind == "ppo" and self.ppo is None:
            raise ValueError("a ppo stage needs `ppo:` with its reward source (`reward: number_match`, or "
                             "`reward_from: {experiment: NAME}` naming a reward stage)")
        if self.kind != "ppo" and self.ppo is not None:
            raise ValueError(f"`ppo:` configures a ppo stage; this stage is {self.kind}")
        if self.kind == "ppo" and self.ppo.reward and self.chat.kind == "builtin" and self.chat.name != "arithmetic":
            raise ValueError(f"ppo with the rule reward {self.ppo.reward} needs tasks with checkable answers; builtin "
                             f"{self.chat.name} has none (use arithmetic, or a trained reward model)")
        if self.kind in ("reward", "ppo") and self.lora is not None:
            raise ValueError(f"`lora:` is not supported on a {self.kind} stage (its scalar head trains in full)")
        if self.kind == "pretrain" and self.lora is not None:
            raise ValueError("`lora:` adapts a trained model; it does not apply to pretraining")
        if self.kind == "grpo" and self.chat is not None and self.chat.kind == "builtin" and self.chat.name != "arithmetic":
            raise ValueError(f"grpo needs tasks with checkable answers; builtin {self.chat.name} has none (use arithmetic)")
        mb = self.batch_size if self.micro_batch_size in (None, "auto") else self.micro_batch_size
        if self.batch_size % mb:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({mb})")
        return self


class ExperimentRecipe(_Strict):
    model: str
    stages: list[StageConfig] = Field(min_length=1)
    compute: str = "local"
    description: str = ""

    def data_digests(self) -> dict[str, str]:
        """Stage name -> digest of its jsonl data file, for the stages that read one."""
        return {s.stage_name: d for s in self.stages if s.chat is not None and (d := s.chat.file_digest())}

    @model_validator(mode="after")
    def _unique_stage_names(self) -> "ExperimentRecipe":
        kinds = [s.kind for s in self.stages]
        if [STAGE_SLOTS[k] for k in kinds] != list(range(len(kinds))):
            raise ValueError("stages must be pretrain, then optionally one of sft, lora or distill, then optionally "
                             f"one of dpo, grpo, reward or ppo (got {', '.join(kinds)}); each starts from the one before")
        names = [s.stage_name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique (repeated: {', '.join(dup)}); set `name:`")
        return self
