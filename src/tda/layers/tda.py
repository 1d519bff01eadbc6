"""Threshold Differential Attention (TDA) and its single-view ablation TRA, as nn.Modules.

Two q/k views from independent projections, one v, RoPE on every q and k, learnable beta (per head,
init 1.0) and lam in (0, 1) (per head, lam = sigmoid(lam_logit), init 0.5), a per-head RMSNorm of the
signed aggregation, then the output projection (the paper's five steps: scores, tau, exceedances,
difference, norm).

Packed documents (docs) go through the varlen ops: tau and causality restart at every document.

With a KV cache the layer keeps each view's keys L2-normalised (unit keys, normalised once when
written) and the raw values: a prompt is prefilled through the plain op over its own tokens (the fused
kernel on CUDA), then each decode step attends over the cache through the cached-attention entry, its
queries at absolute positions seqlens[b] + r.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..ops import l2_normalize, threshold_differential_attention, threshold_rectified_attention
from ..ops.kvcache import (threshold_differential_attention_with_kvcache,
                           threshold_rectified_attention_with_kvcache)
from ..ops.varlen import attend_packed
from .common import AttentionBase, RMSNorm, doc_positions, split_heads


class TDAAttention(AttentionBase):
    n_views = 2

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.head_dim
        self.kappa, self.p, self.backend = c.kappa, c.p, c.attn_backend
        V = self.n_views
        self.q_proj = nn.Linear(c.n_embd, V * c.n_head * c.head_dim, bias=c.bias)
        self.k_proj = nn.Linear(c.n_embd, V * c.n_kv_head * c.head_dim, bias=c.bias)
        self.v_proj = nn.Linear(c.n_embd, c.n_kv_head * c.head_dim, bias=c.bias)
        self.c_proj = nn.Linear(c.n_head * c.head_dim, c.n_embd, bias=c.bias)
        self.beta = nn.Parameter(torch.full((c.n_head,), float(c.beta_init)))
        if V == 2:
            # sigmoid keeps lam inside (0, 1) for any optimiser step
            lam_logit = math.log(c.lam_init / (1.0 - c.lam_init))
            self.lam_logit = nn.Parameter(torch.full((c.n_head,), lam_logit))
        self.head_norm = RMSNorm((c.n_head, c.head_dim), eps=c.head_norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    @property
    def lam(self):
        return torch.sigmoid(self.lam_logit)

    def _views(self, x, rope, position_offset, docs=None):
        H, Hk, D = self.n_head, self.n_kv_head, self.head_dim
        pos = doc_positions(docs)
        # eager CUDA: the three projections as one GEMM (their weights concatenated per call, the parameters
        # unchanged) with RoPE fused in: one cast of x and one input gradient instead of three
        heads = (self.n_views * H, self.n_views * Hk, Hk)
        fused = rope.project(x, (self.q_proj, self.k_proj, self.v_proj), heads, position_offset, pos)
        if fused is not None:
            q, k, v = fused
            return q.chunk(self.n_views, dim=1), k.chunk(self.n_views, dim=1), v
        # RoPE once over both views' heads, q and k together (then split): one fused launch each way on CUDA
        # instead of four, the same numbers
        q, k = rope.pair(split_heads(self.q_proj(x), self.n_views * H, D),
                         split_heads(self.k_proj(x), self.n_views * Hk, D), position_offset, pos)
        qs, ks = q.chunk(self.n_views, dim=1), k.chunk(self.n_views, dim=1)
        v = split_heads(self.v_proj(x), Hk, D)
        return qs, ks, v

    def _op(self, qs, ks, v, position_offset, return_weights, docs=None):
        if docs is not None:  # packed documents: tau and causality restart at every document
            return attend_packed(qs[0], ks[0], qs[1], ks[1], v, self.beta, self.lam, docs, kappa=self.kappa,
                                 p=self.p, backend=self.backend, check_finite=False)
        backend = "reference" if return_weights else self.backend
        return threshold_differential_attention(
            qs[0], ks[0], qs[1], ks[1], v, self.beta, self.lam, kappa=self.kappa, p=self.p, causal=True,
            position_offset=position_offset, backend=backend, return_weights=return_weights,
            check_finite=False)  # learned beta/lam: no per-call host sync (divergence shows in the loss)

    def cache_shapes(self) -> dict:
        Hk, D = self.n_kv_head, self.head_dim
        keys = {"k": (Hk, D)} if self.n_views == 1 else {"k1": (Hk, D), "k2": (Hk, D)}
        return {**keys, "v": (Hk, D)}

    def _cached_op(self, qs, ks, v, cache):
        """The decode step over the cache, the per-head RMSNorm included (fused into the decode kernel)."""
        b = cache.buffers
        if v.dtype != b["v"].dtype:  # a cache kept in another dtype than the activations
            dt = b["v"].dtype
            qs, ks, v = [q.to(dt) for q in qs], [k.to(dt) for k in ks], v.to(dt)
        return threshold_differential_attention_with_kvcache(
            qs[0], qs[1], b["k1"], b["k2"], b["v"], self.beta, self.lam,
            cache_seqlens=cache.seqlens, k1=ks[0], k2=ks[1], v=v, kappa=self.kappa,
            p=self.p, backend=self.backend, check_finite=False, max_seqlen_k=cache.end,  # known: no host sync
            head_norm=(self.head_norm.weight, self.head_norm.eps), check_inputs=False)  # the cache is ours

    def forward(self, x, rope, position_offset=0, docs=None, cache=None):
        self.check_docs_cache(docs, cache)
        if docs is not None and self.record_weights:
            raise ValueError("docs: recording attention weights is not supported with packed documents")
        qs, ks, v = self._views(x, rope, position_offset, docs)
        if cache is None or cache.fresh:
            record = self.record_weights and cache is None
            y = self._op(qs, ks, v, position_offset if cache is None else 0, record, docs)
            if record:
                y, w = y
                self.last_weights = w.detach()
            if cache is not None:  # prefill: the op above saw the whole prompt; keep unit keys for decoding
                names = [n for n in self.cache_shapes() if n != "v"]
                cache.write(v=v, **{n: l2_normalize(k) for n, k in zip(names, ks)})
            y = self.head_norm(y.transpose(1, 2))  # (B, N, H, D): RMSNorm per head; an all-zero row stays 0
        else:
            y = self._cached_op(qs, ks, v, cache).to(v.dtype).transpose(1, 2)  # normalised in the op
        B, N = y.shape[:2]
        return self.dropout(self.c_proj(y.reshape(B, N, -1)))


class TRAAttention(TDAAttention):
    """Threshold Rectified Attention: one view, no inhibition (the paper's ablation)."""
    n_views = 1

    def _op(self, qs, ks, v, position_offset, return_weights, docs=None):
        if docs is not None:
            return attend_packed(qs[0], ks[0], None, None, v, self.beta, None, docs, kappa=self.kappa, p=self.p,
                                 backend=self.backend, check_finite=False)
        backend = "reference" if return_weights else self.backend
        return threshold_rectified_attention(
            qs[0], ks[0], v, self.beta, kappa=self.kappa, p=self.p, causal=True,
            position_offset=position_offset, backend=backend, return_weights=return_weights,
            check_finite=False)  # learned beta/lam: no per-call host sync (divergence shows in the loss)

    def _cached_op(self, qs, ks, v, cache):
        b = cache.buffers
        if v.dtype != b["v"].dtype:
            dt = b["v"].dtype
            qs, ks, v = [q.to(dt) for q in qs], [k.to(dt) for k in ks], v.to(dt)
        return threshold_rectified_attention_with_kvcache(
            qs[0], b["k"], b["v"], self.beta, cache_seqlens=cache.seqlens, k=ks[0], v=v,
            kappa=self.kappa, p=self.p, backend=self.backend, check_finite=False, max_seqlen_k=cache.end,
            head_norm=(self.head_norm.weight, self.head_norm.eps), check_inputs=False)
