"""Functional TDA / TRA attention with backend dispatch (SPEC §3).

backend="auto": the fused Triton kernel for CUDA tensors it supports, the reference elsewhere;
"triton": force the kernel (on a CPU this needs TRITON_INTERPRET=1 set before triton is imported);
"reference": the readable PyTorch oracle in reference.py.
"""
from __future__ import annotations

from . import reference
from .reference import l2_normalize, tau

BACKENDS = ("auto", "triton", "reference")


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _triton_module():
    """The kernel package, or None where triton cannot be imported."""
    try:  # imported lazily: CPU-only installs work without triton
        from .triton import attention as tk_attention
    except ImportError:
        return None
    return tk_attention


def _use_triton(backend, q, reason_args):
    if backend == "reference":
        return None
    if backend == "auto" and not q.is_cuda:
        return None
    tk = _triton_module()
    if tk is None:
        if backend == "triton":
            raise ValueError("backend='triton' needs the triton package (pip install 'tda[triton]')")
        return None
    why = tk.unsupported_reason(q, *reason_args)
    if why is not None:
        if backend == "triton":
            raise ValueError(f"backend='triton' cannot run this call: {why}")
        return None
    return tk


def _pick_kernel(backend, q, k, v, p, return_weights, key_padding_mask):
    """The kernel module to run this call with, or None for the reference."""
    _check_backend(backend)
    if return_weights or key_padding_mask is not None:
        if backend == "triton":
            raise ValueError("backend='triton' does not support return_weights or key_padding_mask; "
                             "use backend='reference'")
        return None
    return _use_triton(backend, q, (k, v, p))


def threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, *, kappa=1.0, p=2.0, causal=True,
                                     position_offset=0, normalize_qk=True, backend="auto",
                                     key_padding_mask=None, return_weights=False, check_finite=True):
    """sum_j (a1_ij - lam * a2_ij) v_j with a_ij = (cos(q_i, k_j) - tau_i)_+^p; see reference.py.

    Tensors are (B, H, N, D); k/v may have fewer heads than q (grouped-query) and be longer than q
    (KV cache: position_offset = number of cached positions). Returns the pre-RMSNorm aggregation.
    check_finite=False skips the NaN/inf test of beta/lam, which costs a host sync per call on CUDA
    (the layers pass False: their beta/lam are learned, and divergence shows in the loss); a non-finite
    beta/lam then gives undefined output (the kernel may return zeros) instead of a ValueError.
    """
    tk = _pick_kernel(backend, q1, k1, v, p, return_weights, key_padding_mask)
    if tk is not None:
        return tk.tda(q1, k1, q2, k2, v, beta, lam, kappa=kappa, p=p, causal=causal,
                      position_offset=position_offset, normalize_qk=normalize_qk, check_finite=check_finite)
    return reference.threshold_differential_attention(
        q1, k1, q2, k2, v, beta, lam, kappa=kappa, p=p, causal=causal, position_offset=position_offset,
        normalize_qk=normalize_qk, key_padding_mask=key_padding_mask, return_weights=return_weights,
        check_finite=check_finite)


def threshold_rectified_attention(q, k, v, beta, *, kappa=1.0, p=2.0, causal=True, position_offset=0,
                                  normalize_qk=True, backend="auto", key_padding_mask=None,
                                  return_weights=False, check_finite=True):
    """sum_j (cos(q_i, k_j) - tau_i)_+^p v_j — the single-view (TRA) case; see reference.py."""
    tk = _pick_kernel(backend, q, k, v, p, return_weights, key_padding_mask)
    if tk is not None:
        return tk.tra(q, k, v, beta, kappa=kappa, p=p, causal=causal, position_offset=position_offset,
                      normalize_qk=normalize_qk, check_finite=check_finite)
    return reference.threshold_rectified_attention(
        q, k, v, beta, kappa=kappa, p=p, causal=causal, position_offset=position_offset,
        normalize_qk=normalize_qk, key_padding_mask=key_padding_mask, return_weights=return_weights,
        check_finite=check_finite)


__all__ = ["threshold_differential_attention", "threshold_rectified_attention", "l2_normalize", "tau",
           "reference", "BACKENDS"]
