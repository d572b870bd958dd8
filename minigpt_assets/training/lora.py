"""LoRA through peft: adapters injected into the model in place, merged into plain weights for checkpoints
and export, and written alone in peft's adapter format.

Our module names are Hugging Face's (`model.layers.0.self_attn.q_proj`), so the adapter folder loads with
`peft.PeftModel.from_pretrained` onto the model `minigpt export-hf` writes from the starting checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from minigpt_assets.training.config import LoraConfig

ADAPTER = "default"


def peft_config(cfg: LoraConfig):
    import peft

    return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=list(cfg.target_modules), use_rslora=cfg.rslora, bias="none")


def apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """Inject adapters into `model` (in place); only the adapter weights stay trainable."""
    import peft

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = sorted(set(cfg.target_modules) - names)
    if missing:
        raise ValueError(f"lora.target_modules: no linear layer named {', '.join(missing)} "
                         f"(the model has {', '.join(sorted(names))})")
    return peft.inject_adapter_in_model(peft_config(cfg), model, adapter_name=ADAPTER)


def is_adapter_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def _scales(model: torch.nn.Module) -> dict[str, float]:
    """Module name -> LoRA scaling (alpha / r, or alpha / sqrt(r))."""
    from peft.tuners.lora import LoraLayer

    return {n: float(m.scaling[ADAPTER]) for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def merged_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain model's state dict from an adapted model's full state dict: W + scale * B @ A for every
    adapted layer (in float32, cast back), the adapter keys dropped and `base_layer.` removed."""
    scales = _scales(model)
    out = {}
    for key, value in state.items():
        if is_adapter_key(key):
            continue
        if ".base_layer." in key:
            module, _, leaf = key.partition(".base_layer.")
            if leaf == "weight":
                a = state[f"{module}.lora_A.{ADAPTER}.weight"].float()
                b = state[f"{module}.lora_B.{ADAPTER}.weight"].float()
                value = (value.float() + scales[module] * (b @ a)).to(value.dtype)
            key = f"{module}.{leaf}"
        out[key] = value
    return out


def adapter_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if is_adapter_key(k)}


def write_peft_adapter(folder: Path, cfg: LoraConfig, adapter: dict[str, torch.Tensor]) -> None:
    """`adapter_config.json` + `adapter_model.safetensors` as `PeftModel.save_pretrained` writes them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    conf = peft_config(cfg).to_dict()
    conf = {k: (sorted(v) if isinstance(v, set) else v) for k, v in conf.items()}
    conf["peft_type"], conf["task_type"] = "LORA", "CAUSAL_LM"
    (folder / "adapter_config.json").write_text(json.dumps(conf, indent=2, default=str) + "\n")
    tensors = {"base_model.model." + k.replace(f".{ADAPTER}.", "."): v.contiguous() for k, v in adapter.items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
