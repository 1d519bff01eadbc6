"""Readable PyTorch oracle for Threshold Differential / Rectified Attention.

Per head, with 0-based absolute query position i (= position_offset + local row):

    s_ij    = <q_i/|q_i|, k_j/|k_j|>                          cosine scores, in [-1, 1]
    tau_i   = beta * sqrt(2 * max(log((i + 1) / kappa), 0) / d)  row threshold, grows with i
    a_ij    = (s_ij - tau_i)_+ ** p                          exceedance; exact zero at or below tau_i
    da_ij   = a1_ij - lam * a2_ij                            signed differential weights (TDA)
    out_i   = sum_j da_ij v_j                                pre-RMSNorm aggregation (the layer normalises)

The causal mask is bottom-right aligned, as in FlashAttention: with M queries and N keys, local query
row r sees keys j <= r + (N - M). With a KV cache of c positions (N = c + M, position_offset = c) this
is exactly "key position <= query position". A causal call therefore needs N_q <= N_k <= N_q +
position_offset (fewer keys would leave rows with no key; more than the offset counts would let a query see
keys past its position); N_k < N_q + position_offset is a window of the latest keys. Other lengths raise a
ValueError (validate.check_inputs).

`attention_backward` writes out the gradients the fused backward kernel computes (the kernels' oracle).

Queries are processed in chunks, so memory is O(chunk * N), not O(N^2); under autograd each chunk is
checkpointed (recomputed in backward) so training memory stays O(chunk * N) too.
Computation happens in the input dtype (bf16 in, bf16 arithmetic): the kernels' tests compare against
this op run both in the kernel's dtype and in float64.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .validate import _check_scalar_param, check_inputs

NORM_EPS = 1e-6


def l2_normalize(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps^2): smooth at x = 0 (a zero vector maps to zero with a finite gradient),
    norm taken in at least fp32."""
    acc = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    inv = torch.rsqrt(acc.pow(2).sum(-1, keepdim=True) + eps * eps)
    return (acc * inv).to(x.dtype)


def tau(positions: torch.Tensor, beta: torch.Tensor, kappa: float, d: int) -> torch.Tensor:
    """Row thresholds tau (H, M) for absolute positions (M,) and per-head beta (H,)."""
    gate = torch.log((positions.to(torch.float64) + 1.0) / kappa).clamp_min(0.0)
    scale = torch.sqrt(2.0 * gate / d).to(beta.dtype if beta.dtype == torch.float64 else torch.float32)
    return beta[:, None].to(scale.dtype) * scale[None, :]


def _allowed(M: int, N: int, causal: bool, key_padding_mask, device) -> torch.Tensor | None:
    """Bool mask (B or 1, 1, M, N) of key positions each query may see; None = all."""
    mask = None
    if causal:
        r = torch.arange(M, device=device)[:, None]
        j = torch.arange(N, device=device)[None, :]
        mask = (j <= r + (N - M))[None, None]
    if key_padding_mask is not None:
        kp = key_padding_mask[:, None, None, :]
        mask = kp if mask is None else (mask & kp)
    return mask


def _weights(q, k, tau_rows, allowed, p):
    """Exceedance weights (s - tau)_+^p for one view; q (B,H,C,D), k (B,H,N,D), tau_rows (1,H,C,1)."""
    s = q @ k.transpose(-1, -2)
    e = (s - tau_rows.to(s.dtype)).clamp_min(0)
    if allowed is not None:
        e = e.masked_fill(~allowed, 0)
    return e if p == 1 else e.pow(p)


def _chunk(q1, k1, q2, k2, v, tau_rows, lam, allowed, p, want_weights):
    w = _weights(q1, k1, tau_rows, allowed, p)
    if q2 is not None:
        w = w - lam.to(w.dtype)[None, :, None, None] * _weights(q2, k2, tau_rows, allowed, p)
    out = w @ v
    return (out, w) if want_weights else (out,)


def _attention(q1, k1, q2, k2, v, beta, lam, *, kappa, p, causal, position_offset, normalize_qk,
               key_padding_mask, return_weights, chunk_size, check_finite=True):
    # name the arguments as the caller did: q1/q2/k1/k2 for TDA, q/k for TRA
    qs = [("q1", q1), ("q2", q2)] if q2 is not None else [("q", q1)]
    ks = [("k1", k1), ("k2", k2)] if k2 is not None else [("k", k1)]
    B, H, M, D, Hk, N = check_inputs(qs, ks, v, kappa=kappa, p=p, causal=causal, position_offset=position_offset,
                                     key_padding_mask=key_padding_mask)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    beta = _check_scalar_param("beta", beta, H, q1, check_finite)
    lam = _check_scalar_param("lam", lam, H, q1, check_finite) if q2 is not None else None

    if normalize_qk:
        q1, k1 = l2_normalize(q1), l2_normalize(k1)
        if q2 is not None:
            q2, k2 = l2_normalize(q2), l2_normalize(k2)
    if Hk != H:  # grouped-query: query head h reads kv head h // (H / Hk)
        g = H // Hk
        k1, v = k1.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        k2 = k2.repeat_interleave(g, 1) if k2 is not None else None

    positions = torch.arange(position_offset, position_offset + M, device=q1.device)
    tau_all = tau(positions, beta, kappa, D)  # (H, M)
    allowed = _allowed(M, N, causal, key_padding_mask, q1.device)

    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q1, k1, q2, k2, v, beta, lam))
    outs, ws = [], []
    for c0 in range(0, M, chunk_size):
        c1 = min(M, c0 + chunk_size)
        args = (q1[:, :, c0:c1], k1, q2[:, :, c0:c1] if q2 is not None else None, k2, v,
                tau_all[None, :, c0:c1, None], lam,
                allowed[..., c0:c1, :] if allowed is not None else None, p, return_weights)
        if needs_grad and M > chunk_size and not return_weights:
            res = checkpoint(_chunk, *args, use_reentrant=False)
        else:
            res = _chunk(*args)
        outs.append(res[0])
        if return_weights:
            ws.append(res[1])
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    if return_weights:
        return out, (torch.cat(ws, dim=2) if len(ws) > 1 else ws[0])
    return out


def threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, *, kappa=1.0, p=2.0, causal=True,
                                     position_offset=0, normalize_qk=True, key_padding_mask=None,
                                     return_weights=False, chunk_size=256, check_finite=True):
    """TDA aggregation sum_j (a1_ij - lam * a2_ij) v_j, shape (B, H, M, Dv).

    q1, q2: (B, H, M, D); k1, k2: (B, Hk, N, D); v: (B, Hk, N, Dv) with Hk dividing H (grouped-query).
    beta, lam: float or tensor of shape () or (H,), differentiable. key_padding_mask: bool (B, N),
    True = attend. return_weights=True also returns the signed weights (B, H, M, N) (O(M*N) memory).
    check_finite=False skips the NaN/inf test of beta and lam (on CUDA a host sync per call; a non-finite
    value then gives undefined output); the layers, whose beta/lam are learned parameters, pass False.
    """
    if q2 is None or k2 is None:
        raise ValueError("q2 and k2 are required for TDA; use threshold_rectified_attention for one view")
    return _attention(q1, k1, q2, k2, v, beta, lam, kappa=kappa, p=p, causal=causal,
                      position_offset=position_offset, normalize_qk=normalize_qk,
                      key_padding_mask=key_padding_mask, return_weights=return_weights,
                      chunk_size=chunk_size, check_finite=check_finite)


def threshold_rectified_attention(q, k, v, beta, *, kappa=1.0, p=2.0, causal=True, position_offset=0,
                                  normalize_qk=True, key_padding_mask=None, return_weights=False,
                                  chunk_size=256, check_finite=True):
    """TRA aggregation sum_j (s_ij - tau_i)_+^p v_j, the single-view case of TDA."""
    return _attention(q, k, None, None, v, beta, None, kappa=kappa, p=p, causal=causal,
                      position_offset=position_offset, normalize_qk=normalize_qk,
                      key_padding_mask=key_padding_mask, return_weights=return_weights,
                      chunk_size=chunk_size, check_finite=check_finite)


def attention_backward(dout, q1, k1, q2, k2, v, beta, lam, *, kappa=1.0, p=2.0, causal=True, position_offset=0,
                       normalize_qk=True):
    """The gradients the fused backward kernel computes, written out (the kernels' oracle beside autograd).

    For TDA (q2, k2, lam given; TRA: None), per head h, with r_x = (|x|^2 + eps^2)^(-1/2) and x^ = r_x x
    (normalize_qk; else x^ = x), scale_i = tau_i / beta_h, and the causal mask applied to e:
        s_t = q^_t k^_t^T      e_t = (s_t - tau)_+      a_t = e_t^p      Da = a_1 - lam a_2      out = Da v
        dDa   = dO v^T                              dv    = Da^T dO
        de_1  = dDa * p e_1^(p-1)                   de_2  = -lam dDa * p e_2^(p-1)     (0 where e = 0)
        dq^_t = de_t k^_t                           dk^_t = de_t^T q^_t                (ds = de)
        dtau_i = -sum_j (de_1 + de_2)_ij            dbeta_h = sum_i dtau_i scale_i
        dlam_h = -sum_ij a_2,ij dDa_ij
        dx    = r_x dx^ - x r_x^3 (x . dx^)         (the L2 normalisation's backward, per row)
    Grouped-query: dk and dv are summed over the query heads that share a kv head. Materialised: O(M * N)
    memory per head, for tests. Returns a dict with the gradients of q1, k1, q2, k2, v (their shapes) and of
    beta and lam per head, (H,) -- sum them for a scalar beta / lam. Validation as in the forward.
    """
    qs = [("q1", q1), ("q2", q2)] if q2 is not None else [("q", q1)]
    ks = [("k1", k1), ("k2", k2)] if k2 is not None else [("k", k1)]
    B, H, M, D, Hk, N = check_inputs(qs, ks, v, kappa=kappa, p=p, causal=causal, position_offset=position_offset)
    beta = _check_scalar_param("beta", beta, H, q1).to(q1.dtype)
    lam = _check_scalar_param("lam", lam, H, q1).to(q1.dtype) if q2 is not None else None
    g = H // Hk
    views = [(q1, k1)] + ([(q2, k2)] if q2 is not None else [])
    # unit vectors and inverse norms; keys repeated per query head (grouped-query)
    units = []
    for q, k in views:
        rq = torch.rsqrt(q.pow(2).sum(-1, keepdim=True) + NORM_EPS ** 2) if normalize_qk else None
        rk = torch.rsqrt(k.pow(2).sum(-1, keepdim=True) + NORM_EPS ** 2) if normalize_qk else None
        qh = q * rq if normalize_qk else q
        kh = (k * rk if normalize_qk else k).repeat_interleave(g, 1)
        units.append((qh, kh, rq, rk))
    scale = tau(torch.arange(position_offset, position_offset + M, device=q1.device),
                torch.ones(1, dtype=q1.dtype, device=q1.device), kappa, D)[0].to(q1.dtype)  # (M,)
    tau_rows = (beta[:, None] * scale[None, :])[None, :, :, None]  # (1, H, M, 1)
    allowed = _allowed(M, N, causal, None, q1.device)
    vr = v.repeat_interleave(g, 1)
    es = []
    for qh, kh, _, _ in units:
        e = (qh @ kh.transpose(-1, -2) - tau_rows).clamp_min(0)
        es.append(e.masked_fill(~allowed, 0) if allowed is not None else e)
    a = [e.pow(p) for e in es]
    da = a[0] - lam[None, :, None, None] * a[1] if len(a) > 1 else a[0]
    dda = dout @ vr.transpose(-1, -2)  # (B, H, M, N)
    dv = (da.transpose(-1, -2) @ dout).view(B, Hk, g, N, -1).sum(2)

    def dpow(e):  # d(e^p)/de, exactly zero where e = 0
        return torch.where(e > 0, p * e.clamp_min(torch.finfo(e.dtype).tiny).pow(p - 1), torch.zeros_like(e))

    des = [dda * dpow(es[0])]
    if len(es) > 1:
        des.append(-lam[None, :, None, None] * dda * dpow(es[1]))
    grads = {}
    names = [("q1", "k1"), ("q2", "k2")] if q2 is not None else [("q", "k")]
    for (qn, kn), (q, k), (qh, kh, rq, rk), de in zip(names, views, units, des):
        dqh = de @ kh
        dkh = (de.transpose(-1, -2) @ qh).view(B, Hk, g, N, D).sum(2)
        if normalize_qk:
            dqh = rq * dqh - q * rq.pow(3) * (q * dqh).sum(-1, keepdim=True)
            dkh = rk * dkh - k * rk.pow(3) * (k * dkh).sum(-1, keepdim=True)
        grads[qn], grads[kn] = dqh, dkh
    grads["v"] = dv
    dtau = -sum(des).sum(-1)  # (B, H, M)
    grads["beta"] = (dtau * scale).sum((0, 2))
    if q2 is not None:
        grads["lam"] = -(a[1] * dda).sum((0, 2, 3))
    return grads
