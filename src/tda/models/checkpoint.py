"""Reading checkpoints for inference: a checked `read_checkpoint`, `load_checkpoint` -> (model, tokenizer),
and `checkpoint_info`. Training state (optimizer, RNG, atomic writes, resume) lives in tda.train.checkpoint.

A checkpoint is a zip archive written by torch.save holding a plain dict (loadable with weights_only=True):
`model` (state dict) and `model_config` (GPTConfig.to_dict()) always; `tokenizer`, `step`, `metrics`,
`best_val_loss`, `train_config`, ... when the trainer wrote it.

A run folder stands for the checkpoint inside it: best.pt if present, else last.pt (RUN_CHECKPOINTS).
Every problem with a file raises CheckpointError, a ValueError whose one-line message names the file.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..data.tokenizer import Tokenizer
from ..layers import ATTENTION
from .config import LEGACY_HEAD_NORM_EPS, GPTConfig
from .gpt import GPT
from .sharded import is_sharded_checkpoint, read_sharded_checkpoint

# which checkpoint of a run folder is used, in order of preference (*.dcp/: an FSDP run's sharded checkpoints)
RUN_CHECKPOINTS = ("best.pt", "last.pt", "best.dcp", "last.dcp")


class CheckpointError(ValueError):
    """A file that is not a usable tda checkpoint; the message is one line and names the file."""


def resolve_checkpoint(path) -> Path:
    """`path` itself if it is a file; for a run folder, its best.pt if present, else its last.pt."""
    p = Path(path)
    if is_sharded_checkpoint(p):  # also a crashed save's left-over previous shards
        return p
    if p.is_dir():
        for name in RUN_CHECKPOINTS:
            if (p / name).is_file() or is_sharded_checkpoint(p / name):
                return p / name
        raise CheckpointError(f"{p}: run folder holds no checkpoint ({' or '.join(RUN_CHECKPOINTS)})")
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file")
    return p


def _load(p: Path, device) -> object:
    """torch.load with every failure turned into a one-line CheckpointError."""
    with open(p, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{p}: empty file, not a checkpoint")
    if head.startswith(b"PK") and not zipfile.is_zipfile(p):
        raise CheckpointError(f"{p}: truncated or damaged checkpoint (the zip archive is incomplete)")
    if not head.startswith((b"PK", b"\x80")):  # neither torch.save's zip archive nor its legacy pickle
        raise CheckpointError(f"{p}: not a PyTorch checkpoint (no zip archive from torch.save)")
    try:
        return torch.load(p, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001  (the unpickler fails in many ways on foreign bytes)
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            # the safe unpickler refuses arbitrary Python objects: tda's trainer never writes them
            raise CheckpointError(f"{p}: holds Python objects other than tensors and plain data; "
                                  "not a tda checkpoint, and it is not unpickled") from None
        if head.startswith(b"PK"):
            raise CheckpointError(f"{p}: damaged checkpoint ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        raise CheckpointError(f"{p}: not a PyTorch checkpoint (no zip archive from torch.save)") from None


def read_checkpoint(path, device="cpu") -> dict:
    """The checkpoint dict of a file (or run folder), checked to be a tda checkpoint."""
    p = resolve_checkpoint(path)
    if is_sharded_checkpoint(p):  # consolidate the shards into one state dict
        try:
            return read_sharded_checkpoint(p)
        except Exception as e:  # noqa: BLE001  (DCP fails in many ways on damaged shards)
            raise CheckpointError(f"{p}: damaged sharded checkpoint ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
    ck = _load(p, device)
    if not isinstance(ck, dict):
        raise CheckpointError(f"{p}: holds a {type(ck).__name__}, not a tda checkpoint dict")
    missing = [k for k in ("model", "model_config") if k not in ck]
    if missing or not isinstance(ck.get("model"), dict) or not isinstance(ck.get("model_config"), dict):
        keys = ", ".join(map(str, list(ck)[:5])) + (", ..." if len(ck) > 5 else "")
        raise CheckpointError(f"{p}: not a tda checkpoint (needs 'model' and 'model_config' entries; "
                              f"has {keys or 'none'})")
    # written before the key existed: trained with the eps of that time, not the current default
    ck["model_config"].setdefault("head_norm_eps", LEGACY_HEAD_NORM_EPS)
    return ck


def model_config_of(ck: dict, path) -> GPTConfig:
    """The GPTConfig a checkpoint dict describes, or a CheckpointError naming the file."""
    mc = ck["model_config"]
    if mc.get("attention", "tda") not in ATTENTION:
        raise CheckpointError(f"{path}: model_config names attention {mc.get('attention')!r}, which this "
                              f"version of tda does not have ({', '.join(sorted(ATTENTION))})")
    try:
        return GPTConfig.from_dict(mc)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model_config: {e}") from None


def check_weights(model: torch.nn.Module, state: dict, path, what: str = "its model_config") -> None:
    """One-line CheckpointError unless `state` has exactly the model's parameter names and shapes
    (`what` names where the model's config came from)."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(want[k].shape)}" for k in want
              if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != want[k].shape)]
    if not (missing or unexpected or shapes):
        return

    def few(xs):
        return ", ".join(xs[:3]) + (f" and {len(xs) - 3} more" if len(xs) > 3 else "")
    parts = [f"{len(missing)} missing ({few(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
             f"{len(shapes)} of another shape ({few(shapes)})" if shapes else ""]
    raise CheckpointError(f"{path}: weights do not fit {what} "
                          f"({mc_summary(model.config)}): " + "; ".join(x for x in parts if x))


def mc_summary(c: GPTConfig) -> str:
    return f"{c.attention}, {c.n_layer} layers, {c.n_head} heads, n_embd {c.n_embd}, vocab {c.vocab_size}"


def load_checkpoint(path, device="cpu"):
    """(model, tokenizer) from any checkpoint the trainer writes, or a run folder (best.pt, else last.pt).
    The model is in eval mode on `device`; tokenizer is None if the run had none."""
    p = resolve_checkpoint(path)
    ck = read_checkpoint(p)
    model = GPT(model_config_of(ck, p))
    check_weights(model, ck["model"], p)
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    tokenizer = None
    if ck.get("tokenizer"):
        try:
            tokenizer = Tokenizer.from_dict(ck["tokenizer"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{p}: bad tokenizer entry ({type(e).__name__}: {e})") from None
    return model, tokenizer


def checkpoint_info(path) -> dict:
    """What a checkpoint holds: step, parameter counts, validation loss, configs (weights checked)."""
    p = resolve_checkpoint(path)
    ck = read_checkpoint(p)
    with torch.device("meta"):  # counts and names without allocating the weights
        model = GPT(model_config_of(ck, p))
    check_weights(model, ck["model"], p)
    vals = [r["val_loss"] for r in ck.get("metrics", []) if "val_loss" in r]
    tok = ck.get("tokenizer") or {}
    return {
        "path": str(p),
        "step": ck.get("step"),
        "params": model.num_params(non_embedding=False),
        "params_non_embedding": model.num_params(),
        "val_loss": vals[-1] if vals else None,
        "best_val_loss": ck.get("best_val_loss"),
        "elapsed_s": ck.get("elapsed"),
        "tokenizer": tok.get("name"),
        "has_optimizer": "optimizer" in ck,
        "model_config": ck["model_config"],
        "train_config": {k: v for k, v in (ck.get("train_config") or {}).items() if k != "model"},
    }
