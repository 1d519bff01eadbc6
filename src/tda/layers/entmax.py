"""1.5-entmax attention (Peters, Niculae & Martins 2019; Correia et al. 2019, "Adaptively Sparse Transformers").

    p_i = entmax_1.5( q_i K^T / sqrt(d) )   over the causal keys j <= i

entmax_α(z) = argmax_p  p·z + H^T_α(p) on the simplex; for α = 1.5 it is [ (z/2 − τ)_+ ]² with τ chosen so the
row sums to 1 — a probability distribution with exact zeros. Computed with the `entmax` package's
`entmax15` (sort-based exact threshold) on the materialised, causally masked score matrix, in fp32.

Memory limit: the (B, H, N, N) scores, their sort and the autograd buffers are all materialised —
O(B·H·N²) per layer, several times over (roughly 5 fp32 N×N tensors per head kept for backward), plus an
O(N log N) sort per row. Fine for N ≤ 1–2K at small batch; use activation checkpointing or smaller
micro-batches beyond that. There is no fused kernel.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .common import AttentionBase, merge_heads

# masked scores: very negative but finite, so entmax's cumulative sums never see inf - inf
_MASK_VALUE = -1e4


def _entmax15():
    try:
        from entmax import entmax15
    except ImportError:
        raise ImportError("attention='entmax' needs the `entmax` package: pip install 'entmax>=1.3' "
                          "(or pip install 'tda[baselines]')") from None
    return entmax15


class EntmaxAttention(AttentionBase):
    alpha = 1.5

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        c = config
        self.entmax15 = _entmax15()   # fail at construction, not in the middle of a training step
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.head_dim
        self.q_proj = nn.Linear(c.n_embd, c.n_head * c.head_dim, bias=c.bias)
        self.kv_proj = nn.Linear(c.n_embd, 2 * c.n_kv_head * c.head_dim, bias=c.bias)
        self.c_proj = nn.Linear(c.n_head * c.head_dim, c.n_embd, bias=c.bias)
        self.dropout = c.dropout

    def forward(self, x, rope, position_offset=0, docs=None, cache=None):
        s, v, mask = self.dense_scores(x, rope, position_offset, docs, cache, fp32=True)
        p = self.entmax15(s.masked_fill(~mask, _MASK_VALUE), dim=-1).masked_fill(~mask, 0.0)
        if self.record_weights and cache is None:
            self.last_weights = p.detach()
        if self.training and self.dropout > 0:
            p = F.dropout(p, self.dropout)
        return self.c_proj(merge_heads((p.to(v.dtype) @ v)))
