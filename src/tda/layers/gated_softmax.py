"""Gated softmax attention (Qiu et al. 2025, "Gated Attention for Large Language Models").

    o_i = SDPA(q, k, v)_i ⊙ σ(x_i W_g)          (per head, elementwise: W_g is C × H·D)

The gate sits after the scaled-dot-product output and before W_O (the paper's best position, "G1"), is
query-dependent (computed from the same pre-normed hidden state x the projections see), head-specific
and elementwise, and multiplicative with a sigmoid. Everything else is the softmax baseline, so the
recorded weights are the ordinary softmax probabilities.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import merge_heads, split_heads
from .softmax import SoftmaxAttention


class GatedSoftmaxAttention(SoftmaxAttention):
    def __init__(self, config, layer_idx: int = 0):
        super().__init__(config, layer_idx)
        self.gate_proj = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=config.bias)

    def forward(self, x, rope, position_offset=0, docs=None, cache=None):
        q, k, v, mask, record = self.keys_values(x, rope, position_offset, docs, cache)
        y = self.attend(q, k, v, mask, record)                      # (B, H, N, D)
        gate = torch.sigmoid(split_heads(self.gate_proj(x), self.n_head, self.head_dim))
        return self.c_proj(merge_heads(y * gate.to(y.dtype)))
