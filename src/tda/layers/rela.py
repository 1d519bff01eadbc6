"""Rectified Linear Attention, ReLA-g (Zhang, Titov & Sennrich 2021, "Sparse Attention with Linear Units").

    a_ij = ReLU(q_i · k_j / sqrt(d))             causal j <= i, no normalisation: rows need not sum to 1
    z_i  = concat_h( Σ_j a_ij v_j )               (H·D)
    o_i  = W_O( g ⊙ RMSNorm(z_i) ⊙ σ(w ⊙ z_i) )   gated RMSNorm over the concatenated heads

The form of the stabilising norm follows the authors' released code (zero/modules/rela.py,
`gated_rms_norm`): an RMSNorm with gain g over the full attention output, multiplied by a sigmoid gate
whose argument is the *attention output itself* scaled elementwise by a learned vector w — not a
projection of the layer input. Both g and w have H·D entries (g init 1; w init uniform ±sqrt(3/(H·D)),
the Glorot-uniform default the TF code gets for a vector). Negative scores give exact zeros; a row whose
scores are all negative outputs exactly zero (RMSNorm of 0 is 0 thanks to eps), i.e. the head
"switches off" — the property the paper highlights.

The weights are materialised (B, H, N, N): O(N²) memory, like the reference TDA path.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import AttentionBase, RMSNorm, merge_heads


class ReLAAttention(AttentionBase):
    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.head_dim
        inner = c.n_head * c.head_dim
        self.q_proj = nn.Linear(c.n_embd, inner, bias=c.bias)
        self.kv_proj = nn.Linear(c.n_embd, 2 * c.n_kv_head * c.head_dim, bias=c.bias)
        self.c_proj = nn.Linear(inner, c.n_embd, bias=c.bias)
        self.norm = RMSNorm(inner)
        bound = math.sqrt(3.0 / inner)
        self.gate = nn.Parameter(torch.empty(inner).uniform_(-bound, bound))
        self.dropout = c.dropout

    def forward(self, x, rope, position_offset=0, docs=None, cache=None):
        s, v, mask = self.dense_scores(x, rope, position_offset, docs, cache)
        a = F.relu(s).masked_fill(~mask, 0.0)
        if self.record_weights and cache is None:
            self.last_weights = a.detach().float()
        if self.training and self.dropout > 0:
            a = F.dropout(a, self.dropout)
        z = merge_heads(a @ v)                                     # (B, N, H·D)
        z = self.norm(z) * torch.sigmoid(self.gate.float() * z.float()).to(z.dtype)
        return self.c_proj(z)
