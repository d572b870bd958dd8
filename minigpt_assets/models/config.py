"""Model configuration: one pydantic schema for every family, validated from `recipes/models/*.yaml`.

A family (see `registry.py`) supplies defaults and checks on top of this schema; the module itself is the shared
decoder-only transformer in `transformer.py`, switched by the fields below. This file imports no torch, so
recipes validate without it.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RopeScaling(_Strict):
    """Llama-3 frequency scaling (rope_type "llama3" in transformers): long wavelengths slowed by `factor`."""

    type: Literal["llama3"] = "llama3"
    factor: float = Field(8.0, gt=0)
    low_freq_factor: float = Field(1.0, gt=0)
    high_freq_factor: float = Field(4.0, gt=0)
    original_max_position_embeddings: int = Field(8192, gt=0)


class MoEConfig(_Strict):
    """Mixture of experts in the feed-forward layers (DeepSeek-V3 style when `router` is sigmoid).

    `n_routed` experts of width `intermediate_size`, each token sent to `top_k` of them, plus `n_shared`
    experts every token goes through. `router: softmax` scores experts with a softmax (MiniMind, Qwen3-MoE);
    `sigmoid` scores them independently and balances load without an auxiliary loss by a per-expert bias that
    is added for top-k selection only and nudged by `bias_update_rate` after each step (DeepSeek-V3).
    """

    n_routed: int = Field(8, ge=2)
    n_shared: int = Field(0, ge=0)
    top_k: int = Field(2, ge=1)
    intermediate_size: int | None = Field(None, gt=0)
    router: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = Field(1.0, gt=0)
    bias_update_rate: float = Field(0.0, ge=0)
    aux_loss_coef: float = Field(0.0, ge=0)
    first_dense_layers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "MoEConfig":
        if self.top_k > self.n_routed:
            raise ValueError(f"top_k ({self.top_k}) must be <= n_routed ({self.n_routed})")
        return self


class ModelConfig(_Strict):
    """Hyperparameters of a decoder-only transformer. Names follow the usual transformers config keys."""

    family: str
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int | None = Field(None, gt=0)
    head_dim: int | None = Field(None, gt=0)
    intermediate_size: int | None = Field(None, gt=0)
    max_seq_len: int = Field(2048, gt=0)
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: RopeScaling | None = None
    norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    moe: MoEConfig | None = None
    init_std: float = Field(0.02, gt=0)
    init: Literal["normal", "depth_scaled"] = "normal"
    attention: Literal["sdpa", "flash", "flex", "eager"] = "sdpa"
    activation_checkpointing: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        kv = self.kv_heads
        if self.num_heads % kv:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({kv})")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
                             " when head_dim is not given")
        if self.dim_head % 2:
            raise ValueError(f"head_dim ({self.dim_head}) must be even for rotary embeddings")
        if self.moe and self.moe.first_dense_layers > self.num_layers:
            raise ValueError("moe.first_dense_layers must be <= num_layers")
        return self

    # -- derived sizes
    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def ffn_size(self) -> int:
        """Dense feed-forward width; default is MiniMind's/LLaMA's 8/3·d rounded up to a multiple of 64."""
        if self.intermediate_size:
            return self.intermediate_size
        return 64 * math.ceil(int(self.hidden_size * 8 / 3) / 64)

    @property
    def expert_size(self) -> int:
        assert self.moe is not None
        return self.moe.intermediate_size or self.ffn_size

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.moe.first_dense_layers

    # -- parameter counts, without building the module
    def num_params(self, active: bool = False) -> int:
        """Parameters in the module (tied embeddings counted once); `active`: per token, for MoE."""
        d, hd = self.hidden_size, self.dim_head
        attn = d * self.num_heads * hd * 2 + d * self.kv_heads * hd * 2
        if self.qkv_bias:
            attn += (self.num_heads + 2 * self.kv_heads) * hd
        if self.qk_norm:
            attn += 2 * hd
        total = 0
        for layer in range(self.num_layers):
            total += attn + 2 * d
            if self.is_moe_layer(layer):
                m = self.moe
                per = 3 * d * self.expert_size
                experts = m.top_k if active else m.n_routed
                total += per * (experts + m.n_shared) + m.n_routed * d
            else:
                total += 3 * d * self.ffn_size
        total += self.vocab_size * d * (1 if self.tie_embeddings else 2) + d
        return total
