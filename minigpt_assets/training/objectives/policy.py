"""Group-relative policy optimization (GRPO; Shao et al. 2024, DeepSeekMath): sample a group of answers per
prompt, reward each with a rule, normalize the rewards within the group as advantages, and follow the policy
gradient with a per-token KL penalty (k3) to the frozen starting model."""

from __future__ import annotations

import numpy as np
import torch

from minigpt_assets.training.objectives.base import Objective, sequence_logps
from minigpt_assets.training.objectives.rollouts import rule_rewards, sample


class GRPO(Objective):
    counts_batch_tokens = True

    def __init__(self, trainer):
        from minigpt_assets.training.trainer import TrainingError

        if trainer.strategy not in ("none", "ddp"):  # the strategies that shard parameters
            raise TrainingError("grpo samples a different number of tokens on each rank; use strategy none or ddp")
        super().__init__(trainer)
        self.reference = self.frozen_copy()

    def prepare(self, batch: dict) -> dict:
        """Sample and score first; the update is then an ordinary accumulation over the rollouts."""
        return self.rollouts(self.trainer.loader.data, batch["windows"])

    def token_logps(self, model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Log-probability of each label under `model` [B, T] (0 where the label is ignored), at the sampling
        temperature, so the policy scored is the one that sampled."""
        with self.autocast():
            logits = model(ids)
        return sequence_logps(logits, labels, self.stage.grpo.temperature)

    @torch.no_grad()
    def rollouts(self, data, idx, greedy: bool = False) -> dict:
        """Sample `group_size` completions of each prompt in `idx` (one greedy one with `greedy`), reward them,
        and return padded sequences, completion labels and group-normalized advantages."""
        g = self.stage.grpo
        n = 1 if greedy else g.group_size
        t = self.trainer
        ro = sample(t.model, data, idx, n, g.max_new_tokens, g.temperature, g.top_k,
                    f"grpo:{self.stage.seed}:{t.step}", greedy, self.autocast)
        r = torch.tensor(rule_rewards(g.reward, data, ro), device=self.trainer.device).view(-1, n)
        adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4) if n > 1 else torch.zeros_like(r)
        adv = adv.flatten()
        if g.shuffle_advantages and not greedy:
            gen = torch.Generator().manual_seed(ro.seed % 2**63)  # the seed of the last prompt group: reproducible
            adv = adv[torch.randperm(len(adv), generator=gen).to(adv.device)]
        return {"input_ids": ro.ids, "labels": ro.labels, "advantages": adv,
                "reward": float(r.mean()), "completion_tokens": float(np.mean(ro.lengths)), "tokens": ro.tokens}

    def loss(self, batch: dict, lo: int, hi: int) -> tuple[torch.Tensor, dict[str, float]]:
        n = self.stage.grpo.group_size
        ids, labels = batch["input_ids"][lo * n:hi * n], batch["labels"][lo * n:hi * n]
        adv = batch["advantages"][lo * n:hi * n]
        mask = (labels != -100).float()
        logp = self.token_logps(self.trainer.train_model, ids, labels)
        with torch.no_grad():
            ref = self.token_logps(self.reference, ids, labels)
        d = ref - logp
        kl = torch.exp(d) - d - 1  # k3: unbiased, always >= 0
        ratio = torch.exp(logp - logp.detach())  # 1, with the policy gradient
        per_token = -(ratio * adv[:, None] - self.stage.grpo.beta * kl)
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
        return loss, {"reward": batch["reward"], "kl": float((kl.detach() * mask).sum() / mask.sum().clamp(min=1)),
                      "completion_tokens": batch["completion_tokens"]}

    def evaluate(self, val, n: int) -> tuple[float | None, dict[str, float]]:
        """The score that matters: greedy answers to held-out tasks."""
        out = self.rollouts(val, range(n), greedy=True)
        return None, {"val_reward": out["reward"]}
