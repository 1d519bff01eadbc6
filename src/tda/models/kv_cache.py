"""The KV cache: one plain tensor buffer per layer and name, written in place, plus per-sequence lengths.

Every attention layer declares what it keeps per position (`cache_shapes()`: name -> (heads, dim)), e.g.
TDA keeps k1, k2 (unit keys: each view's keys L2-normalised once, when written) and v; softmax keeps
raw k and v. A buffer is (B, Hk, S, D); `seqlens[b]` counts the positions of sequence b already
written. One model call with cache writes its M new positions at seqlens[b] .. seqlens[b] + M - 1 of
every layer, then advances seqlens by M; query row r of sequence b sits at absolute position
seqlens[b] + r (the position RoPE and the TDA threshold tau see).

Static decoding (`cache.static = True`): a model call reads nothing of the lengths on the host. Every write
scatters at the device-side seqlens, and every layer attends over the whole cache with a per-sequence key
mask (TDA's decode kernel with the cache size as its bound). Shapes then stay fixed from step to step and
nothing syncs, which is what capturing the decode step in a CUDA graph needs
(tda.models.generate.GraphedDecodeStep). The caller guarantees that the new positions fit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerCache:
    """What one attention layer sees of the cache during one model call.

    buffers: name -> (B, Hk, S, D) storage of this layer (views into the KVCache's tensors);
    seqlens: (B,) int32 positions written before this call (on the buffers' device);
    lengths: the same on the host, or None in static decoding (see the module docstring);
    n_new: M, the positions this call appends.
    """
    buffers: dict
    seqlens: torch.Tensor
    lengths: tuple | None
    n_new: int

    @property
    def fresh(self) -> bool:
        """True when every sequence starts from an empty cache: plain causal attention over the new tokens
        is then the whole computation (the prefill path, fused kernels included). Never in static decoding."""
        return self.lengths is not None and all(n == 0 for n in self.lengths)

    @property
    def end(self) -> int:
        """Positions any sequence can see after this call's write (the buffers are read up to here): the
        whole cache in static decoding."""
        if self.lengths is None:
            return next(iter(self.buffers.values())).shape[2]
        return max(self.lengths) + self.n_new

    @property
    def sees_whole_cache(self) -> bool:
        """True when one new row per sequence and equal lengths: every row then sees every cached key up to
        `end`, so a softmax layer needs no mask (SDPA's unmasked decode kernels). Never in static decoding."""
        return self.n_new == 1 and self.lengths is not None and len(set(self.lengths)) == 1

    def write(self, **new):
        """Store new (B, Hk, M, D) tensors in place at each sequence's next M positions."""
        for name, t in new.items():
            buf = self.buffers[name]
            if self.lengths is not None and len(set(self.lengths)) == 1:
                c = self.lengths[0]
                buf[:, :, c:c + self.n_new] = t.to(buf.dtype)
            else:
                B, H, M, D = t.shape
                idx = self.seqlens.long()[:, None] + torch.arange(M, device=buf.device)[None, :]
                buf.scatter_(2, idx[:, None, :, None].expand(B, H, M, D), t.to(buf.dtype))

    def read(self, *names):
        """The named buffers up to the longest sequence's end (positions past a sequence's own end are
        masked by `mask()`)."""
        return tuple(self.buffers[n][:, :, :self.end] for n in names)

    def mask(self):
        """Bool (B, 1, M, end): key j is visible to new row r of sequence b iff j <= seqlens[b] + r."""
        M, device = self.n_new, self.seqlens.device
        q_pos = self.seqlens.long()[:, None] + torch.arange(M, device=device)[None, :]      # (B, M)
        j = torch.arange(self.end, device=device)
        return (j[None, None, :] <= q_pos[:, :, None])[:, None]


class KVCache:
    """Per-layer buffers (B, Hk, S, D) for a model, and per-sequence lengths `seqlens` (B,) int32.

    Build one with `KVCache.for_model(model, batch_size, max_seqlen)`. `row(b)` is a batch-1 view of
    sequence b (its writes land in this cache), which is how prompts of different lengths are prefilled
    one by one before the batch decodes together.
    """

    def __init__(self, shapes: list, batch_size: int, max_seqlen: int, *, dtype=torch.float32, device="cpu"):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(max_seqlen, int) or max_seqlen < 1:
            raise ValueError(f"max_seqlen must be an int >= 1, got {max_seqlen!r}")
        self.layers = [{name: torch.zeros(batch_size, h, max_seqlen, d, dtype=dtype, device=device)
                        for name, (h, d) in layer.items()} for layer in shapes]
        self.seqlens = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.static = False  # static decoding (module docstring): fixed shapes, no host read of the lengths

    @classmethod
    def for_model(cls, model, batch_size: int, max_seqlen: int, *, dtype=None, device=None) -> "KVCache":
        """A cache for every attention layer of `model` (dtype/device default to the model's)."""
        p = next(model.parameters())
        shapes = [block.attn.cache_shapes() for block in model.blocks]
        return cls(shapes, batch_size, max_seqlen, dtype=dtype or p.dtype, device=device or p.device)

    @property
    def batch_size(self) -> int:
        return self.seqlens.shape[0]

    @property
    def max_seqlen(self) -> int:
        return next(iter(self.layers[0].values())).shape[2]

    @property
    def dtype(self):
        return next(iter(self.layers[0].values())).dtype

    def bytes_per_token(self) -> int:
        """Cache bytes one position of one sequence takes, summed over layers and buffers."""
        return sum(t.shape[1] * t.shape[3] * t.element_size() for layer in self.layers for t in layer.values())

    def reset(self):
        """Forget every sequence (the buffers are reused; stale entries are never read past seqlens)."""
        self.seqlens.zero_()
        return self

    def row(self, b: int) -> "KVCache":
        """A batch-1 view of sequence b: buffers and seqlens are views, so writes land here."""
        if not 0 <= b < self.batch_size:
            raise ValueError(f"row {b} out of range for a cache of batch size {self.batch_size}")
        view = object.__new__(KVCache)
        view.layers = [{n: t[b:b + 1] for n, t in layer.items()} for layer in self.layers]
        view.seqlens = self.seqlens[b:b + 1]
        view.static = self.static
        return view

    def reorder_cache(self, order):
        """Keep sequence order[i] as sequence i (beam search): every buffer and length, gathered in place."""
        order = order.to(self.seqlens.device)
        for layer in self.layers:
            for name, t in layer.items():
                layer[name] = t.index_select(0, order)
        self.seqlens = self.seqlens.index_select(0, order)
        return self

    def layer(self, i: int, lengths: tuple | None, n_new: int) -> LayerCache:
        return LayerCache(self.layers[i], self.seqlens, lengths, n_new)

    def advance(self, n: int):
        self.seqlens += n
