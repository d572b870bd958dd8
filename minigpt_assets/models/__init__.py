"""Pure-PyTorch models: the family registry, the shared transformer, HF/MiniMind interop. No Dagster here.

Names are resolved lazily so that validating recipes (`models.config`) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "config", "MoEConfig": "config",
    "families": "registry", "get_family": "registry", "make_config": "registry", "build_model": "registry",
    "register": "registry", "Family": "registry",
    "Transformer": "transformer", "generate": "transformer",
    "from_pretrained": "interop", "save_model": "interop", "export_hf": "interop", "import_hf": "interop",
    "load_minimind_state_dict": "interop",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)


__all__ = sorted(_EXPORTS)
