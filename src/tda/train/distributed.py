"""torchrun support: one process per device, DDP or FSDP2, rank 0 logs and checkpoints.

Without torchrun (WORLD_SIZE unset or 1) the DDP path is a no-op and the trainer runs as one process;
FSDP (parallel="fsdp") always runs in a process group, a single-rank one when there is no torchrun, so
one code path (sharded parameters, sharded checkpoints) serves every world size.
Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    owns_group: bool = False  # setup() started a single-rank process group (FSDP without torchrun)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def device_type(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"


def resolve_device(device: str = "auto", local_rank: int = 0) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    if device == "cuda":
        device = f"cuda:{local_rank}"
    return device


def setup(device: str = "auto", parallel: str = "ddp") -> DistContext:
    """Read torchrun's environment, pick the device, and init the process group when WORLD_SIZE > 1
    (or always, with parallel="fsdp": a single-rank group over an in-memory store without torchrun)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.startswith("cuda"):
        torch.cuda.set_device(dev)
    ctx = DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)
    if ctx.enabled and not dist.is_initialized():
        if ctx.device_type == "cuda":
            # binding the device up front lets NCCL set up eagerly and keeps barrier() on the right GPU
            dist.init_process_group(backend="nccl", device_id=torch.device(dev))
        else:
            dist.init_process_group(backend="gloo")
    elif parallel == "fsdp" and not dist.is_initialized():
        cuda = ctx.device_type == "cuda"  # bound device: no "guessing device ID" warning, barrier() on it
        dist.init_process_group(backend="nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1,
                                device_id=torch.device(dev) if cuda else None)
        ctx.owns_group = True
    return ctx


def wrap(model, ctx: DistContext):
    """DDP-wrap the model when distributed (DDP broadcasts rank 0's parameters at construction)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [torch.device(ctx.device).index] if ctx.device_type == "cuda" else None
    return DDP(model, device_ids=ids)


def no_sync(model, ctx: DistContext):
    """Skip the gradient reduction of this backward (a micro-batch before the last of a step).
    DDP: its no_sync(); FSDP2: set_requires_gradient_sync(False) until the context exits."""
    if not ctx.enabled:
        return contextlib.nullcontext()
    inner = model._orig_mod if hasattr(model, "_orig_mod") else model
    if hasattr(inner, "set_requires_gradient_sync"):
        return _fsdp_no_sync(inner)
    return model.no_sync()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def unwrap(model):
    """The bare nn.Module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_reduce_mean(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= ctx.world_size
    return x


def gather_objects(obj, ctx: DistContext) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext):
    if ctx.enabled:
        dist.barrier()


def cleanup(ctx: DistContext):
    if (ctx.enabled or ctx.owns_group) and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
