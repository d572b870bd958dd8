"""Building blocks shared by every family: RMSNorm, rotary embeddings, attention backends, SwiGLU, MoE.

State-dict names follow the transformers convention (`self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`, ...)
so that dense checkpoints convert to and from Hugging Face folders by name, without reshaping.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from minigpt_assets.models.config import ModelConfig, RopeScaling


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and cast back (as Llama/Qwen/MiniMind do)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


# ------------------------------------------------------------------------------------------------ rotary
def rope_inv_freq(dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies of rotary embeddings, with Llama-3 scaling of the long wavelengths."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if scaling is None:
        return inv
    old = scaling.original_max_position_embeddings
    low_wavelen = old / scaling.low_freq_factor
    high_wavelen = old / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class Rotary(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("inv_freq", rope_inv_freq(cfg.dim_head, cfg.rope_theta, cfg.rope_scaling),
                             persistent=False)

    def reset_parameters(self) -> None:
        self.inv_freq = rope_inv_freq(self.cfg.dim_head, self.cfg.rope_theta, self.cfg.rope_scaling).to(
            self.inv_freq.device)

    def _apply(self, fn, recurse=True):
        """`model.to(bfloat16)` must not round the frequencies: at position 2000 a bf16 inv_freq is off by
        radians. Recompute them in float32 on the new device after any conversion."""
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32 and self.inv_freq.device.type != "meta":
            self.reset_parameters()
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [B, T, head_dim] for integer positions [B, T]."""
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B, T, D]. The rotate-half convention of Llama/Qwen/MiniMind."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# ------------------------------------------------------------------------------------------------ KV cache
class KVCache:
    """Pre-allocated keys/values for every layer; `length` tokens are filled."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.kv_heads, max_len, cfg.dim_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; {end} requested")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


# ------------------------------------------------------------------------------------------------ attention
def doc_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask [B, 1, T, T] (True = attend) from per-token document indices [B, T]."""
    t = doc_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return (causal & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]


def cu_seqlens_from_docs(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative sequence lengths over the flattened batch, for variable-length kernels."""
    b, t = doc_ids.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    idx = torch.nonzero(starts.flatten()).flatten()
    cu = torch.cat([idx, idx.new_tensor([b * t])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


@lru_cache(maxsize=1)
def _flex():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return torch.compile(flex_attention), create_block_mask


_BLOCK_MASK: list = [None, None]  # (key, mask) of the last doc_ids: every layer of a forward shares one mask


def _block_mask(doc_ids: torch.Tensor):
    key = (doc_ids.data_ptr(), doc_ids._version, tuple(doc_ids.shape), doc_ids.device)
    if _BLOCK_MASK[0] != key:
        _, create_block_mask = _flex()
        docs = doc_ids

        def mask_mod(b, _h, qi, ki):
            return (qi >= ki) & (docs[b, qi] == docs[b, ki])

        t = doc_ids.shape[1]
        _BLOCK_MASK[0], _BLOCK_MASK[1] = key, create_block_mask(mask_mod, doc_ids.shape[0], None, t, t,
                                                                device=doc_ids.device)
    return _BLOCK_MASK[1]


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def attention(q, k, v, backend: str, doc_ids: torch.Tensor | None, offset: int,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of q [B, H, Tq, D] over k, v [B, KV, Tk, D]; returns [B, H, Tq, D].

    `mask` [B, 1, Tq, Tk] (True = attend), when given, is the whole mask: a serving cache's rows of different
    lengths. `offset` is the number of cached positions before q (Tk = offset + Tq). `doc_ids` [B, Tq] restricts
    attention to the same packed document (only without a cache): on CUDA through flex attention (`sdpa`,
    `flex`) or flash-attn's variable-length kernel (`flash`), elsewhere through a block-diagonal SDPA mask.
    """
    h, kv, tq, tk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=h != kv)
    if doc_ids is not None and offset:
        raise ValueError("document masking is for training windows, not for cached decoding")
    if backend == "flash" and flash_attn_available() and q.is_cuda:
        from flash_attn import flash_attn_func, flash_attn_varlen_func

        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, T, H, D]
        if doc_ids is None:
            # flash-attn aligns the causal mask bottom-right, which is what a cache offset needs
            return flash_attn_func(qt, kt, vt, causal=True).transpose(1, 2)
        cu, mx = cu_seqlens_from_docs(doc_ids)
        b = q.shape[0]
        out = flash_attn_varlen_func(qt.reshape(b * tq, h, -1), kt.reshape(b * tk, kv, -1),
                                     vt.reshape(b * tk, kv, -1), cu, cu, mx, mx, causal=True)
        return out.view(b, tq, h, -1).transpose(1, 2)
    if backend in ("sdpa", "flex") and q.is_cuda and doc_ids is not None:
        # packed documents on the GPU: flex attention with a block mask skips whole blocks across documents
        flex, _ = _flex()
        return flex(q, k, v, block_mask=_block_mask(doc_ids), enable_gqa=h != kv)
    if backend == "eager":
        if h != kv:
            k = k.repeat_interleave(h // kv, dim=1)
            v = v.repeat_interleave(h // kv, dim=1)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
        mask = _mask(doc_ids, tq, tk, offset, q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return (scores.softmax(-1) @ v.float()).to(q.dtype)
    if doc_ids is None and (offset == 0 or tq == 1):
        # plain causal (or one new token that sees the whole cache): no mask tensor, so the fused kernels can
        # skip the masked-out blocks; an explicit causal mask would make them compute all of them
        return F.scaled_dot_product_attention(q, k, v, is_causal=tq > 1, enable_gqa=h != kv)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(doc_ids, tq, tk, offset, q.device),
                                          enable_gqa=h != kv)


def _mask(doc_ids, tq: int, tk: int, offset: int, device) -> torch.Tensor | None:
    """Boolean mask (True = attend) for the cases `is_causal` does not cover; None when nothing is masked."""
    if doc_ids is not None:
        return doc_mask(doc_ids)
    if tq == 1:
        return None
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=offset)


FUSE_PROJECTIONS = True  # in compiled code, q/k/v and gate/up as one matmul each (off: to measure the gain)


def _fuse(*linears: nn.Module) -> bool:
    """Whether projections that read the same input run as one matmul: only inside torch.compile, where
    concatenating the weights fuses with autocast's cast to bf16 (eager would copy them each step), and only for
    plain `nn.Linear` (LoRA and float8 layers keep their own forward)."""
    return FUSE_PROJECTIONS and torch.compiler.is_compiling() and all(type(m) is nn.Linear for m in linears)


def _fused_linear(x: torch.Tensor, *linears: nn.Linear) -> list[torch.Tensor]:
    """`[m(x) for m in linears]` as one matmul over the concatenated weights (the same parameters)."""
    weight = torch.cat([m.weight for m in linears])
    bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
    return list(F.linear(x, weight, bias).split([m.out_features for m in linears], dim=-1))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        d, hd = cfg.hidden_size, cfg.dim_head
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.norm_eps)
            self.k_norm = RMSNorm(hd, cfg.norm_eps)

    def forward(self, x, cos, sin, doc_ids=None, cache: KVCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        hd = self.cfg.dim_head
        if _fuse(self.q_proj, self.k_proj, self.v_proj):
            q, k, v = _fused_linear(x, self.q_proj, self.k_proj, self.v_proj)
            q, k, v = q.view(b, t, -1, hd), k.view(b, t, -1, hd), v.view(b, t, -1, hd)
        else:
            q = self.q_proj(x).view(b, t, -1, hd)
            k = self.k_proj(x).view(b, t, -1, hd)
            v = self.v_proj(x).view(b, t, -1, hd)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        offset, mask = 0, None
        if cache is not None:
            offset = cache.length
            k, v = cache.update(self.layer, k, v)
            mask = getattr(cache, "mask", None)  # a serving cache: rows of different lengths
        out = attention(q, k, v, self.cfg.attention, doc_ids, offset, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


# ------------------------------------------------------------------------------------------------ feed-forward
class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fuse(self.gate_proj, self.up_proj):
            gate, up = _fused_linear(x, self.gate_proj, self.up_proj)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@lru_cache(maxsize=None)
def _grouped_mm_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch build runs `torch._grouped_mm` (forward and backward, with an empty group) on this
    device and dtype, checked once against plain matmuls: CUDA needs bfloat16 on sm90+, CPU support is newer."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(10, 16, generator=g).to(device_type, dtype).requires_grad_()
        w = torch.randn(3, 8, 16, generator=g).to(device_type, dtype).requires_grad_()
        offs = torch.tensor([3, 3, 10], dtype=torch.int32, device=device_type)
        y = torch._grouped_mm(x, w.transpose(1, 2), offs=offs)
        y.square().sum().backward()
        x2, w2 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
        ref = torch.cat([x2[:3] @ w2[0].T, x2[3:] @ w2[2].T])
        ref.square().sum().backward()
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        return all(torch.allclose(a.float(), b, atol=tol * max(1.0, float(b.abs().max())), rtol=tol)
                   for a, b in ((y.detach(), ref.detach()), (x.grad, x2.grad), (w.grad, w2.grad)))
    except Exception:  # noqa: BLE001 - any failure means: use the bmm path
        return False


def _mm_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the experts' matmuls run in: autocast's where it is on (as `torch.bmm` would), else x's."""
    t = x.device.type
    return torch.get_autocast_dtype(t) if torch.is_autocast_enabled(t) else x.dtype


def _grouped_mm_ok(x: torch.Tensor) -> bool:
    return _grouped_mm_works(x.device.type, _mm_dtype(x))


class Experts(nn.Module):
    """`n` SwiGLU experts as stacked weights, applied to tokens sorted by expert in one batched call.

    Where this torch build supports it (CUDA bfloat16 on Hopper; CPU in recent releases) this is
    `torch._grouped_mm` over the sorted tokens; elsewhere the tokens are scattered into an [n, capacity, d]
    buffer (capacity = the busiest expert's count, so nothing is dropped) and multiplied with `torch.bmm`.
    Either way there is no Python loop over experts.
    """

    def __init__(self, n: int, d: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Parameter(torch.empty(n, hidden, d))
        self.up_proj = nn.Parameter(torch.empty(n, hidden, d))
        self.down_proj = nn.Parameter(torch.empty(n, d, hidden))

    def forward(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if _grouped_mm_ok(x_sorted):  # under autocast in its dtype (fp32 activations would not take this path)
            dt = _mm_dtype(x_sorted)
            x, offs = x_sorted.to(dt), torch.cumsum(counts, 0).to(torch.int32)
            g = torch._grouped_mm(x, self.gate_proj.to(dt).transpose(1, 2), offs=offs)
            u = torch._grouped_mm(x, self.up_proj.to(dt).transpose(1, 2), offs=offs)
            return torch._grouped_mm(F.silu(g) * u, self.down_proj.to(dt).transpose(1, 2), offs=offs)
        n = self.gate_proj.shape[0]
        expert = torch.repeat_interleave(torch.arange(n, device=x_sorted.device), counts,
                                         output_size=x_sorted.shape[0])
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(x_sorted.shape[0], device=x_sorted.device) - starts[expert]
        cap = int(counts.max()) if x_sorted.shape[0] else 0
        buf = x_sorted.new_zeros(n, cap, x_sorted.shape[1])
        buf[expert, slot] = x_sorted
        h = F.silu(torch.bmm(buf, self.gate_proj.transpose(1, 2))) * torch.bmm(buf, self.up_proj.transpose(1, 2))
        out = torch.bmm(h, self.down_proj.transpose(1, 2))
        return out[expert, slot]


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.weight = nn.Parameter(torch.empty(m.n_routed, cfg.hidden_size))
        # DeepSeek-V3 load balancing: added to the scores for top-k selection only, never to the weights
        self.register_buffer("expert_bias", torch.zeros(m.n_routed, dtype=torch.float32))
        # tokens routed to each expert since the last balancing update (not saved)
        self.register_buffer("tokens_per_expert", torch.zeros(m.n_routed, dtype=torch.float32), persistent=False)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.cfg, self.m = cfg, m
        self.gate = Router(cfg)
        self.experts = Experts(m.n_routed, cfg.hidden_size, cfg.expert_size)
        if m.n_shared:
            self.shared_experts = SwiGLU(cfg.hidden_size, cfg.expert_size * m.n_shared)
        self.aux_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top-k expert ids [N, k], their weights [N, k], all scores [N, E]) for tokens x [N, d]."""
        logits = F.linear(x.float(), self.gate.weight.float())
        scores = logits.softmax(-1) if self.m.router == "softmax" else logits.sigmoid()
        choice = scores + self.gate.expert_bias if self.m.router == "sigmoid" else scores
        idx = choice.topk(self.m.top_k, dim=-1).indices
        w = scores.gather(1, idx)
        if self.m.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return idx, w * self.m.routed_scaling_factor, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, w, scores = self.route(x)
        n_exp, k = self.m.n_routed, self.m.top_k
        flat = idx.flatten()
        counts = torch.bincount(flat, minlength=n_exp)
        order = torch.argsort(flat, stable=True)
        token = order // k
        out_sorted = self.experts(x[token], counts)
        y = torch.zeros_like(x, dtype=out_sorted.dtype)
        y.index_add_(0, token, out_sorted * w.flatten()[order, None].to(out_sorted.dtype))
        y = y.to(x.dtype)
        if self.m.n_shared:
            y = y + self.shared_experts(x)
        if self.training:
            with torch.no_grad():
                self.gate.tokens_per_expert += counts.float()
            if self.m.aux_loss_coef > 0:
                frac = counts.float() / max(flat.numel(), 1)
                probs = scores / scores.sum(-1, keepdim=True)
                self.aux_loss = self.m.aux_loss_coef * n_exp * (frac * probs.mean(0)).sum()
        return y.view(shape)


# ------------------------------------------------------------------------------------------------ block
class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer) else SwiGLU(cfg.hidden_size, cfg.ffn_size)

    def forward(self, x, cos, sin, doc_ids=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, doc_ids, cache)
        return x + self.mlp(self.post_attention_layernorm(x))
