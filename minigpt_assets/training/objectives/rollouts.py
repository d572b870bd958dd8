"""Sampling answers to prompts for online RL (grpo, ppo): prompts of the same length are decoded as one batch
with the KV cache (no padding inside a prompt, so the decode is exact), each answer is cut after its first end
token, and the rows come back right-padded with next-token labels on the answer tokens only."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import xxhash


@dataclass
class Rollouts:
    ids: torch.Tensor  # [R, W] prompt + answer tokens, right-padded with 0, the last column dropped
    labels: torch.Tensor  # [R, W] the answer tokens as next-token labels, -100 elsewhere
    answers: list[str]  # decoded answer of each row
    prompt_rows: list[int]  # the prompt (an index into the data) of each row
    lengths: list[int]  # answer tokens of each row
    prompt_tokens: int  # sum of the rows' prompt lengths
    seed: int  # the sampling seed of the last prompt group (seeds a control run's shuffle)

    @property
    def tokens(self) -> int:
        return int((self.labels != -100).sum()) + self.prompt_tokens


@torch.no_grad()
def sample(model, data, idx, n: int, max_new_tokens: int, temperature: float, top_k: int | None,
           seed_key: str, greedy: bool = False, autocast=contextlib.nullcontext) -> Rollouts:
    """`n` answers to each prompt `data.prompts[i]` for i in `idx` (rows j*n .. j*n+n-1 answer idx[j]), sampled
    by `model` at `temperature` (greedy: argmax). The seed of each group of prompts is a function of `seed_key`
    (a training stage passes its kind, seed and step, so a resumed run samples the same answers) and the
    prompts; `autocast` is the context the forward passes run in."""
    from minigpt_assets.models.transformer import generate

    device = next(model.parameters()).device
    idx = [int(i) for i in idx]
    buckets: dict[int, list[int]] = {}
    for j, i in enumerate(idx):
        buckets.setdefault(len(data.prompts[i]), []).append(j)
    slots: list[tuple | None] = [None] * (len(idx) * n)  # (sequence, prompt length, answer, answer length)
    model.eval()
    seed = 0
    for plen, members in sorted(buckets.items()):
        prompts = torch.from_numpy(np.stack([data.prompts[idx[j]] for j in members])).to(device)
        prompts = prompts.repeat_interleave(n, dim=0)
        seed = xxhash.xxh64_intdigest(f"{seed_key}:{[idx[j] for j in members]}".encode())
        # compiled blocks (compile: auto on a GPU) would recompile for every cache length and layer: sample eagerly
        with autocast(), torch.compiler.set_stance("force_eager"):
            out = generate(model, prompts, max_new_tokens, temperature=0.0 if greedy else temperature,
                           top_k=top_k, eos_token_id=data.eos_id, seed=seed % 2**63)
        comp = out[:, plen:]
        is_eos = comp == data.eos_id
        keep = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to and including the first end token
        for row, (toks, k) in enumerate(zip(comp, keep)):
            j = members[row // n]
            toks = toks[k]
            slots[j * n + row % n] = (torch.cat([prompts[row], toks]), plen, data.decode(toks.tolist()), int(k.sum()))
    seqs, starts, answers, lengths = zip(*slots)
    width = max(len(x) for x in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    labels = torch.full_like(ids, -100)
    for r, (x, s0) in enumerate(zip(seqs, starts)):
        ids[r, :len(x)] = x
        labels[r, s0 - 1:len(x) - 1] = x[s0:]  # predict the answer tokens only
    return Rollouts(ids[:, :-1], labels[:, :-1], list(answers), [idx[r // n] for r in range(len(seqs))],
                    list(lengths), sum(starts), seed)


def rule_rewards(name: str, data, rollouts: Rollouts) -> list[float]:
    """The rule reward of each row's answer against its prompt's reference answer."""
    from minigpt_assets.training.rewards import REWARDS

    fn = REWARDS[name]
    return [fn(a, data.answers[i]) for a, i in zip(rollouts.answers, rollouts.prompt_rows)]
