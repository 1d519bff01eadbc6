"""Scalable-Softmax attention (Nakanishi 2025, "Scalable-Softmax Is Superior for Attention").

    p_ij = softmax_j( s_h · log(n_i) · q_i · k_j / sqrt(d) ),     n_i = i + 1  (keys visible to row i)

with one learnable s per head. A row-dependent temperature is exactly a rescaling of the query row, so
the layer multiplies q_i by s_h·log(n_i) and calls the ordinary fused SDPA — no N×N tensor, flash speed.
i is the absolute position (position_offset + row), consistent with the TDA threshold τ_i; without a KV
cache this treats the input as the tail of a longer prefix, which is what length-extrapolation evaluation
with an offset means. Row 0 sees one key: log 1 = 0 and the softmax over a single key is 1 anyway.

Initialisation (not fixed by the paper's formula): s_h = 1 / log(block_size), so at the training context
length the layer starts as plain softmax and shorter rows start flatter; s is learned from there
(the paper's Fig. 1 illustrates s = 0.43).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .common import row_positions
from .softmax import SoftmaxAttention


class SSMaxAttention(SoftmaxAttention):
    def __init__(self, config, layer_idx: int = 0):
        super().__init__(config, layer_idx)
        s_init = 1.0 / math.log(max(config.block_size, 2))
        self.s = nn.Parameter(torch.full((config.n_head,), s_init))

    def log_n(self, n: int, position_offset, device):
        """log of the number of keys visible to each query row: (n,), or (B, n) for per-sequence offsets."""
        return (row_positions(position_offset, n, device) + 1).to(torch.float32).log()

    def qkv(self, x, rope, position_offset, docs=None):
        q, k, v = super().qkv(x, rope, position_offset, docs)
        if docs is not None:  # packed documents: n_i counts the keys of row i's own document
            log_n = (docs.positions + 1).float().log()                               # (B, N)
        else:
            log_n = self.log_n(q.shape[-2], position_offset, q.device)              # (N,) or (B, N)
        scale = self.s.float()[:, None] * log_n[..., None, :]                       # (H, N) or (B, H, N)
        return q * scale[..., None].to(q.dtype), k, v
