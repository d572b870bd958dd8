"""DeepSeek-V3-style mixture of experts on a GQA attention stack.

Fine-grained routed experts plus shared experts, sigmoid scores, top-k routing, auxiliary-loss-free load
balancing by a per-expert router bias (`moe.bias_update_rate`), an optional auxiliary loss, and dense first
layers. DeepSeek-V3's multi-head latent attention is not used: attention is the same GQA as the other families,
which is what GLM-4.5 (Glm4MoeForCausalLM in transformers) pairs with the same MoE, so that is the export.
"""

from minigpt_assets.models.config import ModelConfig
from minigpt_assets.models.families._checks import require
from minigpt_assets.models.registry import Family, register


def _check(cfg: ModelConfig) -> None:
    require(cfg, "moe", moe=True)
    if cfg.moe.router != "sigmoid":
        raise ValueError("family moe routes with sigmoid scores and a balancing bias (moe.router: sigmoid)")


FAMILY = register(Family(
    name="moe",
    description="DeepSeek-V3-style MoE: routed + shared experts, sigmoid top-k routing with bias balancing, "
                "optional aux loss, dense first layers. Exports as Glm4MoeForCausalLM.",
    defaults={"rope_theta": 1000000.0, "norm_eps": 1e-6,
              "moe": {"router": "sigmoid", "n_routed": 16, "n_shared": 1, "top_k": 2, "norm_topk_prob": True,
                      "bias_update_rate": 0.001, "first_dense_layers": 1}},
    check=_check,
))
