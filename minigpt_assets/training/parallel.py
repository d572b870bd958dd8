"""How a model is spread over torchrun's ranks: DDP replicates it; FSDP2 (`fully_shard`) shards every block
and then the root, so the optimizer built afterwards holds only this rank's shard of each parameter; HSDP is
FSDP2 on a 2-D mesh. DeepSpeed ZeRO lives in `training/zero.py`."""

from __future__ import annotations

import os

import torch

#: FSDP2 over one mesh dimension (fsdp), or two: replicated across nodes, sharded within a node (hsdp)
SHARDED = ("fsdp", "hsdp")


def parallelize(model: torch.nn.Module, strategy: str, world_size: int, device: torch.device, dtype: torch.dtype,
                compiled: bool, reshard_after_forward: bool = True) -> torch.nn.Module:
    """The module a training step calls. HSDP: each node's ranks (torchrun's LOCAL_WORLD_SIZE) shard the
    model, and the nodes hold replicas whose gradients are all-reduced, so the cross-node traffic is one
    all-reduce of a shard per step. Under bf16 the shards are gathered in bf16 (half the bytes of the fp32
    master weights, which the optimizer keeps) and gradients reduced in fp32, as torchtitan does. `compiled`:
    each block on its own (short compile times, and FSDP/checkpointing see the same modules). A world that does
    not split into nodes raises ValueError."""
    if strategy in SHARDED:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if dtype == torch.bfloat16 else MixedPrecisionPolicy())

        mesh = None
        if strategy == "hsdp":
            from torch.distributed.device_mesh import init_device_mesh

            local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            if world_size % local:
                raise ValueError(f"strategy hsdp: {world_size} ranks do not split into nodes of {local}")
            mesh = init_device_mesh(device.type, (world_size // local, local), mesh_dim_names=("replicate", "shard"))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
        fully_shard(model, mesh=mesh, mp_policy=mp)
    if compiled:
        for layer in model.model.layers:
            layer.compile()
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered weights of every FSDP2 module: after a forward without a backward (an evaluation),
    the root's stay gathered, and every block's under `reshard_after_forward: false`."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
