"""The decoder-only transformer every family instantiates, its initialization, and sampling with a KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minigpt_assets.models.config import ModelConfig
from minigpt_assets.models.cross_entropy import linear_cross_entropy
from minigpt_assets.models.layers import Block, Experts, KVCache, MoE, RMSNorm, Rotary, SwiGLU, _grouped_mm_works


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.rotary = Rotary(cfg)


class Transformer(nn.Module):
    """`model(input_ids) -> logits [B, T, vocab]`.

    Optional inputs: `position_ids` [B, T] (default 0..T-1 after the cache), `doc_ids` [B, T] for packed
    windows (attention stays inside each document), `cache` (a `KVCache` from `new_cache`, for decoding).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if self.lm_head.weight.device.type != "meta":
            self.init_weights()

    # -- init
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Family-correct init: N(0, init_std) for every matrix (the Llama/Qwen/MiniMind-3 recipe), norms at 1,
        biases and router biases at 0; `depth_scaled` also shrinks the output projections by 1/sqrt(2·layers)."""
        cfg = self.config
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.lm_head.weight.device).manual_seed(seed)
        std = cfg.init_std
        out_std = std / math.sqrt(2 * cfg.num_layers) if cfg.init == "depth_scaled" else std
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear):
                s = out_std if name.endswith(("o_proj", "down_proj")) else std
                nn.init.normal_(mod.weight, 0.0, s, generator=gen)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, 0.0, std, generator=gen)
            elif isinstance(mod, (RMSNorm, Rotary)):
                mod.reset_parameters()
            elif isinstance(mod, Experts):
                nn.init.normal_(mod.gate_proj, 0.0, std, generator=gen)
                nn.init.normal_(mod.up_proj, 0.0, std, generator=gen)
                nn.init.normal_(mod.down_proj, 0.0, out_std, generator=gen)
            elif isinstance(mod, MoE):
                nn.init.normal_(mod.gate.weight, 0.0, std, generator=gen)
                mod.gate.expert_bias.zero_()
                mod.gate.tokens_per_expert.zero_()

    # -- scalar head
    def add_score_head(self) -> None:
        """A scalar head on the final hidden state, `score` (transformers' name in its *ForSequenceClassification
        models): a reward model's score, or PPO's value of each position. N(0, init_std) like every matrix; a
        checkpoint with `score.weight` loads with the head (`interop.from_pretrained`)."""
        if getattr(self, "score", None) is not None:
            return
        w = self.lm_head.weight
        self.score = nn.Linear(self.config.hidden_size, 1, bias=False, device=w.device, dtype=w.dtype)
        if w.device.type != "meta":
            nn.init.normal_(self.score.weight, 0.0, self.config.init_std)

    # -- forward
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                labels: torch.Tensor | None = None, heads: str = "lm"):
        """Logits; with `labels` [B, T] (-100: not trained), the summed fp32 cross-entropy instead, computed a
        chunk of tokens at a time so the logits never exist whole (`cross_entropy.linear_cross_entropy`).
        `heads="score"`: the score head's value at every position [B, T] instead; `"both"`: (logits, scores)."""
        h = self.hidden_states(input_ids, position_ids, doc_ids, cache)
        if heads != "lm":
            scores = self.score(h).squeeze(-1)
            return scores if heads == "score" else (self.lm_head(h), scores)
        if labels is None:
            return self.lm_head(h)
        if isinstance(self.lm_head, nn.Linear):
            return linear_cross_entropy(h, self.lm_head.weight, labels)
        # an adapted head (LoRA on lm_head): the plain loss
        return F.cross_entropy(self.lm_head(h).float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                               reduction="sum")

    def hidden_states(self, input_ids, position_ids=None, doc_ids=None, cache=None) -> torch.Tensor:
        m = self.model
        b, t = input_ids.shape
        if position_ids is None:
            start = cache.length if cache is not None else 0
            position_ids = torch.arange(start, start + t, device=input_ids.device)[None]  # broadcast over batch
        x = m.embed_tokens(input_ids)
        cos, sin = m.rotary(position_ids, x.dtype)
        ckpt = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        if self.config.moe is not None:
            # probe grouped-GEMM support once, here: a probe inside a checkpointed layer would save tensors
            # in the first forward but not in the recomputation
            _grouped_mm_works(x.device.type, x.dtype)
        for layer in m.layers:
            if ckpt:
                x = checkpoint(layer, x, cos, sin, doc_ids, None, use_reentrant=False)
            else:
                x = layer(x, cos, sin, doc_ids, cache)
        if cache is not None:
            cache.length += t
        return m.norm(x)

    # -- MoE helpers
    def moe_layers(self) -> list[MoE]:
        return [mod for mod in self.modules() if isinstance(mod, MoE)]

    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the MoE auxiliary balance losses of the last training forward (None when disabled)."""
        losses = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    @torch.no_grad()
    def update_router_bias(self) -> dict[str, float]:
        """Auxiliary-loss-free balancing (DeepSeek-V3): after an optimizer step, raise the bias of
        under-loaded experts and lower it for over-loaded ones by `bias_update_rate`, then reset the counts.
        Token counts are summed over ranks first when torch.distributed is initialized. Returns the max/mean
        load ratio of the busiest layer, for logging."""
        worst = 0.0
        layers = self.moe_layers()
        if not layers:
            return {}
        counts = torch.stack([m.gate.tokens_per_expert for m in layers])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        for m, c in zip(layers, counts):
            if c.sum() == 0:
                continue
            worst = max(worst, float(c.max() / c.mean()))
            if m.m.bias_update_rate > 0:
                m.gate.expert_bias += m.m.bias_update_rate * torch.sign(c.mean() - c)
            m.gate.tokens_per_expert.zero_()
        return {"moe_max_load_ratio": worst}

    # -- sizes
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        w = self.lm_head.weight
        return KVCache(self.config, batch, max_len, w.device, w.dtype)


# ------------------------------------------------------------------------------------------------ sampling
def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V]: greedy at temperature 0, else top-k/top-p sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix reaching top_p (at least one token)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return torch.multinomial(F.softmax(logits, -1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model: Transformer, input_ids: torch.Tensor, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
             seed: int | None = None) -> torch.Tensor:
    """Continue `input_ids` [B, T] by up to `max_new_tokens` tokens with a KV cache; returns [B, T + new].

    Rows that emitted `eos_token_id` keep emitting it, so the batch stays rectangular."""
    was_training = model.training
    model.eval()
    b, t = input_ids.shape
    cache = model.new_cache(b, t + max_new_tokens)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=input_ids.device).manual_seed(seed)
    out = [input_ids]
    logits = model(input_ids, cache=cache)[:, -1]
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, gen)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        out.append(nxt[:, None])
        if eos_token_id is not None and bool(done.all()):
            break
        logits = model(nxt[:, None], cache=cache)[:, -1]
    model.train(was_training)
    return torch.cat(out, dim=1)


__all__ = ["Transformer", "generate", "sample_next", "KVCache", "SwiGLU"]
