"""Qwen3: per-head RMSNorm on queries and keys, no q/k/v bias, explicit head_dim; MoE as in Qwen3-MoE."""

from minigpt_assets.models.config import ModelConfig
from minigpt_assets.models.families._checks import require
from minigpt_assets.models.registry import Family, register


def _check(cfg: ModelConfig) -> None:
    require(cfg, "qwen3", qkv_bias=False, qk_norm=True)
    if cfg.moe and (cfg.moe.router != "softmax" or cfg.moe.n_shared):
        raise ValueError("family qwen3 routes with a softmax and has no shared experts (use family moe)")


FAMILY = register(Family(
    name="qwen3",
    description="Qwen3: GQA with q/k RMSNorm, no q/k/v bias, RoPE theta 1e6; optional softmax top-k MoE "
                "(Qwen3-MoE). Exports as Qwen3ForCausalLM / Qwen3MoeForCausalLM.",
    defaults={"rope_theta": 1000000.0, "norm_eps": 1e-6, "qk_norm": True, "bos_token_id": 151643,
              "eos_token_id": 151645},
    check=_check,
))
