"""A data order that does not depend on the number of ranks: one global batch per step, split over ranks.

The global batch of step s is G = batch_size * grad_accum * world_size windows whose starts are drawn from
a generator seeded by (seed, s) alone, uniformly over the whole token stream. Rank r's micro-batch m is
the slice [(m * world_size + r) * batch_size, ... + batch_size) of it. The gradient of a step is the mean
over all G windows, so any (batch_size, grad_accum, world_size) with the same G trains on the same
windows: a run can resume on another number of ranks and see exactly the batches it would have seen.
(The same-world-size data order of ShardedBatchSampler cuts the stream into per-rank shards instead, so
its batches change with the world size. With one rank and grad_accum 1 the two orders coincide: numpy's
SeedSequence pads its entropy with zeros to four words, so (seed, s) seeds what (seed, s, 0, 0) seeds.)

weights and bos_id work as in ShardedBatchSampler, over the whole stream: each of the G windows picks a
source with probability w_s / sum(w), then a start uniformly inside that source's whole range (no per-rank
part, so the order still does not depend on the world size); bos_id puts that token at position 0.
"""
from __future__ import annotations

import numpy as np
import torch

from .dataset import TokenDataset, _to_device, check_sampler_args, draw_starts, weighted_segments

__all__ = ["GlobalBatchSampler"]


class GlobalBatchSampler:
    """Step-indexed windows: batch(step, micro_step) is this rank's share of the step's global batch,
    a pure function of (seed, step, G, rank, world_size, micro_step)."""

    def __init__(self, dataset: TokenDataset, batch_size: int, block_size: int | None = None, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, grad_accum: int = 1,
                 ranges: dict[str, tuple[int, int]] | None = None, weights: dict[str, float] | None = None,
                 bos_id: int | None = None):
        check_sampler_args(batch_size, rank, world_size)
        if grad_accum < 1:
            raise ValueError(f"grad_accum: must be >= 1, got {grad_accum}")
        self.ds = dataset
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.block_size = block_size or dataset.block_size
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        if dataset.n_tokens < self.block_size + 1:
            raise ValueError(f"block_size: {self.block_size} + 1 exceeds the {dataset.n_tokens} tokens")
        self.bos_id = None if bos_id is None else int(bos_id)
        self.segments, self.probs, self.sources = None, None, []
        if weights is not None:
            self.segments, self.probs, self.sources = weighted_segments(
                ranges, weights, dataset.n_tokens, self.block_size, where=str(dataset.path))

    @property
    def global_batch(self) -> int:
        """Windows per step over all ranks and micro-batches."""
        return self.batch_size * self.grad_accum * self.world_size

    def global_starts(self, step: int) -> np.ndarray:
        """The G window starts of `step`, the same on every rank."""
        if step < 0:
            raise ValueError(f"step: must be >= 0, got {step}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step]))
        return draw_starts(rng, self.global_batch, self.block_size, (0, self.ds.n_tokens), self.segments, self.probs)

    def starts(self, step: int, micro_step: int = 0) -> np.ndarray:
        if not 0 <= micro_step < self.grad_accum:
            raise ValueError(f"micro_step: must be in [0, {self.grad_accum}), got {micro_step}")
        lo = (micro_step * self.world_size + self.rank) * self.batch_size
        return self.global_starts(step)[lo:lo + self.batch_size]

    def batch(self, step: int, micro_step: int = 0, device: str | torch.device = "cpu"):
        x, y = self.ds.windows(self.starts(step, micro_step), self.block_size, self.bos_id)
        return _to_device(x, y, device)
