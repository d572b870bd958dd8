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


@torch.no_grad()
def score_answers(model_dir, rows: list[dict], tokenizer_dir=None, batch_size: int = 16, device: str = "cpu",
                  max_len: int | None = None) -> list[float]:
    """A published reward model's score of each `{"messages": [...prompt...], "answer": str}` (the prompt and the
    answer rendered with the chat template, as the model was trained; cut to `max_len` tokens, default the model's
    context), in order."""
    from pathlib import Path

    from minigpt_assets.data.chat import PreferencePairs, encode_conversation
    from minigpt_assets.models.interop import from_pretrained

    model = from_pretrained(model_dir).to(device).eval()
    if getattr(model, "score", None) is None:
        raise ValueError(f"{model_dir}: not a reward model (no score head)")
    tok = Path(tokenizer_dir or model_dir)
    encoded = [encode_conversation(tok, r["messages"] + [{"role": "assistant", "content": r["answer"]}])
               for r in rows]
    window = min(max_len or model.config.max_seq_len, model.config.max_seq_len, max(len(ids) for ids, _ in encoded))
    out: list[float] = []
    for lo in range(0, len(encoded), batch_size):
        part = encoded[lo:lo + batch_size]
        pairs = PreferencePairs([(e, e) for e in part], window - 1, 0)  # one side each: (ids, labels) padded
        batch = pairs.make_batch(np.arange(len(part)))
        ids, labels = (torch.from_numpy(batch[k]).to(device) for k in ("chosen_ids", "chosen_labels"))
        out += last_token_scores(model, ids, labels).tolist()
    return out
