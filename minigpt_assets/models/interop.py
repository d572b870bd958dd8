"""Checkpoints in and out: our folder format, Hugging Face folders, and MiniMind's own state dicts.

Our model folder: `model_config.json` (the validated `ModelConfig`), `model.safetensors`, and optionally the
tokenizer files. An HF folder: `config.json`, `model.safetensors` (or sharded with an index), tokenizer files.
The HF class follows from the architecture's switches, not from the family name:

| our switches                                   | transformers class        |
|------------------------------------------------|---------------------------|
| dense, no q/k norm, no q/k/v bias              | LlamaForCausalLM          |
| dense, q/k/v bias                              | Qwen2ForCausalLM          |
| dense, q/k norm                                | Qwen3ForCausalLM          |
| MoE, softmax router, no shared experts, q/k norm | Qwen3MoeForCausalLM     |
| MoE, sigmoid router (DeepSeek-V3 style)        | Glm4MoeForCausalLM        |

MiniMind2-MoE (softmax routing plus shared experts) has no transformers class with the same computation;
exporting it raises an error that says so (Qwen2-MoE gates its shared expert with a sigmoid, DeepSeek-V2/V3
use latent attention).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from minigpt_assets.models.config import ModelConfig, MoEConfig, RopeScaling
from minigpt_assets.models.registry import build_model, make_config

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class CheckpointError(ValueError):
    """A folder that is neither our checkpoint nor a loadable HF folder, or a state dict that does not fit."""


# ------------------------------------------------------------------------------------------------ HF mapping
def hf_class(cfg: ModelConfig) -> str:
    if cfg.moe is None:
        if cfg.qkv_bias and cfg.qk_norm:
            raise CheckpointError("q/k/v bias together with q/k norm has no transformers class")
        if cfg.qkv_bias:
            return "Qwen2ForCausalLM"
        return "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"
    m = cfg.moe
    if m.router == "sigmoid":
        return "Glm4MoeForCausalLM"
    if m.n_shared == 0 and cfg.qk_norm and not cfg.qkv_bias and m.routed_scaling_factor == 1.0:
        return "Qwen3MoeForCausalLM"
    raise CheckpointError(
        "this MoE (softmax routing with shared experts, as MiniMind2-MoE) has no transformers class that "
        "computes the same function; keep it in our format or drop the shared experts")


def _rope(cfg: ModelConfig) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rs = cfg.rope_scaling
        rope.update(rope_type="llama3", factor=rs.factor, low_freq_factor=rs.low_freq_factor,
                    high_freq_factor=rs.high_freq_factor,
                    original_max_position_embeddings=rs.original_max_position_embeddings)
    return rope


def hf_config(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """The transformers config.json for our config."""
    arch = hf_class(cfg)
    model_type = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                  "Qwen3MoeForCausalLM": "qwen3_moe", "Glm4MoeForCausalLM": "glm4_moe"}[arch]
    out: dict[str, Any] = {
        "architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.ffn_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.dim_head, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": _rope(cfg), "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "attention_dropout": 0.0, "use_cache": True, "dtype": dtype, "torch_dtype": dtype,
        "minigpt_family": cfg.family,
    }
    if cfg.rope_scaling is not None:
        out["rope_scaling"] = {k: v for k, v in _rope(cfg).items() if k != "rope_theta"}
    if arch == "LlamaForCausalLM":
        out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers,
                   attention_bias=False)
    if arch == "Qwen3MoeForCausalLM":
        m = cfg.moe
        out.update(num_experts=m.n_routed, num_experts_per_tok=m.top_k, moe_intermediate_size=cfg.expert_size,
                   norm_topk_prob=m.norm_topk_prob, decoder_sparse_step=1,
                   mlp_only_layers=list(range(m.first_dense_layers)), router_aux_loss_coef=m.aux_loss_coef,
                   output_router_logits=False)
    if arch == "Glm4MoeForCausalLM":
        m = cfg.moe
        out["rope_parameters"]["partial_rotary_factor"] = 1.0
        out.update(partial_rotary_factor=1.0, attention_bias=cfg.qkv_bias, use_qk_norm=cfg.qk_norm,
                   n_routed_experts=m.n_routed, n_shared_experts=m.n_shared, num_experts_per_tok=m.top_k,
                   moe_intermediate_size=cfg.expert_size, first_k_dense_replace=m.first_dense_layers,
                   routed_scaling_factor=m.routed_scaling_factor, norm_topk_prob=m.norm_topk_prob, n_group=1,
                   topk_group=1, num_nextn_predict_layers=0, num_mtp_layers=0)
    return out


def to_hf_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tensors under transformers' names: stacked experts split per expert, the balancing bias renamed."""
    arch = hf_class(cfg)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if (k == "lm_head.weight" and cfg.tie_embeddings) or k == "score.weight":  # a causal LM: no scalar head
            continue
        m = re.match(r"^(model\.layers\.\d+\.mlp)\.experts\.(gate_proj|up_proj|down_proj)$", k)
        if m:
            for e in range(v.shape[0]):
                out[f"{m.group(1)}.experts.{e}.{m.group(2)}.weight"] = v[e]
            continue
        if k.endswith("mlp.gate.expert_bias"):
            if arch == "Glm4MoeForCausalLM":
                out[k.replace("expert_bias", "e_score_correction_bias")] = v
            continue
        if ".mlp.shared_experts." in k and arch != "Glm4MoeForCausalLM":
            raise CheckpointError(f"{arch} has no shared experts")
        out[k] = v
    return {k: v.contiguous() for k, v in out.items()}


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Our config for a transformers config.json (llama, qwen2, qwen3, qwen3_moe, glm4_moe, minimind)."""
    mt = hf.get("model_type")
    rope = hf.get("rope_parameters") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or rope
    rope_scaling = None
    if (scaling.get("rope_type") or scaling.get("type")) == "llama3":
        rope_scaling = RopeScaling(factor=scaling["factor"], low_freq_factor=scaling["low_freq_factor"],
                                   high_freq_factor=scaling["high_freq_factor"],
                                   original_max_position_embeddings=scaling["original_max_position_embeddings"])
    heads = hf["num_attention_heads"]
    common: dict[str, Any] = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, intermediate_size=hf.get("intermediate_size"),
        max_seq_len=hf.get("max_position_embeddings", 2048), rope_theta=theta, rope_scaling=rope_scaling,
        norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=hf.get("initializer_range", 0.02),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=_first(hf.get("eos_token_id")),
    )
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
    if mt == "llama":
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise CheckpointError("Llama with attention_bias/mlp_bias is not supported")
        fam = hf.get("minigpt_family", "llama")
        return make_config({**common, "family": fam, "qkv_bias": False, "qk_norm": False})
    if mt == "qwen2":
        return make_config({**common, "family": "qwen2", "qkv_bias": True, "qk_norm": False})
    if mt in ("qwen3", "minimind") and not hf.get("use_moe"):
        fam = hf.get("minigpt_family", "qwen3" if mt == "qwen3" else "minimind")
        return make_config({**common, "family": fam, "qkv_bias": False, "qk_norm": True})
    if mt == "qwen3_moe":
        moe = MoEConfig(n_routed=hf.get("num_experts") or hf["num_local_experts"], n_shared=0, top_k=hf["num_experts_per_tok"],
                        intermediate_size=hf["moe_intermediate_size"], router="softmax",
                        norm_topk_prob=hf.get("norm_topk_prob", True),
                        aux_loss_coef=hf.get("router_aux_loss_coef", 0.0) if hf.get("output_router_logits") else 0.0,
                        first_dense_layers=len(hf.get("mlp_only_layers") or []))
        if hf.get("decoder_sparse_step", 1) != 1:
            raise CheckpointError("qwen3_moe with decoder_sparse_step != 1 is not supported")
        fam = hf.get("minigpt_family", "qwen3")
        return make_config({**common, "family": fam, "qkv_bias": False, "qk_norm": True, "moe": moe.model_dump()})
    if mt == "glm4_moe":
        if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5)) != 1.0:
            raise CheckpointError("glm4_moe with partial_rotary_factor != 1 is not supported")
        if hf.get("n_group", 1) != 1 or hf.get("topk_group", 1) != 1:
            raise CheckpointError("glm4_moe with grouped routing (n_group > 1) is not supported")
        moe = dict(n_routed=hf.get("n_routed_experts") or hf["num_local_experts"], n_shared=hf.get("n_shared_experts", 1),
                   top_k=hf["num_experts_per_tok"], intermediate_size=hf["moe_intermediate_size"],
                   router="sigmoid", norm_topk_prob=hf.get("norm_topk_prob", True),
                   routed_scaling_factor=hf.get("routed_scaling_factor", 1.0),
                   first_dense_layers=hf.get("first_k_dense_replace", 0))
        return make_config({**common, "family": "moe", "qkv_bias": bool(hf.get("attention_bias")),
                            "qk_norm": bool(hf.get("use_qk_norm")), "moe": moe})
    raise CheckpointError(f"model_type {mt!r} is not supported (llama, qwen2, qwen3, qwen3_moe, glm4_moe)")


def _first(x):
    return x[0] if isinstance(x, list) and x else x


def from_hf_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' tensors under our names: per-expert (or fused gate_up) weights stacked."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.startswith("model.layers.") and ".mtp" in k:
            continue
        m = _EXPERT.match(k)
        if m:
            experts.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = v
            continue
        if k.endswith("mlp.experts.gate_up_proj"):
            g, u = v.chunk(2, dim=1)
            out[k.replace("gate_up_proj", "gate_proj")] = g
            out[k.replace("gate_up_proj", "up_proj")] = u
            continue
        if k.endswith("mlp.experts.down_proj"):
            out[k] = v
            continue
        if k.endswith("e_score_correction_bias"):
            out[k.replace("e_score_correction_bias", "expert_bias")] = v.float()
            continue
        out[k] = v
    for (prefix, name), per in experts.items():
        out[f"{prefix}.experts.{name}"] = torch.stack([per[i] for i in range(len(per))])
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


# ------------------------------------------------------------------------------------------------ MiniMind
def load_minimind_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict saved by MiniMind's own code (minimind-3 or MiniMind2, dense or MoE) under our names.

    MiniMind names layers as transformers does; its MoE keeps experts in a list (`mlp.experts.{i}.*`), its
    router is `mlp.gate.weight`, MiniMind2 keeps shared experts in a list (`mlp.shared_experts.{j}.*`), and
    checkpoints saved from compiled or DDP-wrapped modules carry `_orig_mod.`/`module.` prefixes.
    """
    clean = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in sd.items()}
    clean = {k if k.startswith(("model.", "lm_head.")) else f"model.{k}": v for k, v in clean.items()}
    shared: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for k, v in clean.items():
        m = re.match(r"^(model\.layers\.\d+\.mlp)\.shared_experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", k)
        if m:
            shared.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = v
        elif k.endswith(("freqs_cos", "freqs_sin")):
            continue
        else:
            rest[k] = v
    # several shared SwiGLU experts summed == one SwiGLU whose hidden units are their concatenation
    for (prefix, name), per in shared.items():
        parts = [per[i] for i in range(len(per))]
        rest[f"{prefix}.shared_experts.{name}.weight"] = torch.cat(parts, dim=1 if name == "down_proj" else 0)
    return from_hf_state_dict(cfg, rest)


# ------------------------------------------------------------------------------------------------ folders
def _state_dict(model) -> dict[str, torch.Tensor]:
    """Persistent tensors only: rotary frequencies and router counts are non-persistent buffers."""
    return {k: v.detach() for k, v in model.state_dict().items()}


def _copy_tokenizer(src: Path | None, dst: Path) -> bool:
    if src is None:
        return False
    found = False
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dst / name)
            found = True
    return found


def _staged(out: Path) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: output folder exists and is not empty")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: Path) -> Path:
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def write_model_files(model, folder: Path, metadata: dict | None = None,
                      state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """model_config.json + model.safetensors into an existing folder (the caller stages and publishes it)."""
    from safetensors.torch import save_file

    cfg: ModelConfig = model.config
    (folder / CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
    sd = _state_dict(model) if state_dict is None else dict(state_dict)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(folder / WEIGHTS_FILE),
              metadata={"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}})


def save_model(model, out: str | Path, tokenizer: str | Path | None = None, metadata: dict | None = None) -> Path:
    """Write our folder format (staged, then renamed into place)."""
    out = Path(out)
    tmp = _staged(out)
    write_model_files(model, tmp, metadata)
    _copy_tokenizer(Path(tokenizer) if tokenizer else None, tmp)
    return _publish(tmp, out)


def export_hf(src: str | Path, out: str | Path, dtype: str | None = None, tokenizer: str | Path | None = None,
              card: Callable[[Any], str] | None = None) -> Path:
    """Our checkpoint folder (or a loaded model) -> a folder `AutoModelForCausalLM.from_pretrained` loads;
    `card(model)` returns its README.md (the model card)."""
    from safetensors.torch import save_file

    model = from_pretrained(src) if not isinstance(src, torch.nn.Module) else src
    cfg: ModelConfig = model.config
    sd = to_hf_state_dict(cfg, _state_dict(model))
    tdtype = getattr(torch, dtype) if dtype else next(iter(sd.values())).dtype
    sd = {k: (v.to(tdtype) if v.is_floating_point() and not k.endswith("e_score_correction_bias") else v)
          for k, v in sd.items()}
    out = Path(out)
    tmp = _staged(out)
    (tmp / "config.json").write_text(json.dumps(hf_config(cfg, str(tdtype).replace("torch.", "")), indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "do_sample": False}, indent=2) + "\n")
    save_file(sd, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    tok_src = tokenizer or (src if not isinstance(src, torch.nn.Module) else None)
    _copy_tokenizer(Path(tok_src) if tok_src else None, tmp)
    if card is not None:
        (tmp / "README.md").write_text(card(model))
    out = _publish(tmp, out)
    if problem := tokenizer_fidelity(out):
        import warnings

        warnings.warn(problem, TokenizerMismatchWarning, stacklevel=2)
    return out


class TokenizerMismatchWarning(UserWarning):
    """transformers loads an exported tokenizer that splits text differently from the one the model trained with."""


# texts on which pre-tokenizers disagree: digit runs, contractions, spacing, newlines, unnormalized unicode
FIDELITY_PROBES = ("The year 2024 had 365 days; pi is 3.14159.", "It's what they'd said: we'll see, I'm sure.",
                   "def f(x):\n    return x  +  1\n\n\n# done", "cafe\u0301 na\u0131ve \u00e9t\u00e9 \u65e5\u672c\u8a9e",
                   "  leading spaces,\ttabs and trailing   ", "!!! ??? ... --- ***")


def tokenizer_fidelity(folder: str | Path) -> str | None:
    """None when `transformers.AutoTokenizer` reads the folder's tokenizer as tokenizer.json defines it (the same
    ids on probe texts), else one line saying what differs. transformers 5 rebuilds some model types' tokenizers
    from vocab and merges with its own pre-tokenizer (Qwen2's), whatever tokenizer.json says."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        return None
    try:
        import transformers
        from tokenizers import Tokenizer
    except ImportError:
        return None
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))
    bad = [t for t in FIDELITY_PROBES if auto.encode(t, add_special_tokens=False) != raw.encode(t).ids]
    if not bad:
        return None
    return (f"{folder}: transformers {transformers.__version__} loads this tokenizer as {type(auto).__name__}, which "
            f"splits {len(bad)} of {len(FIDELITY_PROBES)} probe texts differently from tokenizer.json (e.g. "
            f"{bad[0]!r}), so transformers and lm-eval would not see the tokens the model trained on; train the "
            "tokenizer with `pre_tokenizer: qwen2` for qwen2-family models (minigpt evaluate reads tokenizer.json "
            "as is)")


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(folder / f)))
        return sd
    if (folder / WEIGHTS_FILE).is_file():
        return load_file(str(folder / WEIGHTS_FILE))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder}: no model.safetensors, sharded index or pytorch_model.bin")


def _load_into(cfg: ModelConfig, sd: dict[str, torch.Tensor], where: str, dtype=None):
    model = build_model(cfg, device="meta")
    model = model.to_empty(device="cpu")
    if "score.weight" in sd:  # a reward model (or a policy with PPO's value head)
        model.add_score_head()
    model.init_weights()  # buffers (rotary, router counts) and anything the checkpoint lacks is checked below
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")
               and not k.endswith("mlp.gate.expert_bias")]  # a zero balancing bias is the default
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not match the config: missing {missing[:4]}"
                              f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                              f"{'...' if len(unexpected) > 4 else ''}")
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def from_pretrained(path: str | Path, dtype: torch.dtype | None = None):
    """Load our checkpoint folder, an HF folder (llama/qwen2/qwen3/qwen3_moe/glm4_moe), or a MiniMind `.pth`
    (next to a `model_config.json`) into our module."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file() and path.suffix in (".pth", ".pt", ".bin"):
        cfg_file = path.with_name(CONFIG_FILE)
        if not cfg_file.is_file():
            raise CheckpointError(f"{path}: a MiniMind state dict needs its {CONFIG_FILE} beside it")
        cfg = make_config(json.loads(cfg_file.read_text()))
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return _load_into(cfg, load_minimind_state_dict(cfg, raw), str(path), dtype)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder")
    if (path / CONFIG_FILE).is_file():
        cfg = make_config(json.loads((path / CONFIG_FILE).read_text()))
        return _load_into(cfg, load_file(str(path / WEIGHTS_FILE)), str(path), dtype)
    if (path / "config.json").is_file():
        cfg = config_from_hf(json.loads((path / "config.json").read_text()))
        return _load_into(cfg, from_hf_state_dict(cfg, _read_hf_weights(path)), str(path), dtype)
    raise CheckpointError(f"{path}: neither {CONFIG_FILE} (our format) nor config.json (Hugging Face) found")


def import_hf(folder: str | Path, out: str | Path) -> Path:
    """An HF folder -> our checkpoint folder (tokenizer files copied)."""
    model = from_pretrained(folder)
    return save_model(model, out, tokenizer=folder)
