"""Softmax attention baseline (PyTorch scaled_dot_product_attention: flash / memory-efficient kernels)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .common import AttentionBase, merge_heads, split_heads


class SoftmaxAttention(AttentionBase):
    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.head_dim
        self.q_proj = nn.Linear(c.n_embd, c.n_head * c.head_dim, bias=c.bias)
        self.kv_proj = nn.Linear(c.n_embd, 2 * c.n_kv_head * c.head_dim, bias=c.bias)
        self.c_proj = nn.Linear(c.n_head * c.head_dim, c.n_embd, bias=c.bias)
        self.dropout = c.dropout

    def qkv(self, x, rope, position_offset):
        q = split_heads(self.q_proj(x), self.n_head, self.head_dim)
        k, v = split_heads(self.kv_proj(x), 2 * self.n_kv_head, self.head_dim).chunk(2, dim=1)
        return rope(q, position_offset), rope(k, position_offset), v

    def attend(self, q, k, v, mask=None):
        """(B, H, N, D) -> (B, H, N, D); subclasses (gated softmax, SSMax, ...) override pieces. mask: None
        for causal attention over equal-length q and k, else a bool key mask (B, 1, N, Nk) (KV cache)."""
        g = self.n_head // self.n_kv_head
        if g > 1:
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        if self.record_weights and mask is None:
            self.last_weights = self.causal_softmax_weights(q, k, self.head_dim ** -0.5).detach()
        dropout_p = self.dropout if self.training else 0.0
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        return F.scaled_dot_product_attention(q, k, v.to(q.dtype), attn_mask=mask, dropout_p=dropout_p)

    def forward(self, x, rope, position_offset=0, cache=None):
        q, k, v = self.qkv(x, rope, position_offset)
        (k, v), mask = self.cached_kv(cache, k=k, v=v)
        return self.c_proj(merge_heads(self.attend(q, k.to(q.dtype), v, mask)))
