"""float8 training (`precision: fp8` on a stage): the linear layers' matmuls in float8 through torchao's
`convert_to_float8_training` (dynamic tensorwise scaling), everything else in the stage's dtype.

It needs an NVIDIA GPU with fp8 tensor cores (compute capability 8.9 or newer: Ada, Hopper, Blackwell) and
torchao; elsewhere the stage stops before training with one line that says which is missing.
"""

from __future__ import annotations

import torch
from torch import nn


def fp8_problem(device: torch.device) -> str | None:
    """Why float8 training cannot run on `device` (None when it can)."""
    if device.type != "cuda":
        return (f"precision fp8 needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper); this run is "
                f"on {device.type}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return (f"precision fp8 needs compute capability 8.9 or newer (Ada, Hopper); "
                f"{torch.cuda.get_device_name(device)} is {major}.{minor}")
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return "precision fp8 needs torchao (pip install torchao)"
    return None


def float8_eligible(module: nn.Module, fqn: str) -> bool:
    """The linear layers float8 converts: not the output head (its logits feed the loss), and only shapes whose
    sides are multiples of 16 (what the fp8 matmul kernels take)."""
    return (isinstance(module, nn.Linear) and fqn != "lm_head" and module.in_features % 16 == 0
            and module.out_features % 16 == 0)


def to_float8(model: nn.Module) -> int:
    """Swap the eligible linear layers for torchao's Float8Linear in place; returns how many were swapped."""
    from torchao.float8 import convert_to_float8_training

    convert_to_float8_training(model, module_filter_fn=float8_eligible)
    return sum(type(m).__name__ == "Float8Linear" for m in model.modules())
