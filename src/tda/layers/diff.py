"""Differential attention (Ye et al. 2024, "Differential Transformer", arXiv 2410.05258).

Per differential head h (there are n_head / 2 of them, the paper's h = d_model / 2d):

    p⁽ᵗ⁾  = softmax( q⁽ᵗ⁾ k⁽ᵗ⁾ᵀ / sqrt(d) ),  t = 1, 2    (two causal softmax maps, q/k head dim d)
    λ     = exp(λq1 · λk1) − exp(λq2 · λk2) + λ_init      (one λ per layer; vectors λ* ∈ R^d, init N(0, 0.1²))
    o     = (1 − λ_init) · RMSNorm_h( (p⁽¹⁾ − λ p⁽²⁾) v )  (v has head dim 2d; per-head RMSNorm "GroupNorm")
    λ_init = 0.8 − 0.6 · exp(−0.3 · (l − 1))              l = 1..L in the paper

The paper's layer index l is 1-based; with our 0-based `layer_idx` that is exp(−0.3 · layer_idx), which
is also what the authors' released code computes (`lambda_init_fn(depth)` with 0-based depth). Halving
the head count while doubling v's width keeps the q/k/v/o projections exactly the size of the softmax
baseline's (the paper's parameter alignment). With GQA, n_kv_head must be even too.

Implementation: one fused SDPA call over 4·(H/2) "heads" — (q1,k1)·v_a, (q1,k1)·v_b, (q2,k2)·v_a,
(q2,k2)·v_b with v = [v_a | v_b] — so every call has equal q/k/v head dims (flash-eligible) and no N×N
tensor is materialised. Recorded weights are the signed p⁽¹⁾ − λ p⁽²⁾, shape (B, H/2, N, N).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import AttentionBase, RMSNorm, doc_positions, split_heads


def lambda_init_fn(layer_idx: int) -> float:
    """λ_init for a 0-based layer index (paper: 0.8 − 0.6·exp(−0.3·(l − 1)), l 1-based)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


class DiffAttention(AttentionBase):
    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        c = config
        if c.n_head % 2:
            raise ValueError(f"n_head must be even for diff attention (two softmax maps per head), got {c.n_head}")
        if c.n_kv_head % 2:
            raise ValueError(f"n_kv_head must be even for diff attention, got {c.n_kv_head}")
        self.n_head, self.n_kv_head = c.n_head // 2, c.n_kv_head // 2   # differential heads
        self.head_dim = D = c.head_dim                                  # q/k dim; v is 2·D wide
        self.q_proj = nn.Linear(c.n_embd, 2 * self.n_head * D, bias=c.bias)
        self.kv_proj = nn.Linear(c.n_embd, 4 * self.n_kv_head * D, bias=c.bias)
        self.c_proj = nn.Linear(2 * self.n_head * D, c.n_embd, bias=c.bias)
        self.lambda_init = lambda_init_fn(layer_idx)
        self.lambda_q1 = nn.Parameter(torch.randn(D) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(D) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(D) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(D) * 0.1)
        self.head_norm = RMSNorm((self.n_head, 2 * D))
        self.dropout = c.dropout

    @property
    def lam(self):
        return (torch.exp((self.lambda_q1 * self.lambda_k1).sum()) - torch.exp((self.lambda_q2 * self.lambda_k2).sum())
                + self.lambda_init)

    def cache_shapes(self) -> dict:
        # v is kept as [v_a | v_b], 2·D wide
        Hkd, D = self.n_kv_head, self.head_dim
        return {"k1": (Hkd, D), "k2": (Hkd, D), "v": (Hkd, 2 * D)}

    def forward(self, x, rope, position_offset=0, docs=None, cache=None):
        self.check_docs_cache(docs, cache)
        Hd, Hkd, D = self.n_head, self.n_kv_head, self.head_dim
        B, N, _ = x.shape
        pos = doc_positions(docs)
        mask = None if docs is None else docs.mask   # packed documents: block-diagonal causal
        q1, q2 = rope(split_heads(self.q_proj(x), 2 * Hd, D), position_offset, pos).chunk(2, dim=1)
        k1, k2, va, vb = split_heads(self.kv_proj(x), 4 * Hkd, D).chunk(4, dim=1)
        k1, k2 = rope(k1, position_offset, pos), rope(k2, position_offset, pos)
        if cache is not None:
            (k1, k2, v), mask = self.cached_kv(cache, k1=k1, k2=k2, v=torch.cat([va, vb], -1))
            k1, k2, va, vb = (t.to(q1.dtype) for t in (k1, k2, *v.chunk(2, dim=-1)))
        if Hd > Hkd:
            g = Hd // Hkd
            k1, k2, va, vb = (t.repeat_interleave(g, 1) for t in (k1, k2, va, vb))
        lam = self.lam
        # a cached decode step attends over (B, H, M, cached) keys: nothing to record there
        if self.record_weights and (cache is None or mask is None):
            p1 = self.causal_softmax_weights(q1, k1, D ** -0.5, mask)
            p2 = self.causal_softmax_weights(q2, k2, D ** -0.5, mask)
            self.last_weights = (p1 - lam.detach().float() * p2).detach()
        # packed documents and a cached call pass their mask; otherwise plain causal
        o = F.scaled_dot_product_attention(
            torch.cat([q1, q1, q2, q2], 1), torch.cat([k1, k1, k2, k2], 1), torch.cat([va, vb, va, vb], 1),
            attn_mask=mask, is_causal=mask is None, dropout_p=self.dropout if self.training else 0.0)
        o1a, o1b, o2a, o2b = o.chunk(4, dim=1)
        o1, o2 = torch.cat([o1a, o1b], -1), torch.cat([o2a, o2b], -1)   # (B, Hd, N, 2D)
        y = o1 - lam.to(o1.dtype) * o2
        y = self.head_norm(y.transpose(1, 2)) * (1.0 - self.lambda_init)  # (B, N, Hd, 2D)
        return self.c_proj(y.reshape(B, N, 2 * Hd * D))
