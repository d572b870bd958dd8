"""The stage's optimizer: AdamW; AdamW with 8-bit states (torchao's `AdamW8bit`: blockwise-quantized moments,
what lets an 8B model with fp32 weights train on one 141 GB GPU); or Muon (Jordan et al. 2024; `torch.optim.Muon`)
on the hidden 2-D weights with AdamW on the rest (embeddings, output head, norms, biases, MoE routers and stacked
experts), as modded-nanogpt and MiniMind use it. Each is one `torch.optim.Optimizer` to the loop, the LR schedule
and checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from minigpt_assets.training.config import OptimConfig


class OptimizerError(RuntimeError):
    """An optimizer that cannot be built here (a missing library); one line for the user."""


def param_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """No decay on norms, biases and embeddings-as-vectors (every parameter with fewer than 2 dimensions)."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def muon_eligible(name: str, p: torch.nn.Parameter) -> bool:
    """Muon orthogonalizes matrices that map hidden states to hidden states: 2-D weights of the blocks; not the
    embedding or the output head (their rows are tokens), not the router (its rows are experts)."""
    return (p.ndim == 2 and ".layers." in f".{name}" and not name.endswith("gate.weight")
            and "embed_tokens" not in name and not name.startswith("lm_head"))


def build_optimizer(model: nn.Module, o: OptimConfig, fused: bool) -> torch.optim.Optimizer:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adamw = lambda ps: torch.optim.AdamW(param_groups(ps, o.weight_decay), lr=o.lr, betas=o.betas,  # noqa: E731
                                         eps=o.eps, fused=fused)
    if o.name == "adamw":
        return adamw([p for _, p in trainable])
    if o.name == "adamw8bit":
        try:
            from torchao.optim import AdamW8bit
        except ImportError:
            raise OptimizerError("optim name adamw8bit needs torchao (pip install torchao)") from None
        return AdamW8bit(param_groups([p for _, p in trainable], o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
    hidden = [p for n, p in trainable if muon_eligible(n, p)]
    rest = [p for n, p in trainable if not muon_eligible(n, p)]
    # "match_rms_adamw" (Moonlight) scales each update to AdamW's RMS, so the stage's lr and schedule carry over
    muon = torch.optim.Muon(hidden, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                            adjust_lr_fn="match_rms_adamw")
    return Chained([muon, adamw(rest)] if rest else [muon])


class Chained(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, seen as one: param_groups are theirs in order (so an LR
    scheduler scales them all), and state_dict numbers the parameters across them as a single optimizer would
    (so distributed-checkpoint state dicts keyed by parameter name work unchanged)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):  # noqa: D107 - no super().__init__: no params
        self.optimizers = optimizers
        self.defaults = {}
        from collections import OrderedDict

        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for o in self.optimizers:
            sd = o.state_dict()
            for g in sd["param_groups"]:
                groups.append({**g, "params": [i + offset for i in g["params"]]})
            state.update({i + offset: s for i, s in sd["state"].items()})
            offset += sum(len(g["params"]) for g in o.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups, state, start = state_dict["param_groups"], state_dict["state"], 0
        for o in self.optimizers:
            mine = groups[start:start + len(o.param_groups)]
            ids = [i for g in mine for i in g["params"]]
            o.load_state_dict({"state": {i: state[i] for i in ids if i in state}, "param_groups": mine})
            start += len(o.param_groups)
