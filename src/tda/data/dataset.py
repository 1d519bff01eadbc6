"""Memory-mapped token datasets and deterministic, resumable, rank-sharded batch sampling.

A batch is (x, y) with y = x shifted by one token, both int64 (B, T). For training across ranks,
`ShardedBatchSampler.batch(step)` is a pure function of (seed, step, rank, micro_step): an exact
resume only needs the step counter, and no sampler state has to be checkpointed.

Two options shape the windows:
  bos_id   a fixed first token: x = [bos, t_0 .. t_{T-2}], y = [t_0 .. t_{T-1}] -- position 0 always holds
           bos (eot in prepared data), train and validation alike, as in models trained with a BOS token
  weights  a mixture over the sources of a prepared directory: each window first picks a source with
           probability w_s / sum(w), then a start uniformly inside that source's token range
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "TokenDataset", "ShardedBatchSampler", "get_batch", "load_meta", "load_long_documents", "open_split",
    "document_starts", "cu_seqlens_from_starts", "resolve_weights", "split_ranges",
]


class TokenDataset(torch.utils.data.Dataset):
    """Windows of `block_size + 1` tokens over a flat token file; item i starts at token i.

    The file is opened lazily as a read-only np.memmap (and re-opened after pickling), so it costs no
    RAM and works in DataLoader worker processes.
    """

    def __init__(self, path_bin: str | os.PathLike, dtype: str | np.dtype = "uint16", block_size: int = 1024):
        self.path = Path(path_bin)
        if not self.path.is_file():
            raise FileNotFoundError(f"path_bin: no such token file {self.path}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise ValueError(f"dtype: expected uint16 or uint32, got {self.dtype}")
        if block_size < 1:
            raise ValueError(f"block_size: must be >= 1, got {block_size}")
        size = self.path.stat().st_size
        if size % self.dtype.itemsize:
            raise ValueError(f"dtype: {self.path} has {size} bytes, not a multiple of {self.dtype} ({self.dtype.itemsize})")
        self.n_tokens = size // self.dtype.itemsize
        if self.n_tokens < block_size + 1:
            raise ValueError(f"block_size: {block_size} + 1 exceeds the {self.n_tokens} tokens in {self.path}")
        self.block_size = block_size
        self._data: np.memmap | None = None

    @property
    def data(self) -> np.memmap:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._data

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_data"] = None  # never pickle the mapped array itself
        return d

    def __len__(self) -> int:
        return self.n_tokens - self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"i: {i} out of range [0, {len(self)})")
        chunk = torch.from_numpy(self.data[i:i + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]

    def windows(self, starts: np.ndarray, block_size: int | None = None,
                bos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack the windows beginning at `starts` into (x, y), each (len(starts), block_size).

        With bos_id, x[:, 0] = bos_id and the window reads block_size tokens: y = t[s : s+T] and
        x = [bos_id] + t[s : s+T-1], so every target is still the token after its input."""
        T = self.block_size if block_size is None else block_size
        n = T if bos_id is not None else T + 1
        idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(n, dtype=np.int64)[None, :]
        chunk = torch.from_numpy(self.data[idx].astype(np.int64))
        if bos_id is None:
            return chunk[:, :-1], chunk[:, 1:]
        bos = torch.full((chunk.shape[0], 1), int(bos_id), dtype=torch.int64)
        return torch.cat([bos, chunk[:, :-1]], dim=1), chunk

    def __repr__(self) -> str:
        return f"TokenDataset({str(self.path)!r}, dtype={self.dtype.name}, block_size={self.block_size}, n_tokens={self.n_tokens})"


def load_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    """meta.json of a prepared directory (see tda.data.prepare)."""
    p = Path(data_dir) / "meta.json"
    if not p.is_file():
        raise FileNotFoundError(f"data_dir: {Path(data_dir)} has no meta.json; run `tda data prepare` first")
    try:
        return json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"data_dir: {p} is not valid JSON ({e})") from None


def open_split(data_dir: str | os.PathLike, split: str, block_size: int) -> TokenDataset:
    """TokenDataset for split "train" or "val" of a prepared directory."""
    if split not in ("train", "val"):
        raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
    meta = load_meta(data_dir)
    return TokenDataset(Path(data_dir) / f"{split}.bin", meta["dtype"], block_size)


def split_ranges(meta: dict[str, Any], split: str) -> dict[str, tuple[int, int]] | None:
    """{source: (lo, hi)} token ranges of a split (None for directories written before ranges existed)."""
    r = (meta.get("ranges") or {}).get(split)
    return {s: (int(lo), int(hi)) for s, (lo, hi) in r.items()} if r else None


def resolve_weights(meta: dict[str, Any], weights: dict[str, float] | str | None) -> dict[str, float] | None:
    """The per-source weights to sample with: `weights` None -> the directory's default mixture
    (meta["mixture"]; None when plain uniform sampling already is it), "natural" -> None (uniform over
    tokens), a mapping -> checked (known sources, finite weights >= 0, some > 0). Sources left out of a
    mapping get weight 0."""
    if weights is None:
        return meta.get("mixture") or None
    if isinstance(weights, str):
        if weights != "natural":
            raise ValueError(f"weights: expected a mapping, 'natural' or None, got {weights!r}")
        return None
    if not isinstance(weights, dict):
        raise ValueError(f"weights: expected a mapping of source -> weight, got {type(weights).__name__}")
    known = set((meta.get("ranges") or {}).get("train") or {})
    if not known:
        raise ValueError("weights: this prepared directory records no per-source ranges; prepare it again "
                         "with this version of `tda data prepare`")
    unknown = sorted(set(weights) - known)
    if unknown:
        raise ValueError(f"weights: unknown sources {unknown}; this directory has {sorted(known)}")
    out = {}
    for s, w in weights.items():
        w = float(w)
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"weights: weight of {s!r} must be finite and >= 0, got {w}")
        out[s] = w
    if sum(out.values()) <= 0:
        raise ValueError("weights: all weights are zero")
    return out


def load_long_documents(data_dir: str | os.PathLike, min_tokens: int = 0) -> list[dict[str, Any]]:
    """Held-out long documents: dicts with source, name, tokens (count) and ids (read-only memmap)."""
    meta = load_meta(data_dir)
    long_dir = Path(data_dir) / "long"
    index = json.loads((long_dir / "index.json").read_text())
    out = []
    for e in index:
        if e["tokens"] < min_tokens:
            continue
        ids = np.memmap(long_dir / e["file"], dtype=np.dtype(meta["dtype"]), mode="r")
        out.append(dict(e, ids=ids))
    return out


def _to_device(x: torch.Tensor, y: torch.Tensor, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    device = torch.device(device)
    if device.type == "cuda":
        # pinned host memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def get_batch(split_or_ds: "TokenDataset | str | os.PathLike", batch_size: int, block_size: int | None = None,
              generator: torch.Generator | None = None, device: str | torch.device = "cpu", *,
              data_dir: str | os.PathLike | None = None, bos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows (x, y) of shape (batch_size, block_size) from a dataset.

    split_or_ds: a TokenDataset, a split name ("train"/"val", needs data_dir), or a prepared directory's
    .bin path (dtype read from the sibling meta.json). block_size defaults to the dataset's.
    """
    if isinstance(split_or_ds, TokenDataset):
        ds = split_or_ds
    elif str(split_or_ds) in ("train", "val"):
        if data_dir is None:
            raise ValueError("data_dir: required when split_or_ds is a split name")
        ds = open_split(data_dir, str(split_or_ds), block_size or 1)
    else:
        p = Path(split_or_ds)
        ds = TokenDataset(p, load_meta(p.parent)["dtype"], block_size or 1)
    T = block_size or ds.block_size
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if T + 1 > ds.n_tokens:
        raise ValueError(f"block_size: {T} + 1 exceeds the {ds.n_tokens} tokens of {ds.path}")
    starts = torch.randint(ds.n_tokens - T, (batch_size,), generator=generator).numpy()
    x, y = ds.windows(starts, T, bos_id)
    return _to_device(x, y, device)


def weighted_segments(ranges: dict[str, tuple[int, int]] | None, weights: dict[str, float], n_tokens: int,
                      block_size: int, *, part: tuple[int, int] = (0, 1), where: str = "the token file"):
    """(segments (k, 2) int64 [lo, hi), probs (k,), sources) for sampling windows by source weight.

    part = (r, n): each source's range is cut into n contiguous parts and only part r is kept. Sources
    absent from `ranges`, with weight 0, or whose (part of the) range cannot hold block_size + 1 tokens
    are left out and the rest renormalised: probs_s = w_s / sum(w)."""
    if not ranges:
        raise ValueError("ranges: required with weights (the per-source token ranges of the file)")
    r, n = part
    # a weighted source absent from this split (e.g. no validation documents) is simply not sampled
    segs, ws, sources = [], [], []
    for s, (lo, hi) in ranges.items():
        w = float(weights.get(s, 0.0))
        if not (0 <= lo <= hi <= n_tokens):
            raise ValueError(f"ranges: {s!r} = ({lo}, {hi}) outside the file's {n_tokens} tokens")
        if n > 1:
            b = np.linspace(lo, hi, n + 1).astype(np.int64)
            lo, hi = int(b[r]), int(b[r + 1])
        if w > 0 and hi - lo >= block_size + 1:
            segs.append((lo, hi))
            ws.append(w)
            sources.append(s)
    if not segs:
        raise ValueError(f"weights: no source with weight > 0 holds a window of {block_size} + 1 tokens in {where}")
    return np.asarray(segs, dtype=np.int64), np.asarray(ws, dtype=np.float64) / float(sum(ws)), sources


def draw_starts(rng: np.random.Generator, size: int, block_size: int, bounds: tuple[int, int],
                segments: np.ndarray | None = None, probs: np.ndarray | None = None) -> np.ndarray:
    """`size` window starts: uniform in [lo, hi - block_size) of bounds, or, with segments, a segment
    drawn with probs and then a start uniform inside it."""
    if segments is None:
        lo, hi = bounds
        return lo + rng.integers(0, hi - lo - block_size, size=size)
    k = rng.choice(len(segments), size=size, p=probs)
    lo, hi = segments[k, 0], segments[k, 1]
    return lo + rng.integers(0, hi - lo - block_size)


def check_sampler_args(batch_size: int, rank: int, world_size: int) -> None:
    """The arguments every batch sampler shares, checked with their names."""
    if world_size < 1:
        raise ValueError(f"world_size: must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: must be in [0, {world_size}), got {rank}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")


class ShardedBatchSampler:
    """Deterministic random windows for data-parallel training, resumable by step.

    disjoint=True: the token stream is cut into world_size contiguous shards and rank r only reads
    windows that lie entirely inside shard r, so ranks never see the same tokens. disjoint=False: every
    rank samples the whole stream, with a different random stream per rank.
    The windows of `batch(step, micro_step)` depend only on (seed, step, rank, micro_step) — restart at
    step s and you get exactly the batches an uninterrupted run would have had.
    weights (with ranges, {source: (lo, hi)} of the token file): each window picks a source with
    probability proportional to its weight, then a start inside that source's range (disjoint: inside
    this rank's 1/world_size part of it). Sources absent from ranges, or whose range cannot hold one
    window, are left out and the rest renormalised. bos_id: see TokenDataset.windows.
    """

    def __init__(self, dataset: TokenDataset, batch_size: int, block_size: int | None = None, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, disjoint: bool = True,
                 ranges: dict[str, tuple[int, int]] | None = None, weights: dict[str, float] | None = None,
                 bos_id: int | None = None):
        check_sampler_args(batch_size, rank, world_size)
        self.ds = dataset
        self.batch_size = batch_size
        self.block_size = block_size or dataset.block_size
        self.seed, self.rank, self.world_size, self.disjoint = int(seed), rank, world_size, disjoint
        n = dataset.n_tokens
        if disjoint:
            bounds = np.linspace(0, n, world_size + 1).astype(np.int64)
            self.lo, self.hi = int(bounds[rank]), int(bounds[rank + 1])
        else:
            self.lo, self.hi = 0, n
        if self.hi - self.lo < self.block_size + 1:
            raise ValueError(
                f"block_size: {self.block_size} + 1 tokens do not fit in rank {rank}'s shard of "
                f"{self.hi - self.lo} tokens ({n} tokens over world_size={world_size})"
            )
        self.bos_id = None if bos_id is None else int(bos_id)
        self.segments: np.ndarray | None = None  # (k, 2) [lo, hi) per sampled source
        self.probs: np.ndarray | None = None
        self.sources: list[str] = []
        if weights is not None:
            part = (rank, world_size) if disjoint else (0, 1)
            self.segments, self.probs, self.sources = weighted_segments(
                ranges, weights, n, self.block_size, part=part, where=f"rank {rank}'s part of {self.ds.path}")

    def starts(self, step: int, micro_step: int = 0) -> np.ndarray:
        if step < 0 or micro_step < 0:
            raise ValueError(f"step/micro_step: must be >= 0, got {step}/{micro_step}")
        # SeedSequence mixes the tuple into independent streams: no collisions between ranks or steps.
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step, self.rank, micro_step]))
        return draw_starts(rng, self.batch_size, self.block_size, (self.lo, self.hi), self.segments, self.probs)

    def batch(self, step: int, micro_step: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.ds.windows(self.starts(step, micro_step), self.block_size, self.bos_id)
        return _to_device(x, y, device)

    def packed_batch(self, step: int, micro_step: int = 0, device: str | torch.device = "cpu", *, sep_id: int):
        """(x, y, cu_seqlens, max_seqlen): batch(step, micro_step) plus its document boundaries (see
        document_starts), computed on the host before the copy to `device`; cu_seqlens stays on the CPU."""
        x, y = self.batch(step, micro_step, device="cpu")
        cu_seqlens, max_seqlen = cu_seqlens_from_starts(document_starts(x, sep_id))
        x, y = _to_device(x, y, device)
        return x, y, cu_seqlens, max_seqlen

    def __iter__(self):
        return self.iterate(0)

    def iterate(self, start_step: int = 0, device: str | torch.device = "cpu"):
        """Yield (step, x, y) forever from start_step."""
        step = start_step
        while True:
            x, y = self.batch(step, device=device)
            yield step, x, y
            step += 1


# --- packed documents ------------------------------------------------------------------------------
def document_starts(x: torch.Tensor, sep_id: int) -> torch.Tensor:
    """(B, T) bool: True where a document starts in each window of input tokens x (B, T).

    Prepared token files hold each document followed by the end-of-text token (meta.json's eot_id),
    and no document contains it, so boundaries need no extra storage. The separator opens the document
    after it (it plays the part of a beginning-of-sequence token): the last token of a document predicts
    the separator from its own document, and the separator predicts the next document's first token from
    nothing else. Column 0 always starts one (a window may begin inside a document).
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (B, T) token ids, got shape {tuple(x.shape)}")
    starts = x == sep_id
    starts[:, 0] = True
    return starts


def cu_seqlens_from_starts(starts: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens, max_seqlen) for a (B, T) bool document-start mask whose column 0 is all True.

    cu_seqlens: int32 (n_docs + 1,) cumulative document lengths over the B * T tokens numbered row-major
    (flash-attn's varlen convention; every row start is a boundary), on starts' device; max_seqlen: int.
    """
    if starts.dim() != 2 or starts.dtype != torch.bool:
        raise ValueError(f"starts must be a (B, T) bool tensor, got {starts.dtype} {tuple(starts.shape)}")
    if not bool(starts[:, 0].all()):
        raise ValueError("starts: column 0 must be True (every window begins a document)")
    flat = starts.reshape(-1)
    bounds = torch.cat([flat.nonzero().reshape(-1), torch.tensor([flat.numel()], device=flat.device)])
    max_seqlen = int((bounds[1:] - bounds[:-1]).max())
    return bounds.to(torch.int32), max_seqlen
