"""Llama 3.1 / 3.2 (and the Llama-2 shape): GQA, RoPE with Llama-3 frequency scaling, SwiGLU, RMSNorm."""

from minigpt_assets.models.families._checks import require
from minigpt_assets.models.registry import Family, register

FAMILY = register(Family(
    name="llama",
    description="Llama 3.1: grouped-query attention, RoPE theta 500000 with llama3 scaling, SwiGLU, RMSNorm; "
                "tied or untied embeddings. Exports as LlamaForCausalLM.",
    defaults={"rope_theta": 500000.0, "norm_eps": 1e-5, "tie_embeddings": False, "bos_token_id": 128000,
              "eos_token_id": 128001},
    check=lambda cfg: require(cfg, "llama", qkv_bias=False, qk_norm=False, moe=False),
))
