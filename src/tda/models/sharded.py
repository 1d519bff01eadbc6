"""Reading a sharded (torch.distributed.checkpoint) training checkpoint in one process.

An FSDP run writes each checkpoint as a folder (e.g. runs/x/last.dcp/):
    .metadata, __<rank>_<i>.distcp   DCP shards of {"model": ..., "optim": ...}, one file set per writing rank
    trainer.pt                       everything that is not a sharded tensor: step, configs, tokenizer,
                                     per-rank RNG states, metrics (torch.save, weights_only-loadable)
The folder is replaced as a whole: NAME is renamed to .NAME.old, the finished temp folder to NAME, then
.NAME.old is removed. A crash between the two renames leaves only .NAME.old, which readers fall back to.

consolidate() gathers the model's full tensors from all shards without a process group; it needs only
torch, so it serves load_checkpoint / export on any machine, whatever the number of ranks that wrote it.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

TRAINER_STATE = "trainer.pt"
DCP_METADATA = ".metadata"

__all__ = ["TRAINER_STATE", "consolidate", "is_sharded_checkpoint", "read_sharded_checkpoint",
           "sharded_checkpoint_dir"]


def sharded_checkpoint_dir(path) -> Path | None:
    """The folder to read for `path`: path itself when complete, else its .old sibling left by a crash
    between the two renames of a save; None when neither is a complete sharded checkpoint."""
    path = Path(path)
    for cand in (path, path.parent / f".{path.name}.old"):
        if (cand / DCP_METADATA).is_file() and (cand / TRAINER_STATE).is_file():
            return cand
    return None


def is_sharded_checkpoint(path) -> bool:
    return sharded_checkpoint_dir(path) is not None


def _require(path) -> Path:
    d = sharded_checkpoint_dir(path)
    if d is None:
        raise ValueError(f"{path} is not a sharded tda checkpoint (needs {DCP_METADATA} and {TRAINER_STATE})")
    return d


def consolidate(path, prefix: str = "model") -> dict:
    """The full, unsharded state dict stored under `prefix` ("model" or "optim") as CPU tensors:
    every tensor is allocated at its global shape and DCP reads each shard's slice into it."""
    import torch.distributed.checkpoint as dcp
    d = _require(path)
    try:
        meta = dcp.FileSystemReader(str(d)).read_metadata()
    except Exception as e:  # a truncated or foreign .metadata: one line naming the folder
        raise ValueError(f"{d}: unreadable checkpoint metadata ({type(e).__name__}: {e})") from None
    head = prefix + "."
    state = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith(head) and hasattr(md, "size"):  # tensors; bytes entries have no size
            state[key[len(head):]] = torch.empty(tuple(md.size), dtype=md.properties.dtype)
    if not state:
        raise ValueError(f"{d} holds no '{prefix}' tensors")
    with warnings.catch_warnings():  # DCP warns that it loads in one process: that is the intent here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({prefix: state}, checkpoint_id=str(d), no_dist=True)
    return state


def read_trainer_state(path) -> dict:
    d = _require(path)
    try:
        ck = torch.load(d / TRAINER_STATE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{d / TRAINER_STATE}: not a readable trainer state ({type(e).__name__})") from None
    if not isinstance(ck, dict) or "model_config" not in ck:
        raise ValueError(f"{d / TRAINER_STATE} is not a tda trainer state (no 'model_config')")
    return ck


def read_sharded_checkpoint(path) -> dict:
    """The same dict a single-file checkpoint holds (model, model_config, tokenizer, step, ...), with the
    model's state dict consolidated from the shards. The optimizer state stays in the shards."""
    ck = read_trainer_state(path)
    ck["model"] = consolidate(path, "model")
    return ck
