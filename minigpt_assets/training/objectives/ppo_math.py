"""The arithmetic of PPO for language models (Schulman et al. 2017; InstructGPT, Ouyang et al. 2022), on response
tokens: per-token rewards with a KL penalty to the reference policy, generalized advantage estimation, the
clipped policy objective and the clipped value loss. Tensors are [B, T] over the response tokens, right-padded;
`mask` is 1 on real tokens (a prefix of each row).

The PPO stage (`kind: ppo`, issue 16) builds on these; each is tested against its definition computed by hand.
"""

from __future__ import annotations

import torch


def kl_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
               beta: float) -> torch.Tensor:
    """Per-token rewards: -beta (log pi - log pi_ref) on every response token, plus the sequence's score [B] on its
    last real token."""
    rewards = -beta * (logp - ref_logp) * mask
    last = mask.sum(-1).long() - 1  # index of each row's last real token
    rows = torch.arange(len(score), device=score.device)
    has = last >= 0
    rewards[rows[has], last[has]] += score[has].to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalized advantage estimation; the value after a row's last token is 0.

    delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1}, over each row's real tokens."""
    b, t = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(b, dtype=rewards.dtype, device=rewards.device)
    for i in reversed(range(t)):
        nxt = mask[:, i + 1] if i + 1 < t else torch.zeros_like(mask[:, 0])
        next_value = values[:, i + 1] * nxt if i + 1 < t else torch.zeros_like(running)
        delta = rewards[:, i] + gamma * next_value - values[:, i]
        running = (delta + gamma * lam * running * nxt) * mask[:, i]
        adv[:, i] = running
    return adv, (adv + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the real tokens of the batch (the advantages, before the policy loss)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate: mean over real tokens of max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = pi / pi_old;
    with the share of tokens where the clipped term was the larger (clip fraction) and the approximate KL to
    the rollout policy."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = float(masked_mean((clipped > unclipped).float(), mask))
        approx_kl = float(masked_mean(0.5 * (logp - old_logp) ** 2, mask))
    return loss, {"clip_fraction": clip_frac, "approx_kl": approx_kl}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """0.5 x mean over real tokens of max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    a, b = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(a, b), mask)
    return loss, {"value_clip_fraction": float(masked_mean((b > a).float(), mask))}
