"""What every stage's objective provides to the training loop, and the pieces several of them share.

The loop (`training/trainer.py`) builds the model, parallelizes it, steps the optimizer, checkpoints and resumes;
it knows no objective. An objective turns a batch from the loader into a loss and its statistics:

- `prepare(batch)`: anything done once per step before the micro-batches (GRPO and PPO sample their rollouts);
  a step then takes `epochs` optimizer updates on the prepared batch (one, except PPO's);
- `loss(batch, lo, hi)`: the loss of rows `lo:hi` and the objective's own numbers (reward, KL, accuracy);
- `evaluate(val, n)`: the validation loss (or None) and `val_*` statistics.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
import torch

from minigpt_assets.data.loader import make_batch

if TYPE_CHECKING:
    from minigpt_assets.training.trainer import Trainer


class Objective:
    """The stage kinds' common behaviour; a subclass implements `loss`."""

    #: statistics of `loss` averaged over the validation batches as `val_<name>`
    val_stats: tuple[str, ...] = ()
    #: the tokens a step trains come from the prepared batch (`batch["tokens"]`), not the window size
    counts_batch_tokens = False
    #: optimizer updates per prepared batch (ppo: several epochs over one batch of rollouts)
    epochs = 1

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.stage = trainer.stage

    # -- what the loop calls
    def prepare(self, batch: dict) -> dict:
        return batch

    def loss(self, batch: dict, lo: int, hi: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, val, n: int) -> tuple[float | None, dict[str, float]]:
        """Mean loss over the first `n` validation rows, a micro-batch at a time."""
        micro = self.trainer.micro
        losses, stats = [], {k: [] for k in self.val_stats}
        for lo in range(0, n, micro):
            idx = list(range(lo, min(n, lo + micro)))
            loss, s = self.loss(make_batch(val, idx), 0, len(idx))
            losses.append(float(loss))
            for k in self.val_stats:
                stats[k].append(s[k])
        return float(np.mean(losses)), {f"val_{k}": float(np.mean(v)) for k, v in stats.items() if v}

    # -- shared pieces
    def autocast(self):
        t = self.trainer
        if t.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(t.device.type, dtype=t.dtype)

    def to_device(self, a: np.ndarray) -> torch.Tensor:
        return self.trainer.to_device(a)

    def frozen_copy(self) -> torch.nn.Module:
        """The model as loaded, frozen: the reference a preference or policy objective is measured against."""
        import copy

        return copy.deepcopy(self.trainer.model).eval().requires_grad_(False)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each label [B, T] under `logits` at `temperature`, 0 where the label is -100."""
    logp = torch.log_softmax(logits.float() / temperature if temperature != 1.0 else logits.float(), dim=-1)
    tok = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return tok * (labels != -100)
