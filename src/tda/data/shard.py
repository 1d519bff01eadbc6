"""Shippable shards of a prepared directory: a compressed subset under a byte budget, and its unpacking.

A machine that receives files only in small transfers (e.g. at most 64 MiB per call) cannot take a
150M-token corpus (~300 MB of uint16) at once. `write_shard` writes

  train.bin.xz   a contiguous slice of every source's training range, sized by the sampling mixture
                 (part k takes the k-th such slice, so parts 0, 1, ... hold disjoint tokens)
  val.bin.xz     a slice of every source's validation range (same mixture)
  long/*.bin.xz  a few held-out long documents, one source after another
  meta.json, tokenizer.json

with xz (LZMA) compression, choosing the number of training tokens so that the whole shard stays under
`max_bytes`. `unpack_shards` decompresses one or more parts into an ordinary prepared directory (the
parts' slices of each source joined into one range), which the trainer and the evaluators read as usual.
"""
from __future__ import annotations

import json
import lzma
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .dataset import load_meta, resolve_weights, split_ranges

__all__ = ["write_shard", "unpack_shards", "SHARD_FORMAT"]

SHARD_FORMAT = 1
_MIN_VAL_TOKENS = 8_192  # per source: enough for a few validation windows at context 1024+


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _xz(a: np.ndarray, preset: int) -> bytes:
    return lzma.compress(np.ascontiguousarray(a).tobytes(), format=lzma.FORMAT_XZ, preset=preset)


def _mixture(meta: dict, weights) -> dict[str, float]:
    ranges = split_ranges(meta, "train")
    if not ranges:
        raise ValueError("src_dir: the prepared directory records no per-source ranges; prepare it again")
    w = resolve_weights(meta, weights)
    if w is None:  # uniform over tokens = each source's share of the stream
        w = {s: float(hi - lo) for s, (lo, hi) in ranges.items()}
    total = sum(w.values())
    return {s: w.get(s, 0.0) / total for s in ranges}


def _slices(ranges: dict[str, tuple[int, int]], mix: dict[str, float], n_tokens: int, part: int,
            min_tokens: int = 0) -> dict[str, tuple[int, int]]:
    """[lo, hi) of the file per source: mix[s] * n_tokens tokens (at least min_tokens), part k offset."""
    out = {}
    for s, (lo, hi) in ranges.items():
        if mix.get(s, 0.0) <= 0:
            continue
        size = hi - lo
        n = min(size, max(int(round(mix[s] * n_tokens)), min_tokens))
        if n <= 0:
            continue
        start = lo + (part * n) % max(size - n + 1, 1)  # wraps when the source is smaller than parts * n
        out[s] = (start, start + n)
    return out


_SHARD_FILES = {"train.bin.xz", "val.bin.xz", "long", "tokenizer.json", "meta.json"}


def _check_shard_out(src: Path, out: Path) -> None:
    """out_dir is replaced as a whole: refuse anything but an empty folder or an earlier shard."""
    if out.resolve() == src.resolve():
        raise ValueError(f"out_dir: {out} is src_dir itself")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"out_dir: {out} exists and is not a folder")
    names = {p.name.removesuffix(".tmp") for p in out.iterdir()}
    if not names <= _SHARD_FILES:
        raise ValueError(f"out_dir: {out} holds files that are not a shard's ({sorted(names - _SHARD_FILES)[:3]}); "
                         "choose an empty or new folder")


def write_shard(src_dir: str | os.PathLike, out_dir: str | os.PathLike, *, max_bytes: int = 50 * 2**20,
                part: int = 0, weights: dict[str, float] | str | None = None, val_tokens: int = 1_000_000,
                long_docs: int = 8, long_min_tokens: int = 8_193, preset: int = 6, progress: bool = True) -> dict:
    """Write a compressed shard of prepared directory `src_dir` into `out_dir`, at most `max_bytes` in all.

    weights: the mixture the training slice follows (as in the `data.weights` config: None = the
    directory's default mixture, "natural", or {source: w}); val follows it too, with at least 8,192
    tokens per source. long_docs: held-out documents of >= long_min_tokens tokens, taken from the
    sources in turn. Returns the shard's meta.json contents (`shard` holds the sizes).
    """
    if max_bytes < 2**20:
        raise ValueError(f"max_bytes: must be >= 1 MiB, got {max_bytes}")
    if part < 0:
        raise ValueError(f"part: must be >= 0, got {part}")
    if not 0 <= preset <= 9:
        raise ValueError(f"preset: must be in 0..9, got {preset}")
    src, out = Path(src_dir), Path(out_dir)
    meta = load_meta(src)
    if meta.get("shard"):
        raise ValueError(f"src_dir: {src} is itself a shard; unpack it first")
    _check_shard_out(src, out)
    dtype = np.dtype(meta["dtype"])
    mix = _mixture(meta, weights)
    log = print if progress else (lambda *a, **k: None)

    if out.exists():
        shutil.rmtree(out)
    (out / "long").mkdir(parents=True)
    fixed = 0

    # validation: a mixture-shaped slice (the sampler applies the same weights to it)
    val = np.memmap(src / "val.bin", dtype=dtype, mode="r")
    val_sl = _slices(split_ranges(meta, "val") or {}, mix, val_tokens, 0, _MIN_VAL_TOKENS)
    val_arr = np.concatenate([val[lo:hi] for lo, hi in val_sl.values()])
    blob = _xz(val_arr, preset)
    _atomic_bytes(out / "val.bin.xz", blob)
    fixed += len(blob)
    val_ranges, pos = {}, 0
    for s, (lo, hi) in val_sl.items():
        val_ranges[s] = [pos, pos + hi - lo]
        pos += hi - lo

    # long documents, sources in turn
    by_source: dict[str, list[dict]] = {}
    for e in meta.get("long", []):
        if e["tokens"] >= long_min_tokens:
            by_source.setdefault(e["source"], []).append(e)
    chosen: list[dict] = []
    while len(chosen) < long_docs and any(by_source.values()):
        for q in by_source.values():
            if q and len(chosen) < long_docs:
                chosen.append(q.pop(0))
    long_index = []
    for e in chosen:
        ids = np.memmap(src / "long" / e["file"], dtype=dtype, mode="r")
        blob = _xz(ids, preset)
        _atomic_bytes(out / "long" / (e["file"] + ".xz"), blob)
        fixed += len(blob)
        long_index.append(e)
    (out / "long" / "index.json").write_text(json.dumps(long_index, indent=1))
    shutil.copy2(src / "tokenizer.json", out / "tokenizer.json")
    # + room for meta.json: the source's own (it is copied with small changes) and a margin
    fixed += (out / "tokenizer.json").stat().st_size + len(json.dumps(meta, indent=1)) + 16 * 1024
    budget = max_bytes - fixed
    if budget <= 0:
        raise ValueError(f"--max-mib: {max_bytes / 2**20:.2f} MiB do not even hold the validation tokens, long "
                         f"documents, tokenizer and meta.json ({fixed / 2**20:.2f} MiB); raise it or lower "
                         f"--val-tokens / --long-docs")

    # training slice: size from a compressed sample, then shrink until it fits
    train = np.memmap(src / "train.bin", dtype=dtype, mode="r")
    ranges = split_ranges(meta, "train")
    sample = np.concatenate([train[lo:hi] for lo, hi in _slices(ranges, mix, 2_000_000, part).values()])
    bytes_per_token = len(_xz(sample, preset)) / max(sample.size, 1)
    n = int(budget / bytes_per_token * 0.97)
    # a small sample compresses worse than the whole slice: grow (at most twice) while well under the
    # budget, shrink while over it; keep the largest slice that fits
    best = None
    for _ in range(6):
        tr_sl = _slices(ranges, mix, n, part)
        arr = np.concatenate([train[lo:hi] for lo, hi in tr_sl.values()])
        log(f"shard: compressing {arr.size:,} training tokens (~{bytes_per_token:.3f} bytes/token)", flush=True)
        blob = _xz(arr, preset)
        bytes_per_token = len(blob) / max(arr.size, 1)
        if len(blob) <= budget:
            if best is None or arr.size > best[1].size:
                best = (blob, arr, tr_sl)
            whole = sum(hi - lo for lo, hi in tr_sl.values()) >= sum(hi - lo for lo, hi in ranges.values())
            if len(blob) >= 0.95 * budget or whole or n >= 4 * int(budget / bytes_per_token):
                break
            n = int(n * budget / len(blob) * 0.98)
        else:
            n = int(n * budget / len(blob) * 0.98)
    if best is None:
        raise ValueError(f"--max-mib: no training slice fits the {budget / 2**20:.2f} MiB left for it")
    blob, arr, tr_sl = best
    _atomic_bytes(out / "train.bin.xz", blob)
    train_ranges, pos = {}, 0
    for s, (lo, hi) in tr_sl.items():
        train_ranges[s] = [pos, pos + hi - lo]
        pos += hi - lo

    new = {k: v for k, v in meta.items() if k not in ("long",)}
    new.update(
        train_tokens=int(arr.size), val_tokens=int(val_arr.size), long=long_index, long_docs=len(long_index),
        long_tokens=int(sum(e["tokens"] for e in long_index)),
        ranges=dict(train=train_ranges, val=val_ranges),
        shard=dict(format=SHARD_FORMAT, part=part, compression="xz", preset=preset, max_bytes=max_bytes,
                   source_dir=str(src), mixture=mix,
                   source_slices={s: list(v) for s, v in tr_sl.items()},
                   data_bytes=sum(f.stat().st_size for f in out.rglob("*") if f.is_file())),
    )
    _atomic_bytes(out / "meta.json", json.dumps(new, indent=1).encode())
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if total > max_bytes:
        raise ValueError(f"--max-mib: shard {out} came to {total / 2**20:.2f} MiB, over the "
                         f"{max_bytes / 2**20:.2f} MiB budget (its meta.json outgrew the room kept for it)")
    log(f"shard: {out} {total / 2**20:.1f} MiB: train {arr.size:,} tokens, val {val_arr.size:,}, "
        f"long {len(long_index)} docs", flush=True)
    return new


def _unxz(path: Path, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(lzma.decompress(path.read_bytes()), dtype=dtype)


def unpack_shards(shard_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  force: bool = False) -> dict[str, Any]:
    """Decompress shard parts into a prepared directory `out_dir` (train: the parts' slices of each source
    joined, so every source stays one range; val, long and the rest from the first part). A directory
    already unpacked from the same parts is left as is."""
    dirs = [Path(d) for d in shard_dirs]
    if not dirs:
        raise ValueError("shard_dirs: empty")
    metas = [load_meta(d) for d in dirs]
    for d, m in zip(dirs, metas):
        if not m.get("shard"):
            raise ValueError(f"shard_dirs: {d} is not a shard (no 'shard' in meta.json)")
    if len({m["config_hash"] for m in metas}) != 1 or len({m["dtype"] for m in metas}) != 1:
        raise ValueError("shard_dirs: parts come from different prepared directories")
    parts = [m["shard"]["part"] for m in metas]
    if len(set(parts)) != len(parts):
        raise ValueError(f"shard_dirs: repeated parts {parts}")
    out = Path(out_dir)
    if any(out.resolve() == d.resolve() for d in dirs):
        raise ValueError(f"out_dir: {out} is one of the shard folders")
    if (out / "meta.json").is_file() and "unpacked_from" not in load_meta(out):
        raise ValueError(f"out_dir: {out} holds a prepared folder that was not unpacked from shards; "
                         "choose another folder")
    key = dict(config_hash=metas[0]["config_hash"], parts=sorted(parts),
               sizes=[m["shard"]["data_bytes"] for m in sorted(metas, key=lambda m: m["shard"]["part"])])
    if not force and (out / "meta.json").is_file():
        try:
            if json.loads((out / "meta.json").read_text()).get("unpacked_from") == key:
                return load_meta(out)
        except ValueError:
            pass
    dtype = np.dtype(metas[0]["dtype"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    trains = [_unxz(d / "train.bin.xz", dtype) for d in dirs]
    sources = list(dict.fromkeys(s for m in metas for s in m["ranges"]["train"]))
    pieces, ranges, pos = [], {}, 0
    for s in sources:
        lo0 = pos
        for arr, m in zip(trains, metas):
            if s in m["ranges"]["train"]:
                lo, hi = m["ranges"]["train"][s]
                pieces.append(arr[lo:hi])
                pos += hi - lo
        ranges[s] = [lo0, pos]
    train = np.concatenate(pieces)
    _atomic_bytes(out / "train.bin", train.tobytes())
    _atomic_bytes(out / "val.bin", _unxz(dirs[0] / "val.bin.xz", dtype).tobytes())
    if (out / "long").exists():
        shutil.rmtree(out / "long")
    (out / "long").mkdir()
    for e in metas[0]["long"]:
        _atomic_bytes(out / "long" / e["file"], _unxz(dirs[0] / "long" / (e["file"] + ".xz"), dtype).tobytes())
    shutil.copy2(dirs[0] / "long" / "index.json", out / "long" / "index.json")
    shutil.copy2(dirs[0] / "tokenizer.json", out / "tokenizer.json")
    meta = dict(metas[0])
    meta.update(train_tokens=int(train.size), ranges=dict(train=ranges, val=metas[0]["ranges"]["val"]),
                unpacked_from=key)
    _atomic_bytes(out / "meta.json", json.dumps(meta, indent=1).encode())
    return meta
