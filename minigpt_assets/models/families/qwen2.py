"""Qwen2: Llama-like with a bias on the q/k/v projections, RoPE theta 1e6, tied embeddings at small sizes."""

from minigpt_assets.models.families._checks import require
from minigpt_assets.models.registry import Family, register

FAMILY = register(Family(
    name="qwen2",
    description="Qwen2: GQA with q/k/v bias, RoPE theta 1e6, RMSNorm eps 1e-6. Exports as Qwen2ForCausalLM.",
    defaults={"rope_theta": 1000000.0, "norm_eps": 1e-6, "qkv_bias": True, "tie_embeddings": False,
              "bos_token_id": 151643, "eos_token_id": 151643},
    check=lambda cfg: require(cfg, "qwen2", qkv_bias=True, qk_norm=False, moe=False),
))
