"""FSDP2: shard parameters, gradients and optimizer state over the ranks with `fully_shard`.

Each transformer block is its own FSDP unit (its parameters are all-gathered just before its forward and
backward and freed after), then the root takes the rest (embedding / tied LM head, final norm). On CUDA the
units all-gather their parameters in the autocast dtype (bf16) and reduce-scatter gradients in fp32; the
sharded fp32 parameters are what AdamW updates. On a CPU everything stays fp32.
"""
from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ..models.gpt import GPT
from .distributed import DistContext


def mixed_precision(amp_dtype, device_type: str) -> MixedPrecisionPolicy:
    """bf16 (or the run's autocast dtype) parameters with fp32 gradient reduction on CUDA; fp32 on CPU."""
    if device_type == "cuda" and amp_dtype is not None:
        return MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model, ctx: DistContext, amp_dtype=None):
    """fully_shard every block, then the root, over a 1-D mesh of all ranks (in place; returns model).
    Call before building the optimizer: afterwards the parameters are sharded DTensors."""
    mesh = init_device_mesh(ctx.device_type, (ctx.world_size,))
    mp = mixed_precision(amp_dtype, ctx.device_type)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    # the root's parameters (embedding, tied LM head) are needed again at once by backward: keep them
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model


def unsharded_copy(model, ctx: DistContext):
    """A plain (unsharded) GPT with the sharded model's weights, on rank 0's device; None on other ranks.
    Collective: every rank takes part in the gather."""
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not ctx.is_main:
        return None
    plain = GPT(model.config)
    plain.load_state_dict(sd)
    return plain.to(ctx.device)
