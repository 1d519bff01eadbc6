"""Sharded training checkpoints for FSDP runs (torch.distributed.checkpoint), written atomically.

Every rank writes its own shards of the model and optimizer state into a temp folder; rank 0 adds the
non-tensor trainer state (trainer.pt), and after a barrier swaps the folder in by renames, so a crash at
any point of a save leaves the previous checkpoint readable (tda.models.sharded describes the layout).
Resuming reads the shards into whatever sharding the resuming run has: DCP reshards, so a run saved by
W ranks resumes on W' ranks.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                     set_state_dict)

from ..models.sharded import TRAINER_STATE, is_sharded_checkpoint, read_trainer_state, sharded_checkpoint_dir
from .checkpoint import save_checkpoint, set_rng_state
from .distributed import DistContext


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _write_shards(state: dict, folder: Path):
    """The one place shards are written (tests patch this to simulate a crash mid-save)."""
    dcp.save(state, checkpoint_id=str(folder))


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _swap_in(tmp: Path, path: Path):
    """path <- tmp by renames. While both exist, .NAME.old is the last good copy (readers fall back to it)."""
    old = path.parent / f".{path.name}.old"
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)  # path is complete, so a leftover .old is redundant
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_sharded(path, model, optimizer, trainer_state: dict, ctx: DistContext) -> Path:
    """Collective: every rank calls it. optimizer=None writes the model alone (an inference checkpoint).
    trainer_state is written by rank 0 (the other ranks may pass anything)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # a crashed earlier save
        tmp.mkdir(parents=True)
    _barrier()
    if optimizer is not None:
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optim": osd}
    else:
        state = {"model": get_model_state_dict(model)}
    try:
        _write_shards(state, tmp)
        if ctx.is_main:
            save_checkpoint(trainer_state, tmp / TRAINER_STATE)
    except BaseException:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier()  # every rank's shards are on disk before the folder becomes the checkpoint
    if ctx.is_main:
        _swap_in(tmp, path)
    _barrier()
    return path


def resume_sharded(path, model, optimizer=None, rank: int = 0) -> dict:
    """Collective: read the shards of `path` into the (sharded) model and optimizer in place, resharding
    as needed, and restore this rank's RNG states (rank 0's for a rank the saving run did not have).
    Returns the trainer state (step, rng, metrics, ...)."""
    d = sharded_checkpoint_dir(path)
    if d is None:
        raise FileNotFoundError(f"no sharded checkpoint at {path}")
    ck = read_trainer_state(d)
    cfg = getattr(model, "config", None)
    was = ck["model_config"].get("head_norm_eps")
    if cfg is not None and was is not None and was != getattr(cfg, "head_norm_eps", was):
        raise ValueError(f"{d} was trained with model.head_norm_eps={was:g}, this config has "
                         f"{cfg.head_norm_eps:g}: pass --set model.head_norm_eps={was:g} to resume it")
    if optimizer is not None:
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optim": osd}
    else:
        state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(d))
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        set_model_state_dict(model, state["model"])
    rngs = ck.get("rng") or []
    if rngs:
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    return ck


__all__ = ["is_sharded_checkpoint", "resume_sharded", "save_sharded"]
