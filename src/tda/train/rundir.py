"""A run folder's files and the rule that protects them: a new run never replaces a finished one unless asked.

A folder holding any of RUN_FILES holds a run. Training into it needs resume=True (continue from last.pt,
appending to metrics.jsonl) or overwrite=True (replace it); otherwise RunExistsError says what would be lost.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import torch

RUN_FILES = ("last.pt", "best.pt", "last.dcp", "best.dcp", "metrics.jsonl")


class RunExistsError(ValueError):
    """Training into a folder that holds a run, without resume or overwrite."""


def _describe_checkpoint(path: Path) -> str:
    """'last.pt: step 250, val loss 4.1234' (read lazily: mmap, no weights copied)."""
    try:
        mmap = zipfile.is_zipfile(path)  # torch.save's legacy format cannot be memory-mapped
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        vals = [r["val_loss"] for r in ck.get("metrics", []) if "val_loss" in r]
        val = f"val loss {vals[-1]:.4f}" if vals else "no validation loss yet"
        return f"{path.name}: step {ck.get('step')}, {val}"
    except Exception as e:  # noqa: BLE001  (an unreadable file is still a file that would be replaced)
        return f"{path.name}: unreadable ({type(e).__name__})"


def describe_run(out_dir) -> str:
    """What a run folder holds, in a few words; '' when it holds no run."""
    out = Path(out_dir)
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not present:
        return ""
    ckpts = [_describe_checkpoint(out / n) for n in ("last.pt", "best.pt") if n in present]
    ckpts += [f"{n}/ (sharded)" for n in ("last.dcp", "best.dcp") if n in present]
    return "; ".join(ckpts) if ckpts else "metrics.jsonl without a checkpoint"


def check_out_dir(out_dir, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to start a fresh run over an existing one (RunExistsError with a one-line message)."""
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: pass one of --resume, --overwrite")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir: {out} is a file, not a folder")
    if resume or overwrite:
        return
    what = describe_run(out)
    if what:
        raise RunExistsError(f"{out} already holds a run ({what}); pass --resume to continue it "
                             "or --overwrite to replace it")


def clear_run(out_dir) -> None:
    """Remove a run's files (overwrite=True, once the new run has started without error)."""
    for name in RUN_FILES:
        f = Path(out_dir) / name
        if f.is_dir():  # a sharded checkpoint
            shutil.rmtree(f)
        else:
            f.unlink(missing_ok=True)
