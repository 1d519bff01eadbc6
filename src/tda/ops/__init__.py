"""Functional TDA / TRA attention: the public functions and their backend dispatch.

backend="auto": the fused Triton kernel (tda.ops.triton.attention) for CUDA tensors it supports, the
reference elsewhere; "triton": the kernel (on a CPU this needs TRITON_INTERPRET=1 set before triton is
imported, i.e. before `import tda`); "reference": the readable PyTorch oracle in reference.py.
"""
from __future__ import annotations

from . import reference
from .reference import l2_normalize, tau

try:  # optional: CPU-only installs work without triton
    from .triton import attention as fused
except ImportError:
    fused = None

BACKENDS = ("auto", "triton", "reference")


def _use_fused_kernel(backend, q, k, v, p, return_weights, key_padding_mask) -> bool:
    """Whether this call runs the fused kernel (else the reference); a backend='triton' call the kernel
    cannot run raises a ValueError saying why."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference" or (backend == "auto" and not q.is_cuda):
        return False
    forced = backend == "triton"
    if return_weights or key_padding_mask is not None:
        if forced:
            raise ValueError("backend='triton' does not support return_weights or key_padding_mask; "
                             "use backend='reference'")
        return False
    if fused is None:
        if forced:
            raise ValueError("backend='triton' needs the triton package (pip install 'tda[triton]')")
        return False
    why = fused.unsupported_reason(q, k, v, p)
    if why is not None and forced:
        raise ValueError(f"backend='triton' cannot run this call: {why}")
    return why is None


def threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, *, kappa=1.0, p=2.0, causal=True,
                                     position_offset=0, normalize_qk=True, backend="auto",
                                     key_padding_mask=None, return_weights=False, check_finite=True):
    """sum_j (a1_ij - lam * a2_ij) v_j with a_ij = (cos(q_i, k_j) - tau_i)_+^p; see reference.py.

    Tensors are (B, H, N, D); k/v may have fewer heads than q (grouped-query). Query row r sits at
    absolute position position_offset + r (tau grows with it). Causal (bottom-right aligned: row r sees keys
    j <= r + N_k - N_q) needs N_q <= N_k <= N_q + position_offset: with a KV cache of c positions, k/v hold
    N_k = c + N_q keys and position_offset = c; N_k < N_q + position_offset is a window of the latest keys.
    Other lengths raise a ValueError. Returns the pre-RMSNorm aggregation.
    check_finite=False skips the NaN/inf test of beta/lam, which costs a host sync per call on CUDA
    (the layers pass False: their beta/lam are learned, and divergence shows in the loss); a non-finite
    beta/lam then gives undefined output (the kernel may return zeros) instead of a ValueError.
    """
    if _use_fused_kernel(backend, q1, k1, v, p, return_weights, key_padding_mask):
        return fused.threshold_differential_attention(
            q1, k1, q2, k2, v, beta, lam, kappa=kappa, p=p, causal=causal, position_offset=position_offset,
            normalize_qk=normalize_qk, check_finite=check_finite)
    return reference.threshold_differential_attention(
        q1, k1, q2, k2, v, beta, lam, kappa=kappa, p=p, causal=causal, position_offset=position_offset,
        normalize_qk=normalize_qk, key_padding_mask=key_padding_mask, return_weights=return_weights,
        check_finite=check_finite)


def threshold_rectified_attention(q, k, v, beta, *, kappa=1.0, p=2.0, causal=True, position_offset=0,
                                  normalize_qk=True, backend="auto", key_padding_mask=None,
                                  return_weights=False, check_finite=True):
    """sum_j (cos(q_i, k_j) - tau_i)_+^p v_j -- the single-view (TRA) case; arguments as for TDA."""
    if _use_fused_kernel(backend, q, k, v, p, return_weights, key_padding_mask):
        return fused.threshold_rectified_attention(
            q, k, v, beta, kappa=kappa, p=p, causal=causal, position_offset=position_offset,
            normalize_qk=normalize_qk, check_finite=check_finite)
    return reference.threshold_rectified_attention(
        q, k, v, beta, kappa=kappa, p=p, causal=causal, position_offset=position_offset,
        normalize_qk=normalize_qk, key_padding_mask=key_padding_mask, return_weights=return_weights,
        check_finite=check_finite)


__all__ = ["threshold_differential_attention", "threshold_rectified_attention", "l2_normalize", "tau",
           "reference", "BACKENDS"]
