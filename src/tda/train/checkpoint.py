"""Checkpoints: atomic save, the user-facing `load_checkpoint`, and the trainer's `resume`.

A checkpoint is a plain dict (loadable with torch.load(weights_only=True)):
    model            state dict of the bare model (no DDP / torch.compile prefixes)
    optimizer        AdamW state dict (absent in best.pt, which is for inference)
    scaler           GradScaler state (float16 runs only)
    step             optimiser steps completed
    model_config     GPTConfig.to_dict()
    train_config     TrainConfig.to_dict()
    tokenizer        Tokenizer.to_dict() (None when the data directory had none)
    rng              one entry per rank: torch / cuda / numpy / python RNG states
    data             {"seed", "world_size", "step"}: batches are a pure function of these
    metrics          every metrics row written so far
    best_val_loss, elapsed, version
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..config import LEGACY_HEAD_NORM_EPS
from ..models.sharded import is_sharded_checkpoint, read_sharded_checkpoint

CHECKPOINT_VERSION = 1


# --- atomic write ---------------------------------------------------------------------------------
def _serialize(obj, f):
    """The one place bytes are written (tests patch this to simulate a crash mid-save)."""
    torch.save(obj, f)


def save_checkpoint(obj: dict, path) -> Path:
    """Write obj to path atomically: a temp file in the same directory, fsync, os.replace.

    A crash (or exception) at any point leaves the previous file at `path` untouched; the temp file
    is removed on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            _serialize(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # make the rename itself durable (POSIX); harmless where directories cannot be opened
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_checkpoint(path, device="cpu") -> dict:
    path = Path(path)
    if path.is_dir() or is_sharded_checkpoint(path):  # an FSDP run's folder: consolidate its shards
        return read_sharded_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ck = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(ck, dict) or "model" not in ck or "model_config" not in ck:
        raise ValueError(f"{path} is not a tda checkpoint (no 'model' / 'model_config' entries)")
    # written before the key existed: trained with the eps of that time, not today's default
    ck["model_config"].setdefault("head_norm_eps", LEGACY_HEAD_NORM_EPS)
    return ck


# --- RNG state ------------------------------------------------------------------------------------
def rng_state() -> dict:
    """This process's RNG states, as plain types (weights_only-loadable)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _to_lists(random.getstate()),
    }


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    random.setstate(_to_tuples(state["python"]))


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x


# --- loading --------------------------------------------------------------------------------------
def load_checkpoint(path, device="cpu"):
    """(model, tokenizer) from any checkpoint the trainer writes; the model is in eval mode on `device`.
    tokenizer is None if the run had none."""
    from ..config import GPTConfig
    from ..models.gpt import GPT

    ck = read_checkpoint(path, device="cpu")
    model = GPT(GPTConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    tokenizer = None
    if ck.get("tokenizer"):
        from ..data.tokenizer import Tokenizer
        tokenizer = Tokenizer.from_dict(ck["tokenizer"])
    return model, tokenizer


def resume(path, model, optimizer=None, scaler=None, rank: int = 0, device="cpu") -> dict:
    """Restore model, optimizer, scaler and this rank's RNG states in place from `path`.

    Returns the checkpoint dict (step, metrics, best_val_loss, elapsed, data, ...) for the trainer.
    """
    ck = read_checkpoint(path, device="cpu")
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "head_norm_eps"):
        # no shape tells this one apart: a resumed run at another eps would silently train a different model
        was = ck["model_config"]["head_norm_eps"]
        if was != cfg.head_norm_eps:
            raise ValueError(f"{path} was trained with model.head_norm_eps={was:g}, this config has "
                             f"{cfg.head_norm_eps:g}: pass --set model.head_norm_eps={was:g} to resume it")
    model.load_state_dict(ck["model"])
    if optimizer is not None:
        if "optimizer" not in ck:
            raise ValueError(f"{path} holds no optimizer state (best.pt is for inference); resume from last.pt")
        optimizer.load_state_dict(ck["optimizer"])
    if scaler is not None and ck.get("scaler") is not None:
        scaler.load_state_dict(ck["scaler"])
    rngs = ck.get("rng") or []
    if rngs:
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    return ck
