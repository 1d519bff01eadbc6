"""Entry points of the fused kernels: `tda`, `tra`, `unsupported_reason` (called by tda.ops dispatch).

Semantics are those of tda.ops.reference (see its docstring). The l2 normalisation of q/k is fused
(normalize_qk=True): the kernels get the raw q/k, a small pre-pass kernel (common.inv_norm_kernel) writes
the fp32 inverse norms rq (B, H, M) and rk (B, Hk, N) of each view -- O(N), kept for the backward -- and
the kernels scale the raw dot products by them and apply the normalisation's exact backward in their
epilogues. What happens outside the kernels, in PyTorch and hence under autograd: the row thresholds
tau (H, M) = beta_h * sqrt(2 max(log((pos+1)/kappa), 0) / d) (reference.tau), so dbeta comes from the
kernels' per-row dtau by autograd. The launches are wrapped as the torch custom ops
`tda::threshold_attention_fwd` / `_bwd` (opaque to torch.compile: no graph break); in eager mode the same
launches go through a plain autograd.Function, which dispatches faster.

Forward: tda_fwd_kernel (fwd.py) also records, per (query block, key block), whether any exceedance
survived; the backward kernels (bwd.py) skip the empty pairs.
"""

import contextlib
import os
import weakref
from typing import Optional

import torch
import triton

from .. import reference
from ..validate import _check_scalar_param, check_inputs
from .bwd import tda_bwd_dkdv_kernel, tda_bwd_dq_kernel
from .common import inv_norm_kernel
from .fwd import tda_fwd_kernel

HEAD_DIMS = (16, 32, 64, 128)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Block sizes: (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel. Tests and benchmarks may override
# them through `set_config` (e.g. small tiles so that tiny interpreter shapes span several blocks).
_OVERRIDE: dict = {}
# Forward handling of survivor-free blocks: 0 accumulate anyway, 1 skip the V load and the product,
# 2 load V (keeps it in the software pipeline) but skip the product, 3 no survivor test at all (every
# flag set, so the backward skips nothing either: for measuring what the test costs). Backward:
# PREFETCH loads a block pair's q/dO (dK/dV kernel) or k/v (dQ kernel) before testing its flag.
# Defaults are the fastest on an H200 (docs/benchmarks.md).
SKIP_EMPTY = 1
PREFETCH = False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def set_config(**kw):
    """Override block configs: set_config(fwd=(BM, BN, warps, stages), dkdv=..., dq=...); no args resets."""
    _OVERRIDE.clear()
    _OVERRIDE.update({k: tuple(v) for k, v in kw.items() if v is not None})


def _configs(D: int, dtype: torch.dtype, two_views: bool) -> dict:
    if _interpreting():
        cfg = {"fwd": (16, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1)}
    elif dtype == torch.float32:
        cfg = {"fwd": (64, 32, 4, 2), "dkdv": (32, 64, 4, 2), "dq": (64, 32, 4, 2)}
    elif D <= 64:  # chosen by benchmarks/bench_attention.py --sweep on an H200 (docs/benchmarks.md)
        cfg = {"fwd": (128, 128, 8, 2), "dkdv": (64, 64, 4, 2), "dq": (64, 64, 4, 2)}
    else:
        cfg = {"fwd": (128, 64, 8, 3), "dkdv": (64, 64, 4, 2), "dq": (128, 64, 8, 2)}
    cfg.update(_OVERRIDE)
    return cfg


def _p_mode(p: float) -> int:
    return int(p) if p in (1.0, 2.0, 3.0) else 0


def _prec(dtype: torch.dtype) -> str:
    # fp32/fp64 inputs get exact products: the reference in fp32 does not use tf32 either
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _strides(t: Optional[torch.Tensor], like: torch.Tensor):
    return tuple((t if t is not None else like).stride())


def unsupported_reason(q, k, v, p) -> Optional[str]:
    """None if the fused kernel can run a call with these tensors, else why not (in words)."""
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return None  # let argument validation name the culprit
    if q.device.type != "cuda" and not _interpreting():
        return f"tensors are on {q.device.type}; the Triton kernel needs CUDA (or TRITON_INTERPRET=1)"
    dtypes = _DTYPES + ((torch.float64,) if _interpreting() else ())
    if q.dtype not in dtypes:
        return f"dtype {q.dtype} not in {tuple(str(d) for d in dtypes)}"
    if q.dim() == 4 and q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} not in {HEAD_DIMS}"
    if v.dim() == 4 and v.shape[-1] not in HEAD_DIMS:
        return f"value head dim {v.shape[-1]} not in {HEAD_DIMS}"
    return None


# ---------------------------------------------------------------------------------------------------
# launchers

def _inv_norms(x1, x2):
    """(T, B, H, M) inverse norms 1 / sqrt(|x|^2 + NORM_EPS^2) of x1 (and x2, same shape), T = 1 or 2:
    fp32, fp64 for fp64 inputs; the same numbers as reference.l2_normalize's."""
    B, H, M, D = x1.shape
    two = x2 is not None
    rdt = torch.float64 if x1.dtype == torch.float64 else torch.float32
    r = torch.empty((2 if two else 1, B, H, M), device=x1.device, dtype=rdt)
    rows = B * H * M
    if rows == 0:
        return r
    BR = 64 if D <= 64 else 32
    with torch.cuda.device(x1.device) if x1.is_cuda else contextlib.nullcontext():
        inv_norm_kernel[(triton.cdiv(rows, BR), 2 if two else 1)](
            x1, x2 if two else x1, r, *x1.stride(), *_strides(x2, x1), H, M, rows,
            EPS2=reference.NORM_EPS * reference.NORM_EPS, TWO=two, HEAD_D=D, BLOCK_R=BR, num_warps=4)
    return r


def _norm_args(rq, rk, like):
    """Kernel pointer arguments RQ1, RQ2, RK1, RK2 (any tensor where not normalising)."""
    if rq is None:
        return like, like, like, like
    return rq[0], rq[-1], rk[0], rk[-1]


def _launch_fwd(q1, k1, q2, k2, v, tau, lam, p, causal, cfg, normalize=False):
    """(out, flags, rq, rk): rq (T, B, H, M) / rk (T, B, Hk, N) the inverse norms (None unless normalize)."""
    B, H, M, D = q1.shape
    Hk, N, Dv = k1.shape[1], k1.shape[2], v.shape[-1]
    two = q2 is not None
    BM, BN, warps, stages = cfg["fwd"]
    n_mt, n_nt = triton.cdiv(M, BM), triton.cdiv(N, BN)
    out = torch.empty((B, H, M, Dv), device=q1.device, dtype=q1.dtype)
    flags = (torch.ones if SKIP_EMPTY == 3 else torch.zeros)((B * H, n_mt, n_nt), device=q1.device,
                                                             dtype=torch.int8)
    rq, rk = (_inv_norms(q1, q2), _inv_norms(k1, k2)) if normalize else (None, None)
    if out.numel() == 0:
        return out, flags, rq, rk
    grid = (n_mt, B * H)
    with torch.cuda.device(q1.device) if q1.is_cuda else contextlib.nullcontext():
        tda_fwd_kernel[grid](
            q1, k1, q2 if two else q1, k2 if two else k1, v, tau, lam if two else tau, out, flags,
            *_norm_args(rq, rk, tau),
            *q1.stride(), *_strides(q2, q1), *k1.stride(), *_strides(k2, k1), *v.stride(), *out.stride(),
            H, H // Hk, M, N, n_mt, n_nt, float(p),
            TWO_VIEWS=two, CAUSAL=causal, P=_p_mode(p), BLOCK_M=BM, BLOCK_N=BN, HEAD_D=D, HEAD_DV=Dv,
            PREC=_prec(q1.dtype), SKIP_EMPTY=int(SKIP_EMPTY), NORMALIZE=rq is not None,
            num_warps=warps, num_stages=stages)
    return out, flags, rq, rk


def _launch_bwd(do, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, p, causal, MT, NT, cfg):
    """Gradients with respect to the kernel's q/k inputs: raw q/k when rq/rk (the forward's inverse norms)
    are given, i.e. the normalisation's backward included; else q/k are taken as the unit vectors."""
    B, H, M, D = q1.shape
    Hk, N, Dv = k1.shape[1], k1.shape[2], v.shape[-1]
    two = q2 is not None
    n_mt, n_nt = flags.shape[1], flags.shape[2]
    dq1 = torch.empty_like(q1, memory_format=torch.contiguous_format)
    dk1 = torch.empty_like(k1, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    dq2 = torch.empty_like(dq1) if two else dq1.new_empty(0)
    dk2 = torch.empty_like(dk1) if two else dk1.new_empty(0)
    dtau = torch.empty((B * H, M), device=q1.device, dtype=tau.dtype)
    dlam = torch.empty((B * H, M), device=q1.device, dtype=tau.dtype) if two else dtau.new_empty(0)
    if dq1.numel() == 0 or dk1.numel() == 0:
        for t in (dq1, dk1, dv, dq2, dk2, dtau, dlam):
            t.zero_()
    else:
        common = (*q1.stride(), *_strides(q2, q1), *k1.stride(), *_strides(k2, k1), *v.stride(), *do.stride())
        args = (q1, k1, q2 if two else q1, k2 if two else k1, v, tau, lam if two else tau, do, flags,
                *_norm_args(rq, rk, tau))
        with torch.cuda.device(q1.device) if q1.is_cuda else contextlib.nullcontext():
            BM, BN, warps, stages = cfg["dkdv"]
            tda_bwd_dkdv_kernel[(triton.cdiv(N, BN), B * Hk)](
                *args, dk1, dk2 if two else dk1, dv, *common, Hk, H // Hk, M, N, n_mt, n_nt, float(p),
                TWO_VIEWS=two, CAUSAL=causal, P=_p_mode(p), BLOCK_M=BM, BLOCK_N=BN, HEAD_D=D, HEAD_DV=Dv,
                MT=MT, NT=NT, R=max(BM // MT, 1), C=max(BN // NT, 1), PREC=_prec(q1.dtype), PREFETCH=bool(PREFETCH),
                NORMALIZE=rq is not None, num_warps=warps, num_stages=stages)
            BM, BN, warps, stages = cfg["dq"]
            tda_bwd_dq_kernel[(triton.cdiv(M, BM), B * H)](
                *args, dq1, dq2 if two else dq1, dtau, dlam if two else dtau, *common,
                H, H // Hk, M, N, n_mt, n_nt, float(p),
                TWO_VIEWS=two, CAUSAL=causal, P=_p_mode(p), BLOCK_M=BM, BLOCK_N=BN, HEAD_D=D, HEAD_DV=Dv,
                MT=MT, NT=NT, R=max(BM // MT, 1), C=max(BN // NT, 1), PREC=_prec(q1.dtype), PREFETCH=bool(PREFETCH),
                NORMALIZE=rq is not None, num_warps=warps, num_stages=stages)
    dtau_h = dtau.view(B, H, M).sum(0)
    dlam_h = dlam.view(B, H, M).sum((0, 2)) if two else dlam
    return dq1, dk1, dq2, dk2, dv, dtau_h, dlam_h


# ---------------------------------------------------------------------------------------------------
# torch custom ops (opaque to torch.compile) with autograd

@torch.library.custom_op("tda::threshold_attention_fwd", mutates_args=())
def threshold_attention_fwd(q1: torch.Tensor, k1: torch.Tensor, q2: Optional[torch.Tensor],
                            k2: Optional[torch.Tensor], v: torch.Tensor, tau: torch.Tensor,
                            lam: Optional[torch.Tensor], p: float, causal: bool, normalize: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, survivor flags, rq, rk) for tau (H, M) fp32 and lam (H,) fp32 (TDA) or None (TRA).
    normalize: q/k are raw and the op uses their cosine (rq (T, B, H, M), rk (T, B, Hk, N) are the inverse
    norms, for the backward); else q/k are used as given (unit vectors) and rq, rk are empty."""
    cfg = _configs(q1.shape[-1], q1.dtype, q2 is not None)
    out, flags, rq, rk = _launch_fwd(q1, k1, q2, k2, v, tau, lam, p, causal, cfg, normalize)
    if rq is None:
        rq, rk = tau.new_empty(0), tau.new_empty(0)
    return out, flags, rq, rk


def _norm_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@threshold_attention_fwd.register_fake
def _(q1, k1, q2, k2, v, tau, lam, p, causal, normalize=False):
    B, H, M, D = q1.shape
    Hk, N = k1.shape[1], k1.shape[2]
    BM, BN = _configs(D, q1.dtype, q2 is not None)["fwd"][:2]
    out = q1.new_empty((B, H, M, v.shape[-1]))
    flags = q1.new_empty((B * H, -(-M // BM), -(-N // BN)), dtype=torch.int8)
    T = 2 if q2 is not None else 1
    if normalize:
        rq = q1.new_empty((T, B, H, M), dtype=_norm_dtype(q1))
        rk = q1.new_empty((T, B, Hk, N), dtype=_norm_dtype(q1))
    else:
        rq, rk = tau.new_empty(0), tau.new_empty(0)
    return out, flags, rq, rk


@torch.library.custom_op("tda::threshold_attention_bwd", mutates_args=())
def threshold_attention_bwd(do: torch.Tensor, q1: torch.Tensor, k1: torch.Tensor, q2: Optional[torch.Tensor],
                            k2: Optional[torch.Tensor], v: torch.Tensor, tau: torch.Tensor,
                            lam: Optional[torch.Tensor], flags: torch.Tensor, rq: torch.Tensor, rk: torch.Tensor,
                            p: float, causal: bool, MT: int, NT: int
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                       torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq1, dk1, dq2, dk2, dv, dtau (H, M), dlam (H,)); the view-2 and lam grads are empty for TRA.
    rq, rk: the forward's inverse norms (empty: no normalisation)."""
    cfg = _configs(q1.shape[-1], q1.dtype, q2 is not None)
    if rq.numel() == 0 or rk.numel() == 0:
        rq, rk = None, None
    return _launch_bwd(do, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, p, causal, MT, NT, cfg)


@threshold_attention_bwd.register_fake
def _(do, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, p, causal, MT, NT):
    two = q2 is not None
    H, M = q1.shape[1], q1.shape[2]
    dq2 = torch.empty_like(q1) if two else q1.new_empty(0)
    dk2 = torch.empty_like(k1) if two else k1.new_empty(0)
    dlam = q1.new_empty((H,), dtype=tau.dtype) if two else q1.new_empty(0, dtype=tau.dtype)
    return (torch.empty_like(q1), torch.empty_like(k1), dq2, dk2, torch.empty_like(v),
            q1.new_empty((H, M), dtype=tau.dtype), dlam)


def _setup_context(ctx, inputs, output):
    q1, k1, q2, k2, v, tau, lam, p, causal, normalize = inputs
    _, flags, rq, rk = output
    ctx.save_for_backward(q1, k1, q2, k2, v, tau, lam, flags, rq, rk)
    ctx.p, ctx.causal = p, causal
    ctx.MT, ctx.NT = _configs(q1.shape[-1], q1.dtype, q2 is not None)["fwd"][:2]
    ctx.mark_non_differentiable(flags, rq, rk)


def _backward(ctx, dout, dflags, drq, drk):
    q1, k1, q2, k2, v, tau, lam, flags, rq, rk = ctx.saved_tensors
    dq1, dk1, dq2, dk2, dv, dtau, dlam = threshold_attention_bwd(
        dout, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, ctx.p, ctx.causal, ctx.MT, ctx.NT)
    two = q2 is not None
    return (dq1, dk1, dq2 if two else None, dk2 if two else None, dv, dtau, dlam if two else None,
            None, None, None)


threshold_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------
# public functions (same signature, checks and error messages as reference.py)

_VALIDATED: dict = {}  # name -> (weakref to a beta/lam tensor, its version) that passed the checks
_SCALE_CACHE: dict = {}  # (device, M, offset, kappa, d) -> fp32 (M,) row factor of tau


def _scalar_param(name, t, n_heads, ref):
    """_check_scalar_param, whose finiteness test costs a host sync on CUDA, skipped for the very tensor
    object (same version counter, so not modified in place since) that passed it on the previous call."""
    if isinstance(t, torch.Tensor) and not torch.compiler.is_compiling():
        seen = _VALIDATED.get(name)
        if (seen is not None and seen[0]() is t and seen[1] == t._version and seen[2] == n_heads
                and t.is_floating_point()):
            return t.reshape(-1).expand(n_heads)
        out = _check_scalar_param(name, t, n_heads, ref)
        _VALIDATED[name] = (weakref.ref(t), t._version, n_heads)
        return out
    return _check_scalar_param(name, t, n_heads, ref)


def _tau_rows(beta, M, position_offset, kappa, D, dtype):
    """reference.tau(positions, beta, kappa, D) as (H, M) fp32 (fp64 for fp64 inputs), the beta-free row
    factor cached per shape so that a call costs one multiply instead of a dozen small kernels."""
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    if torch.compiler.is_compiling() or beta.dtype == torch.float64:
        positions = torch.arange(position_offset, position_offset + M, device=beta.device)
        return reference.tau(positions, beta, kappa, D).to(pdt).contiguous()
    key = (beta.device, M, position_offset, kappa, D)
    scale = _SCALE_CACHE.get(key)
    if scale is None:
        positions = torch.arange(position_offset, position_offset + M, device=beta.device)
        scale = reference.tau(positions, torch.ones(1, device=beta.device), kappa, D)[0]
        if len(_SCALE_CACHE) > 64:
            _SCALE_CACHE.clear()
        _SCALE_CACHE[key] = scale
    # same rounding as reference.tau: fp32 beta times the fp32 scale
    return (beta.to(torch.float32)[:, None] * scale[None, :]).to(pdt)


def _run(q1, k1, q2, k2, v, beta, lam, *, kappa, p, causal, position_offset, normalize_qk):
    qs = [("q1", q1), ("q2", q2)] if q2 is not None else [("q", q1)]
    ks = [("k1", k1), ("k2", k2)] if k2 is not None else [("k", k1)]
    B, H, M, D, Hk, N = check_inputs(qs, ks, v, kappa=kappa, p=p, position_offset=position_offset)
    beta = _scalar_param("beta", beta, H, q1)
    lam = _scalar_param("lam", lam, H, q1) if q2 is not None else None
    why = unsupported_reason(q1, k1, v, p)
    if why is not None:
        raise ValueError(f"the Triton kernel cannot run this call: {why}")
    # normalize_qk: fused in the kernels (raw q/k in, their inverse norms computed by a pre-pass kernel)
    tau_rows = _tau_rows(beta, M, position_offset, float(kappa), D, q1.dtype)
    lam_h = lam.to(tau_rows.dtype).contiguous() if lam is not None else None
    if torch.compiler.is_compiling():
        out = threshold_attention_fwd(q1, k1, q2, k2, v, tau_rows, lam_h, float(p), bool(causal),
                                      bool(normalize_qk))[0]
    else:  # eager: the same launches through a plain autograd.Function, which dispatches faster
        out = _EagerTDA.apply(q1, k1, q2, k2, v, tau_rows, lam_h, float(p), bool(causal), bool(normalize_qk))
    return out


class _EagerTDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q1, k1, q2, k2, v, tau, lam, p, causal, normalize):
        cfg = _configs(q1.shape[-1], q1.dtype, q2 is not None)
        out, flags, rq, rk = _launch_fwd(q1, k1, q2, k2, v, tau, lam, p, causal, cfg, normalize)
        ctx.save_for_backward(q1, k1, q2, k2, v, tau, lam, flags, rq, rk)
        ctx.p, ctx.causal, ctx.cfg = p, causal, cfg
        return out

    @staticmethod
    def backward(ctx, dout):
        q1, k1, q2, k2, v, tau, lam, flags, rq, rk = ctx.saved_tensors
        MT, NT = ctx.cfg["fwd"][:2]
        dq1, dk1, dq2, dk2, dv, dtau, dlam = _launch_bwd(dout, q1, k1, q2, k2, v, tau, lam, flags, rq, rk,
                                                         ctx.p, ctx.causal, MT, NT, ctx.cfg)
        two = q2 is not None
        return (dq1, dk1, dq2 if two else None, dk2 if two else None, dv, dtau, dlam if two else None,
                None, None, None)


def tda(q1, k1, q2, k2, v, beta, lam, *, kappa=1.0, p=2.0, causal=True, position_offset=0,
        normalize_qk=True):
    """Fused TDA: sum_j (a1_ij - lam a2_ij) v_j, a_ij = (cos(q_i, k_j) - tau_i)_+^p; see reference.py."""
    if q2 is None or k2 is None:
        raise ValueError("q2 and k2 are required for TDA; use threshold_rectified_attention for one view")
    return _run(q1, k1, q2, k2, v, beta, lam, kappa=kappa, p=p, causal=causal,
                position_offset=position_offset, normalize_qk=normalize_qk)


def tra(q, k, v, beta, *, kappa=1.0, p=2.0, causal=True, position_offset=0, normalize_qk=True):
    """Fused TRA: sum_j (cos(q_i, k_j) - tau_i)_+^p v_j (single view)."""
    return _run(q, k, None, None, v, beta, None, kappa=kappa, p=p, causal=causal,
                position_offset=position_offset, normalize_qk=normalize_qk)
