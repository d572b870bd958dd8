"""One module per stage kind's objective, behind the interface of `base.Objective`."""

from __future__ import annotations

from minigpt_assets.training.objectives.base import Objective, sequence_logps
from minigpt_assets.training.objectives.language import Distillation, LanguageModeling, distill_kl, token_cross_entropy
from minigpt_assets.training.objectives.policy import GRPO
from minigpt_assets.training.objectives.preference import DPO

__all__ = ["DPO", "GRPO", "Distillation", "LanguageModeling", "Objective", "build_objective", "distill_kl",
           "sequence_logps", "token_cross_entropy"]


def build_objective(trainer, teacher=None) -> Objective:
    """The objective of the trainer's stage kind (built after the starting weights are loaded: a reference
    copy is of those weights)."""
    kind = trainer.stage.kind
    if kind == "distill":
        return Distillation(trainer, teacher)
    if kind == "dpo":
        return DPO(trainer)
    if kind == "grpo":
        return GRPO(trainer)
    return LanguageModeling(trainer)  # pretrain, sft, lora
