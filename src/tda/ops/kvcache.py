"""Attention over a KV cache, for decoding: flash-attn's `flash_attn_with_kvcache` conventions in tda's
(B, H, N, D) layout.

The cache holds, per sequence b, `cache_seqlens[b]` valid positions; keys are stored already
L2-normalised (unit keys), so a decode step never renormalises the past. New keys/values, when given,
are normalised (keys) and written in place at positions cache_seqlens[b] .. cache_seqlens[b] + M - 1.
With L_b keys visible after that write, query row r of sequence b sits at absolute position
i = L_b - M + r (bottom-right alignment), sees keys j <= i, and is judged by the threshold
tau_i = beta * sqrt(2 * max(log((i + 1) / kappa), 0) / d). The caller advances cache_seqlens.

Returns the pre-RMSNorm aggregation sum_j (a1_ij - lam * a2_ij) v_j, shape (B, H, M, Dv); with
`head_norm=(weight, eps)` ((H, Dv) gains), TDA's last step too: each row's per-head RMSNorm, in the kernel
that writes it.

backend="auto": the split-KV Triton decode kernel (tda.ops.triton.decode) for CUDA tensors it supports
(fp16/bf16/fp32, head dims 16/32/64/128) when no gradient is needed, else the torch path; "triton": the
kernel (on a CPU under TRITON_INTERPRET=1), a ValueError where it cannot run; "reference": the torch path.
With the kernel, the new keys and values go into the caches through one append kernel too.
"""
from __future__ import annotations

import math

import torch

from . import reference

from .validate import _check_scalar_param, _check_tensor

BACKENDS = ("auto", "triton", "reference")


def _check_cache(qs, caches, new, cache_seqlens, max_seqlen_k=None):
    """Validate the cache call; returns (B, H, M, D, Hk, S, lengths, longest) with lengths an int64 (B,)
    tensor of the keys visible to each sequence once the new ones are written and longest its maximum (or
    the caller's bound max_seqlen_k, which spares the host sync that reads it)."""
    for name, t in (*qs, *caches):
        _check_tensor(name, t)
    (qn, q0), (kn, k0) = qs[0], caches[0]
    B, H, M, D = q0.shape
    if k0.shape[0] != B or k0.shape[3] != D:
        raise ValueError(f"{kn} must have shape ({B}, Hk, S, {D}) to match {qn}, got {tuple(k0.shape)}")
    _, Hk, S, _ = k0.shape
    for name, t in qs[1:]:
        if t.shape != q0.shape:
            raise ValueError(f"{name} must have the shape of {qn} {tuple(q0.shape)}, got {tuple(t.shape)}")
    for name, t in caches[1:-1]:
        if t.shape != k0.shape:
            raise ValueError(f"{name} must have the shape of {kn} {tuple(k0.shape)}, got {tuple(t.shape)}")
    vn, v = caches[-1]
    if v.shape[:3] != (B, Hk, S):
        raise ValueError(f"{vn} must have shape ({B}, {Hk}, {S}, Dv) to match {kn}, got {tuple(v.shape)}")
    if Hk == 0 or H % Hk != 0:
        raise ValueError(f"{kn} heads ({Hk}) must divide {qn} heads ({H}) for grouped-query attention")
    tensors = [t for _, t in (*qs, *caches)] + [t for _, t in new if t is not None]
    if len({t.dtype for t in tensors}) != 1:
        raise ValueError(f"queries, caches and new keys/values must share one dtype, "
                         f"got {sorted({str(t.dtype) for t in tensors})}")
    if len({t.device for t in tensors}) != 1:
        raise ValueError("queries, caches and new keys/values must be on one device")
    given = [t is not None for _, t in new]
    if any(given) and not all(given):
        raise ValueError(f"new keys/values come together: pass all of {[n for n, _ in new]} or none")
    for (name, t), (_, c) in zip(new, caches):
        if t is not None and tuple(t.shape) != (B, Hk, M, c.shape[3]):
            raise ValueError(f"{name} must have shape ({B}, {Hk}, {M}, {c.shape[3]}), got {tuple(t.shape)}")
    if isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        cache_seqlens = torch.full((B,), cache_seqlens, dtype=torch.int32, device=q0.device)
    if (not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype not in (torch.int32, torch.int64)
            or tuple(cache_seqlens.shape) != (B,)):
        raise ValueError(f"cache_seqlens must be an int or an int32/int64 tensor of shape ({B},)")
    lengths = cache_seqlens.to(device=q0.device, dtype=torch.int64) + (M if any(given) else 0)
    if max_seqlen_k is not None:  # the caller knows the bound on the host (a model's cache does): no sync
        if not isinstance(max_seqlen_k, int) or isinstance(max_seqlen_k, bool) or max_seqlen_k < M:
            raise ValueError(f"max_seqlen_k must be an int >= {M} (the query rows), got {max_seqlen_k!r}")
        if max_seqlen_k > S:
            raise ValueError(f"the cache holds {S} positions but max_seqlen_k is {max_seqlen_k}: "
                             f"allocate a longer cache")
        return B, H, M, D, Hk, S, lengths, max_seqlen_k
    # one host sync per call for the three bounds (the kernel's grid needs the longest length anyway)
    lo, hi = (int(x) for x in torch.stack([lengths.min(), lengths.max()]).tolist())
    if lo - (M if any(given) else 0) < 0:
        raise ValueError("cache_seqlens must be >= 0")
    if hi > S:
        raise ValueError(f"the cache holds {S} positions but a sequence needs {hi} "
                         f"(cache_seqlens + new tokens): allocate a longer cache")
    if lo < M:
        raise ValueError(f"every sequence must see at least the {M} query positions; got cache_seqlens "
                         f"{cache_seqlens.tolist()} with {'new' if any(given) else 'no new'} keys")
    return B, H, M, D, Hk, S, lengths, hi


def _trusted_cache(q0, k0, new, cache_seqlens, max_seqlen_k):
    """check_inputs=False: _check_cache's results with none of its checks, for a caller that built the
    cache and the queries itself (tda's layers: about 50 us of Python per call and layer saved, which an
    eager decode step, bound by the host, feels). max_seqlen_k is required: it is what spares the sync."""
    if max_seqlen_k is None:
        raise ValueError("check_inputs=False needs max_seqlen_k (the caller's bound on the keys any sequence sees)")
    B, H, M, D = q0.shape
    # the caller's lengths as they are (the kernels read int32 or int64): no conversion launch per layer
    lengths = cache_seqlens + M if new[0][1] is not None else cache_seqlens
    return B, H, M, D, k0.shape[1], k0.shape[2], lengths, max_seqlen_k


def _append(caches, new, seqlens, M, dk=None):
    """Write the new keys (normalised) and values in place at each sequence's seqlens (a (B,) int tensor of
    positions before the write), no host sync: the decode module's append kernel (dk), else one scatter per
    cache."""
    if dk is not None:
        ts = [t for _, t in new]
        dk.append_kv(ts[:-1], ts[-1], caches[:-1], caches[-1], seqlens)
        return
    pos = seqlens.long()[:, None] + torch.arange(M, device=seqlens.device)  # (B, M)
    for i, (cache, (_, t)) in enumerate(zip(caches, new)):
        is_value = i == len(caches) - 1
        src = t if is_value else reference.l2_normalize(t)
        idx = pos[:, None, :, None].expand(src.shape)
        cache.scatter_(2, idx, src)


def _reference(q1, q2, k1_cache, k2_cache, v_cache, beta, lam, lengths, longest, kappa, p, normalize_q,
               chunk_size=256):
    """The torch path: every sequence at once over the first `longest` cache positions, with per-sequence
    positions and masks built on the device from `lengths`. It reads nothing on the host, so a decode step
    on this path can be captured in a CUDA graph too. Positions past a sequence's length never reach the
    output, whatever they hold (weights and values are zeroed there)."""
    B, H, M, D = q1.shape
    Hk = k1_cache.shape[1]
    ks = [c[:, :, :longest] for c in (k1_cache, k2_cache) if c is not None]
    j = torch.arange(longest, device=q1.device)
    v = v_cache[:, :, :longest].masked_fill(~(j[None, :] < lengths[:, None])[:, None, :, None], 0)
    if Hk != H:  # grouped-query: query head h reads kv head h // (H / Hk)
        ks = [k.repeat_interleave(H // Hk, 1) for k in ks]
        v = v.repeat_interleave(H // Hk, 1)
    qs = [q for q in (q1, q2) if q is not None]
    if normalize_q:
        qs = [reference.l2_normalize(q) for q in qs]
    rows = lengths[:, None] - M + torch.arange(M, device=q1.device)             # (B, M) absolute positions
    tau_rows = reference.tau(rows.reshape(-1), beta, kappa, D).reshape(H, B, M).transpose(0, 1)[..., None]
    allowed = (j[None, None, :] <= rows[:, :, None])[:, None]                   # (B, 1, M, longest)
    outs = []
    for c0 in range(0, M, chunk_size):
        c = slice(c0, min(M, c0 + chunk_size))
        w = reference._weights(qs[0][:, :, c], ks[0], tau_rows[:, :, c], allowed[:, :, c], p)
        if q2 is not None:
            w = w - lam.to(w.dtype)[None, :, None, None] * reference._weights(
                qs[1][:, :, c], ks[1], tau_rows[:, :, c], allowed[:, :, c], p)
        outs.append(w @ v)
    return torch.cat(outs, 2) if len(outs) > 1 else outs[0]


def check_options(*, kappa, p):
    if not isinstance(kappa, (int, float)) or not math.isfinite(kappa) or kappa <= 0:
        raise ValueError(f"kappa must be a finite number > 0, got {kappa!r}")
    if not isinstance(p, (int, float)) or not math.isfinite(p) or p < 1:
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _decode_kernel(backend, q, k_cache, v_cache, needs_grad):
    """The decode kernel module to run this call with, or None for the torch path."""
    if backend == "reference" or (backend == "auto" and (not q.is_cuda or needs_grad)):
        return None
    if needs_grad:
        raise ValueError("backend='triton' has no backward for cached decoding; use backend='reference' "
                         "or run under torch.no_grad()")
    try:  # imported lazily: CPU-only installs work without triton
        from .triton import decode as dk
    except ImportError:
        if backend == "triton":
            raise ValueError("backend='triton' needs the triton package (pip install 'tda[triton]')") from None
        return None
    why = dk.unsupported_reason(q, k_cache, v_cache)
    if why is not None:
        if backend == "triton":
            raise ValueError(f"backend='triton' cannot run this call: {why}")
        return None
    return dk


def _needs_grad(*ts):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _check_head_norm(head_norm, H, Dv, ref):
    """(weight (H, Dv), eps) or None; ValueError naming head_norm otherwise."""
    if head_norm is None:
        return None
    if not isinstance(head_norm, tuple) or len(head_norm) != 2:
        raise ValueError("head_norm must be a (weight, eps) tuple")
    w, eps = head_norm
    if not isinstance(w, torch.Tensor) or not w.is_floating_point() or tuple(w.shape) != (H, Dv):
        raise ValueError(f"head_norm weight must be a floating tensor of shape ({H}, {Dv}), got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if w.device != ref.device:
        raise ValueError(f"head_norm weight must be on {ref.device}, got {w.device}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"head_norm eps must be a finite number > 0, got {eps!r}")
    return w, float(eps)


def _reference_head_norm(out, head_norm):
    """The layers' RMSNorm per head, in at least fp32 (as the decode kernel), then the output's dtype."""
    if head_norm is None:
        return out
    w, eps = head_norm
    x = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
    y = torch.nn.functional.rms_norm(x, (out.shape[-1],), None, eps) * w.to(x.dtype)[None, :, None, :]
    return y.to(out.dtype)


def threshold_differential_attention_with_kvcache(q1, q2, k1_cache, k2_cache, v_cache, beta, lam, *,
                                                  cache_seqlens, k1=None, k2=None, v=None, kappa=1.0,
                                                  p=2.0, normalize_q=True, backend="auto",
                                                  check_finite=True, max_seqlen_k=None, head_norm=None,
                                                  check_inputs=True):
    """TDA over a KV cache (see the module docstring).

    q1, q2: (B, H, M, D) raw queries (normalised here unless normalize_q=False); k1_cache, k2_cache:
    (B, Hk, S, D) unit keys; v_cache: (B, Hk, S, Dv); cache_seqlens: int or int32 (B,) valid positions
    per sequence before this call; k1, k2, v: optional (B, Hk, M, .) new raw keys and values, written
    into the caches in place. max_seqlen_k: optional Python int, at least the keys any sequence sees after
    the write (at most S); with it the call makes no host sync, and cache_seqlens is trusted as given
    (not checked against M and S). head_norm: optional (weight (H, Dv), eps), the per-head RMSNorm of
    the output. check_inputs=False (with max_seqlen_k; beta and lam (H,) tensors, cache_seqlens a tensor)
    skips every argument check: for callers that built the cache and the queries themselves, as tda's
    layers do; wrong arguments then give wrong results or an error from deeper down. Returns (B, H, M, Dv).
    """
    new = [("k1", k1), ("k2", k2), ("v", v)]
    if check_inputs:
        _check_backend(backend)
        B, H, M, D, Hk, S, lengths, longest = _check_cache(
            [("q1", q1), ("q2", q2)], [("k1_cache", k1_cache), ("k2_cache", k2_cache), ("v_cache", v_cache)],
            new, cache_seqlens, max_seqlen_k)
        before = lengths - M  # positions before the write
        check_options(kappa=kappa, p=p)
        beta = _check_scalar_param("beta", beta, H, q1, check_finite)
        lam = _check_scalar_param("lam", lam, H, q1, check_finite)
        head_norm = _check_head_norm(head_norm, H, v_cache.shape[3], q1)
    else:
        B, H, M, D, Hk, S, lengths, longest = _trusted_cache(q1, k1_cache, new, cache_seqlens, max_seqlen_k)
        before = cache_seqlens
    dk = _decode_kernel(backend, q1, k1_cache, v_cache,
                        _needs_grad(q1, q2, k1_cache, k2_cache, v_cache, beta, lam, k1, k2, v,
                                    head_norm[0] if head_norm else None))
    if k1 is not None:
        _append([k1_cache, k2_cache, v_cache], new, before, M, dk)
    if dk is not None:
        return dk.decode_attention(q1, q2, k1_cache, k2_cache, v_cache, beta, lam, lengths, longest,
                                   kappa=kappa, p=p, normalize_q=normalize_q,
                                   norm_weight=head_norm[0] if head_norm else None,
                                   norm_eps=head_norm[1] if head_norm else 1e-6)
    out = _reference(q1, q2, k1_cache, k2_cache, v_cache, beta, lam, lengths, longest, kappa, p, normalize_q)
    return _reference_head_norm(out, head_norm)


def threshold_rectified_attention_with_kvcache(q, k_cache, v_cache, beta, *, cache_seqlens, k=None, v=None,
                                               kappa=1.0, p=2.0, normalize_q=True, backend="auto",
                                               check_finite=True, max_seqlen_k=None, head_norm=None,
                                               check_inputs=True):
    """TRA (one view) over a KV cache; arguments as threshold_differential_attention_with_kvcache."""
    new = [("k", k), ("v", v)]
    if check_inputs:
        _check_backend(backend)
        B, H, M, D, Hk, S, lengths, longest = _check_cache(
            [("q", q)], [("k_cache", k_cache), ("v_cache", v_cache)], new, cache_seqlens, max_seqlen_k)
        before = lengths - M  # positions before the write
        check_options(kappa=kappa, p=p)
        beta = _check_scalar_param("beta", beta, H, q, check_finite)
        head_norm = _check_head_norm(head_norm, H, v_cache.shape[3], q)
    else:
        B, H, M, D, Hk, S, lengths, longest = _trusted_cache(q, k_cache, new, cache_seqlens, max_seqlen_k)
        before = cache_seqlens
    dk = _decode_kernel(backend, q, k_cache, v_cache,
                        _needs_grad(q, k_cache, v_cache, beta, k, v, head_norm[0] if head_norm else None))
    if k is not None:
        _append([k_cache, v_cache], new, before, M, dk)
    if dk is not None:
        return dk.decode_attention(q, None, k_cache, None, v_cache, beta, None, lengths, longest,
                                   kappa=kappa, p=p, normalize_q=normalize_q,
                                   norm_weight=head_norm[0] if head_norm else None,
                                   norm_eps=head_norm[1] if head_norm else 1e-6)
    out = _reference(q, None, k_cache, None, v_cache, beta, None, lengths, longest, kappa, p, normalize_q)
    return _reference_head_norm(out, head_norm)
