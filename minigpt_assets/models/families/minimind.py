"""MiniMind: the 26M-parameter teaching GPT this project starts from, in both generations.

minimind-3 (2026) is Qwen3-aligned: q/k RMSNorm, tied embeddings, vocab 6400, RoPE theta 1e6, and a MoE
variant with softmax top-1 routing over 4 experts. MiniMind2 (2025) has no q/k norm and its MoE adds shared
experts to softmax top-2 routing. The state-dict names of MiniMind's own checkpoints load directly
(`models.interop.load_minimind_state_dict`).
"""

from minigpt_assets.models.config import ModelConfig
from minigpt_assets.models.families._checks import require
from minigpt_assets.models.registry import Family, register


def _check(cfg: ModelConfig) -> None:
    require(cfg, "minimind", qkv_bias=False)
    if cfg.moe and cfg.moe.router != "softmax":
        raise ValueError("family minimind routes experts with a softmax (use family moe for sigmoid routing)")


FAMILY = register(Family(
    name="minimind",
    description="MiniMind (minimind-3 and MiniMind2, dense and MoE): vocab 6400, RoPE theta 1e6, tied "
                "embeddings. Exports as Qwen3ForCausalLM (with q/k norm) or LlamaForCausalLM (MiniMind2); "
                "MoE as Qwen3MoeForCausalLM when it has no shared experts.",
    defaults={"vocab_size": 6400, "rope_theta": 1000000.0, "norm_eps": 1e-6, "tie_embeddings": True,
              "qk_norm": True, "max_seq_len": 32768, "bos_token_id": 1, "eos_token_id": 2},
    check=_check,
))
