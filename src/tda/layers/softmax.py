"""Softmax attention baseline (PyTorch scaled_dot_product_attention: its default backend, cuDNN on Hopper,
or flash / memory-efficient kernels)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .common import AttentionBase, doc_positions, merge_heads, split_heads


class SoftmaxAttention(AttentionBase):
    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.head_dim
        self.q_proj = nn.Linear(c.n_embd, c.n_head * c.head_dim, bias=c.bias)
        self.kv_proj = nn.Linear(c.n_embd, 2 * c.n_kv_head * c.head_dim, bias=c.bias)
        self.c_proj = nn.Linear(c.n_head * c.head_dim, c.n_embd, bias=c.bias)
        self.dropout = c.dropout

    def qkv(self, x, rope, position_offset, docs=None):
        H, Hk = self.n_head, self.n_kv_head
        # eager CUDA: q and k|v as one GEMM with RoPE fused, as TDA's layer does (a fair eager baseline: no
        # separate input casts, no concatenated dk|dv and no transposing copy of it in the backward)
        fused = rope.project(x, (self.q_proj, self.kv_proj), (H, Hk, Hk), position_offset, doc_positions(docs))
        if fused is not None:
            return fused
        q = split_heads(self.q_proj(x), self.n_head, self.head_dim)
        k, v = split_heads(self.kv_proj(x), 2 * self.n_kv_head, self.head_dim).chunk(2, dim=1)
        q, k = rope.pair(q, k, position_offset, doc_positions(docs))  # one fused launch where both fit
        return q, k, v

    def keys_values(self, x, rope, position_offset, docs, cache):
        """(q, k, v, mask, record) for attend(): packed documents give their block-diagonal causal mask; a
        cache writes k and v and gives what it holds with its per-sequence key mask (None: plain causal).
        record is False on a cached decode step, whose weights are not the (B, H, N, N) of analysis."""
        self.check_docs_cache(docs, cache)
        q, k, v = self.qkv(x, rope, position_offset, docs)
        if docs is not None:
            return q, k, v, docs.mask, True
        # a decode step over equal lengths comes back unmasked: one row sees every key (SDPA, not causal)
        (k, v), mask = self.cached_kv(cache, allow_unmasked=True, k=k, v=v)
        return q, k.to(q.dtype), v, mask, cache is None or cache.fresh

    def attend(self, q, k, v, mask=None, record=True):
        """(B, H, N, D) -> (B, H, N, D); subclasses (gated softmax, SSMax, ...) override pieces. mask: None
        for causal attention over equal-length q and k, or for one query row that sees every key (a decode step
        over equal-length sequences); else a bool mask (B, 1, N, Nk): packed documents' block-diagonal causal
        mask, or a KV cache's per-sequence key mask (SDPA then runs its masked kernels).
        record: whether `record_weights` applies to this call."""
        g = self.n_head // self.n_kv_head
        if g > 1:
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        if self.record_weights and record:
            self.last_weights = self.causal_softmax_weights(q, k, self.head_dim ** -0.5, mask).detach()
        dropout_p = self.dropout if self.training else 0.0
        if mask is None:
            # equal lengths: causal; one query row over a longer cache (a decode step): it sees every key
            if q.shape[-2] != k.shape[-2] and q.shape[-2] != 1:
                raise ValueError(f"attend: {q.shape[-2]} query rows over {k.shape[-2]} keys need a mask")
            return F.scaled_dot_product_attention(q, k, v.to(q.dtype), is_causal=q.shape[-2] == k.shape[-2],
                                                  dropout_p=dropout_p)
        return F.scaled_dot_product_attention(q, k, v.to(q.dtype), attn_mask=mask, dropout_p=dropout_p)

    def forward(self, x, rope, position_offset=0, docs=None, cache=None):
        q, k, v, mask, record = self.keys_values(x, rope, position_offset, docs, cache)
        return self.c_proj(merge_heads(self.attend(q, k, v, mask, record)))
