"""One module per stage kind's objective, behind the interface of `base.Objective`."""

from __future__ import annotations

from minigpt_assets.training.objectives.base import Objective, sequence_logps
from minigpt_assets.training.objectives.language import Distillation, LanguageModeling, distill_kl, token_cross_entropy
from minigpt_assets.training.objectives.policy import GRPO
from minigpt_assets.training.objectives.ppo import PPO
from minigpt_assets.training.objectives.preference import DPO
from minigpt_assets.training.objectives.reward import RewardModeling, last_token_scores

__all__ = ["DPO", "GRPO", "PPO", "Distillation", "LanguageModeling", "Objective", "RewardModeling", "build_objective",
           "distill_kl", "last_token_scores", "sequence_logps", "token_cross_entropy"]


def build_objective(trainer, teacher=None, reward_model=None) -> Objective:
    """The objective of the trainer's stage kind (built after the starting weights are loaded: a reference
    copy is of those weights). `teacher`: distill's teacher folder; `reward_model`: ppo's reward model folder."""
    kind = trainer.stage.kind
    if kind == "distill":
        return Distillation(trainer, teacher)
    if kind == "dpo":
        return DPO(trainer)
    if kind == "grpo":
        return GRPO(trainer)
    if kind == "reward":
        return RewardModeling(trainer)
    if kind == "ppo":
        return PPO(trainer, reward_model)
    return LanguageModeling(trainer)  # pretrain, sft, lora
