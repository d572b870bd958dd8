"""Architecture families: a name -> defaults, checks and module. A family is one module in `families/` that
calls `register`; recipes name it with `family:`.

Every family builds the shared `Transformer`; what differs is which switches it turns on (q/k norm, q/k/v bias,
tied embeddings, RoPE base and scaling, MoE routing) and which combinations it allows. A family whose module
needs different code passes its own `build`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from minigpt_assets.models.config import ModelConfig


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    check: Callable[[ModelConfig], None] | None = None
    build: Callable[[ModelConfig], Any] | None = None


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def _load_builtin() -> None:
    pkg = importlib.import_module("minigpt_assets.models.families")
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")


def families() -> dict[str, Family]:
    if not _FAMILIES:
        _load_builtin()
    return dict(_FAMILIES)


def get_family(name: str) -> Family:
    fams = families()
    if name not in fams:
        raise ValueError(f"unknown model family {name!r} (known: {', '.join(sorted(fams))})")
    return fams[name]


def make_config(data: dict[str, Any]) -> ModelConfig:
    """Validate a model recipe: the family's defaults under the recipe's own fields, then the family's checks."""
    if not isinstance(data, dict) or "family" not in data:
        raise ValueError("a model recipe needs a `family` field")
    fam = get_family(data["family"])
    merged = {**fam.defaults, **data}
    if isinstance(fam.defaults.get("moe"), dict) and isinstance(data.get("moe"), dict):
        merged["moe"] = {**fam.defaults["moe"], **data["moe"]}
    cfg = ModelConfig.model_validate(merged)
    if fam.check:
        fam.check(cfg)
    return cfg


def build_model(cfg: ModelConfig | dict, device=None):
    """The module for a config. On device "meta" nothing is allocated or initialized (for counting, or for
    FSDP to shard before materializing)."""
    import torch

    if isinstance(cfg, dict):
        cfg = make_config(cfg)
    fam = get_family(cfg.family)
    if fam.build is not None:
        builder = fam.build
    else:
        from minigpt_assets.models.transformer import Transformer

        builder = Transformer
    if device is None:
        return builder(cfg)
    with torch.device(device):
        return builder(cfg)
