"""Reward modeling (the first half of RLHF, as in InstructGPT): the starting model with a scalar head read at the
last token of prompt + answer, trained on preference pairs with the Bradley-Terry loss, so that
sigmoid(r(chosen) - r(rejected)) is the probability that the chosen answer is preferred."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minigpt_assets.training.objectives.base import Objective


def last_token_scores(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The score head's value at each row's last token [B] (fp32). Rows are next-token pairs (`ids`, `labels`,
    -100 off the answer): the sequence is `ids` up to the last labelled position plus that label, so the score
    reads a state that has seen the whole answer, its end token included."""
    b, t = ids.shape
    pos = torch.arange(t, device=ids.device)
    last = torch.where(labels != -100, pos, -1).max(1).values.clamp(min=0)
    rows = torch.arange(b, device=ids.device)
    full = torch.cat([ids, ids.new_zeros(b, 1)], 1)
    full[rows, last + 1] = labels[rows, last].clamp(min=0)
    return model(full, heads="score")[rows, last + 1].float()


class RewardModeling(Objective):
    val_stats = ("reward_accuracy", "reward_margin")

    def scores(self, model, batch: dict, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(r(chosen), r(rejected)) of rows lo:hi."""
        ids = self.to_device(np.concatenate([batch["chosen_ids"][lo:hi], batch["rejected_ids"][lo:hi]]))
        labels = self.to_device(np.concatenate([batch["chosen_labels"][lo:hi], batch["rejected_labels"][lo:hi]]))
        with self.autocast():
            return last_token_scores(model, ids, labels).chunk(2)

    def loss(self, batch: dict, lo: int, hi: int) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = self.scores(self.trainer.train_model, batch, lo, hi)
        margin = chosen - rejected
        loss = -F.logsigmoid(margin).mean()
        if self.stage.reward.center:
            loss = loss + self.stage.reward.center * ((chosen + rejected) ** 2).mean()
        m = margin.detach()
        return loss, {"reward_accuracy": float((m > 0).float().mean()), "reward_margin": float(m.mean())}
