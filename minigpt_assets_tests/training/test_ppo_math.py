"""PPO's arithmetic against its definitions: GAE against the textbook recursion, the clipped objectives against
numbers worked out by hand."""

from __future__ import annotations

import math
import random

import pytest
import torch

from minigpt_assets.training.objectives.ppo_math import gae, kl_rewards, policy_loss, value_loss, whiten


def _reference_gae(r: list[float], v: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    adv, last = [0.0] * len(r), 0.0
    for t in reversed(range(len(r))):
        nxt = v[t + 1] if t + 1 < len(r) else 0.0
        last = r[t] + gamma * nxt - v[t] + gamma * lam * last
        adv[t] = last
    return adv, [a + b for a, b in zip(adv, v)]


def test_gae_is_the_recursion_on_each_rows_real_tokens():
    rng = random.Random(0)
    lengths, t = [5, 1, 7, 0, 3], 7
    r = torch.tensor([[rng.uniform(-1, 1) for _ in range(t)] for _ in lengths], dtype=torch.float64)
    v = torch.tensor([[rng.uniform(-1, 1) for _ in range(t)] for _ in lengths], dtype=torch.float64)
    mask = torch.tensor([[1.0] * n + [0.0] * (t - n) for n in lengths], dtype=torch.float64)
    adv, ret = gae(r, v, mask, gamma=0.99, lam=0.95)
    for i, n in enumerate(lengths):
        ra, rr = _reference_gae(r[i, :n].tolist(), v[i, :n].tolist(), 0.99, 0.95)
        assert adv[i, :n].tolist() == pytest.approx(ra, abs=1e-12) and ret[i, :n].tolist() == pytest.approx(rr)
        assert adv[i, n:].abs().sum() == 0 and ret[i, n:].abs().sum() == 0  # padding stays out


def test_the_clipped_policy_objective_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 9.0]])
    adv = torch.tensor([[1.0, -1.0, 2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is padding: its huge ratio counts for nothing
    old = torch.zeros_like(ratio)
    loss, stats = policy_loss(torch.log(ratio), old, adv, mask, clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped); token 2: -2.2 (inside)
    assert float(loss) == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    logs = torch.log(ratio[0, :3])
    assert stats["approx_kl"] == pytest.approx(float((0.5 * logs ** 2).mean()))


def test_the_clipped_value_loss_by_hand():
    v, old = torch.tensor([[1.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    ret, mask = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = value_loss(v, old, ret, mask, clip=0.5)
    # token 0: V moved 1.0, clipped to 0.5: max((1-2)^2, (0.5-2)^2) = 2.25; token 1: max(1, 1) = 1
    assert float(loss) == pytest.approx(0.5 * (2.25 + 1.0) / 2) and stats["value_clip_fraction"] == 0.5


def test_kl_rewards_and_whitening():
    logp, ref = torch.tensor([[-1.0, -2.0, -0.5, 0.0]]), torch.tensor([[-1.5, -2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    r = kl_rewards(torch.tensor([3.0]), logp, ref, mask, beta=0.1)
    assert r[0].tolist() == pytest.approx([-0.05, 0.0, -0.05 + 3.0, 0.0])  # the score on the last real token
    x = torch.tensor([[1.0, 2.0, 6.0, 100.0]])
    w = whiten(x, mask)
    real = w[0, :3]
    assert float(real.mean()) == pytest.approx(0.0, abs=1e-6) and float(w[0, 3]) == 0.0
    assert float((real ** 2).mean()) == pytest.approx(1.0, rel=1e-5) and math.isfinite(float(w.sum()))
