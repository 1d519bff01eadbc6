"""Softmax attention baseline (PyTorch scaled_dot_product_attention: flash / memory-efficient kernels)."""
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
        q = split_heads(self.q_proj(x), self.n_head, self.head_dim)
        k, v = split_heads(self.kv_proj(x), 2 * self.n_kv_head, self.head_dim).chunk(2, dim=1)
        pos = doc_positions(docs)
        return rope(q, position_offset, pos), rope(k, position_offset, pos), v

    def attend(self, q, k, v, docs=None):
        """(B, H, N, D) -> (B, H, N, D); subclasses (gated softmax, SSMax, ...) override pieces.
        With packed documents, a block-diagonal causal bool mask (SDPA then runs its masked kernels)."""
        g = self.n_head // self.n_kv_head
        if g > 1:
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        mask = None if docs is None else docs.mask
        if self.record_weights:
            self.last_weights = self.causal_softmax_weights(q, k, self.head_dim ** -0.5, mask).detach()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              dropout_p=self.dropout if self.training else 0.0)

    def forward(self, x, rope, position_offset: int = 0, docs=None):
        q, k, v = self.qkv(x, rope, position_offset, docs)
        return self.c_proj(merge_heads(self.attend(q, k, v, docs)))
