"""PPO against a reward, the second half of RLHF (InstructGPT's recipe): one sampled answer per prompt, scored by
a trained reward model or a rule; per-token rewards with a KL penalty to the frozen starting policy; advantages by
GAE against a value head on the policy (`score`, one scalar per position); then `epochs` clipped updates of
policy and value on the same rollouts. The arithmetic is `ppo_math`; the sampler is GRPO's (`rollouts`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from minigpt_assets.training.objectives.base import Objective
from minigpt_assets.training.objectives.ppo_math import gae, kl_rewards, masked_mean, policy_loss, value_loss, whiten
from minigpt_assets.training.objectives.reward import last_token_scores
from minigpt_assets.training.objectives.rollouts import Rollouts, rule_rewards, sample


def response_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [B, L], mask [B, L]): the label positions of each row's answer, left-aligned (the ppo_math
    layout), L the longest answer; padding positions repeat the last one and are masked."""
    has = labels != -100
    lengths = has.sum(1)
    width = max(int(lengths.max()), 1)
    start = torch.where(has, torch.arange(labels.shape[1], device=labels.device), labels.shape[1]).min(1).values
    start = torch.where(lengths > 0, start, 0)
    steps = torch.arange(width, device=labels.device)
    mask = steps[None] < lengths[:, None]
    pos = torch.minimum(start[:, None] + steps[None], (start + lengths - 1).clamp(min=0)[:, None])
    return pos, mask.float()


class PPO(Objective):
    counts_batch_tokens = True

    def __init__(self, trainer, reward_model: Path | None = None):
        from minigpt_assets.training.trainer import TrainingError

        if trainer.strategy not in ("none", "ddp"):  # the strategies that shard parameters
            raise TrainingError("ppo samples a different number of tokens on each rank; use strategy none or ddp")
        super().__init__(trainer)
        self.cfg = trainer.stage.ppo
        self.epochs = self.cfg.epochs
        self.reference = self.frozen_copy()
        self.reward_model = None
        if reward_model is not None:
            from minigpt_assets.models.interop import from_pretrained

            rm = from_pretrained(reward_model)
            if getattr(rm, "score", None) is None:
                raise TrainingError(f"{reward_model}: not a reward model (no score head); train one with kind: reward")
            self.reward_model = rm.to(trainer.device).eval().requires_grad_(False)

    def prepare(self, batch: dict) -> dict:
        return self.rollouts(self.trainer.loader.data, batch["windows"])

    def forward(self, model, ids: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor, entropy: bool = False):
        """(log pi of each answer token, value before it[, entropy of pi there]) in the response layout [B, L]."""
        with self.autocast():
            logits, values = model(ids, heads="both")
        t = self.cfg.temperature
        logp_all = torch.log_softmax(logits.float() / t if t != 1.0 else logits.float(), dim=-1)
        logp = logp_all.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        out = (logp.gather(1, pos), values.float().gather(1, pos))
        if entropy:
            with torch.no_grad():
                ent = -(logp_all.exp() * logp_all).sum(-1)
            out += (ent.gather(1, pos),)
        return out

    def scores(self, data, ro: Rollouts) -> torch.Tensor:
        if self.reward_model is not None:
            with self.autocast():
                return last_token_scores(self.reward_model, ro.ids, ro.labels)
        return torch.tensor(rule_rewards(self.cfg.reward, data, ro), device=self.trainer.device)

    @torch.no_grad()
    def rollouts(self, data, idx, greedy: bool = False) -> dict:
        """Sample an answer to each prompt, score it, and compute what the updates need: the rollout policy's log
        probabilities and values, the KL-shaped rewards, advantages and returns."""
        c, t = self.cfg, self.trainer
        ro = sample(t.model, data, idx, 1, c.max_new_tokens, c.temperature, c.top_k, f"ppo:{self.stage.seed}:{t.step}",
                    greedy, self.autocast)
        score = self.scores(data, ro)
        if greedy:
            return {"reward": float(score.mean())}
        pos, mask = response_positions(ro.labels)
        old_logp, old_values = self.forward(t.model, ro.ids, ro.labels, pos)
        ref_logp, _ = self.forward(self.reference, ro.ids, ro.labels, pos)
        rewards = kl_rewards(score, old_logp, ref_logp, mask, c.beta)
        adv, returns = gae(rewards, old_values * mask, mask, c.gamma, c.lam)
        if c.whiten_advantages:
            adv = whiten(adv, mask)
        if c.shuffle_advantages:  # the control run: the same advantages on other tokens (seeded)
            real = mask.flatten().nonzero().flatten()
            gen = torch.Generator().manual_seed(ro.seed % 2**63)
            flat = adv.flatten().clone()
            flat[real] = flat[real[torch.randperm(len(real), generator=gen).to(real.device)]]
            adv = flat.view_as(adv)
        kl = ((old_logp - ref_logp) * mask).sum(1).mean()  # per answer, summed over its tokens
        return {"input_ids": ro.ids, "labels": ro.labels, "pos": pos, "mask": mask, "old_logp": old_logp,
                "old_values": old_values, "advantages": adv, "returns": returns, "reward": float(score.mean()),
                "kl": float(kl), "completion_tokens": float(np.mean(ro.lengths)), "tokens": ro.tokens}

    def loss(self, batch: dict, lo: int, hi: int) -> tuple[torch.Tensor, dict[str, float]]:
        b = {k: v[lo:hi] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        mask = b["mask"]
        logp, values, ent = self.forward(self.trainer.train_model, b["input_ids"], b["labels"], b["pos"],
                                         entropy=True)
        pl, ps = policy_loss(logp, b["old_logp"], b["advantages"], mask, self.cfg.clip)
        vl, vs = value_loss(values, b["old_values"], b["returns"], mask, self.cfg.value_clip)
        return pl + self.cfg.vf_coef * vl, {
            "reward": batch["reward"], "kl": batch["kl"], "completion_tokens": batch["completion_tokens"],
            "clip_fraction": ps["clip_fraction"], "value_loss": float(vl.detach()),
            "entropy": float(masked_mean(ent, mask))}

    def evaluate(self, val, n: int) -> tuple[float | None, dict[str, float]]:
        """The held-out greedy answers' reward."""
        return None, {"val_reward": self.rollouts(val, range(n), greedy=True)["reward"]}
