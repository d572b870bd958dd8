"""Direct preference optimization (Rafailov et al. 2023) and its IPO variant (Azar et al. 2023), measured
against the frozen starting model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minigpt_assets.training.objectives.base import Objective, sequence_logps


class DPO(Objective):
    val_stats = ("reward_accuracy",)

    def __init__(self, trainer):
        super().__init__(trainer)
        self.reference = self.frozen_copy()

    def sequence_logps(self, model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum of log-probabilities of the labelled tokens of each row."""
        with self.autocast():
            logits = model(ids)
        return sequence_logps(logits, labels).sum(-1)

    def loss(self, batch: dict, lo: int, hi: int) -> tuple[torch.Tensor, dict[str, float]]:
        ids = self.to_device(np.concatenate([batch["chosen_ids"][lo:hi], batch["rejected_ids"][lo:hi]]))
        labels = self.to_device(np.concatenate([batch["chosen_labels"][lo:hi], batch["rejected_labels"][lo:hi]]))
        pol_c, pol_r = self.sequence_logps(self.trainer.train_model, ids, labels).chunk(2)
        with torch.no_grad():
            ref_c, ref_r = self.sequence_logps(self.reference, ids, labels).chunk(2)
        margin = (pol_c - ref_c) - (pol_r - ref_r)
        d = self.stage.dpo
        if d.loss == "sigmoid":
            loss = -F.logsigmoid(d.beta * margin).mean()
        else:
            loss = ((margin - 1 / (2 * d.beta)) ** 2).mean()
        return loss, {"reward_accuracy": float((margin.detach() > 0).float().mean()),
                      "reward_margin": float(d.beta * margin.detach().mean())}
