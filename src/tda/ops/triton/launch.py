"""The launches: from tensors and a KernelConfig to the kernels' arguments, grids and options.

`forward` runs the key-norm pre-pass (normalize_qk) and the forward kernel; `backward` the one-launch
backward. The caller (attention.py) sets the CUDA device and validates the inputs. Every kernel goes through
a launch cache (launch_cache.FastKernel): at short sequence lengths the host's per-launch work sets the time.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton

from .. import reference
from .bwd import attention_bwd_kernel
from .common import inv_norm_kernel
from .config import KernelConfig, interpreting
from .fwd import attention_fwd_kernel
from .launch_cache import FastKernel

_inv_norm = FastKernel(inv_norm_kernel)
_fwd = FastKernel(attention_fwd_kernel)
_bwd = FastKernel(attention_bwd_kernel)
EPS2 = reference.NORM_EPS * reference.NORM_EPS

# the unit keys' rounding (half an ulp, relative)
_HAT_ROUND = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24,
              torch.float64: 2.0 ** -53}


def hat_delta(dtype: torch.dtype, D: int) -> float:
    """The unit-key screen's margin in cosine units (training). With unit q^ and k^ (|.| <= 1) the screen's
    q . round(k^) differs from the raw-key path's (q . k) rq rk by at most |k^ - round(k^)| (u_k) plus both
    dot products' rounding ((d + 3) u each, u the accumulation's unit roundoff); this takes twice the
    latter, u taken as 2^-23 for fp32 accumulation (tensor cores may truncate), so a pair the screen drops
    has no survivor in the raw scores the backward recomputes."""
    u = 2.0 ** -52 if dtype == torch.float64 else 2.0 ** -23
    return _HAT_ROUND[dtype] + (4 * D + 16) * u


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # triton.cdiv is a jit function: microseconds of host work per call


def _p_mode(p: float) -> int:
    """The kernels' constexpr for the power: 1, 2, 3 exact fast paths, 0 the general exp2/log2 path."""
    return int(p) if p in (1.0, 2.0, 3.0) else 0


def _prec(dtype: torch.dtype) -> str:
    # fp32/fp64 inputs get exact products: the reference in fp32 does not use tf32 either
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _strides(t: Optional[torch.Tensor], like: torch.Tensor):
    return tuple((t if t is not None else like).stride())


def norm_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def inv_norms(x1, x2, hat=False):
    """(T, B, H, M) inverse norms 1 / sqrt(|x|^2 + NORM_EPS^2) of x1 (and x2, same shape), T = 1 or 2:
    fp32, fp64 for fp64 inputs; the same numbers as reference.l2_normalize's. hat: returns (norms, unit
    rows), the unit rows x * norm in x's dtype, contiguous (T, B, H, M, D), for the unit-key forward."""
    B, H, M, D = x1.shape
    two = x2 is not None
    r = torch.empty((2 if two else 1, B, H, M), device=x1.device, dtype=norm_dtype(x1))
    xh = torch.empty((2 if two else 1, B, H, M, D), device=x1.device, dtype=x1.dtype) if hat else None
    rows = B * H * M
    if rows > 0:
        BR = 64 if D <= 64 else 32
        _inv_norm[(_cdiv(rows, BR), 2 if two else 1)](
            x1, x2 if two else x1, r, xh if hat else r, *x1.stride(), *_strides(x2, x1), H, M, rows,
            EPS2=EPS2, TWO=two, HEAD_D=D, BLOCK_R=BR, WRITE_HAT=hat, num_warps=4)
    return (r, xh) if hat else r


def tma_rows_ok(t) -> bool:
    """Whether every head of t (B, H, N, D) can be read through a tensor descriptor: unit inner stride, and
    16-byte aligned base, rows and heads (TMA's requirements)."""
    e = t.element_size()
    return (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
            and all((st * e) % 16 == 0 for st in t.stride()[:-1]))


_TMA_OK: dict = {}


def tma_device_ok(t) -> bool:
    """Whether t's device has TMA (compute capability 9.0 or newer) and this Triton builds tensor descriptors
    in kernels; under the interpreter, whether the descriptors exist (they run there on any CPU). Cached per
    device."""
    if not hasattr(triton.language, "make_tensor_descriptor"):
        return False
    if not t.is_cuda:
        return True
    ok = _TMA_OK.get(t.device.index)
    if ok is None:
        ok = _TMA_OK[t.device.index] = torch.cuda.get_device_capability(t.device)[0] >= 9
    return ok


def _scratch(size: int, alignment: int, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


def _ensure_allocator():
    """The descriptors built in-kernel (tl.make_tensor_descriptor) need global scratch from Triton's
    allocator; set one (torch's caching allocator) unless the caller's context already has one. The
    interpreter needs none."""
    if interpreting():
        return
    try:
        from triton.runtime import _allocation
    except ImportError:  # a Triton without the allocator hook: nothing to set
        return
    current = _allocation._allocator.get()
    if isinstance(current, _allocation.NullAllocator):
        triton.set_allocator(_scratch)


def norm_args(rq, rk, like):
    """Kernel pointer arguments RQ1, RQ2, RK1, RK2 (any tensor where not normalising)."""
    if rq is None:
        return like, like, like, like
    return rq[0], rq[-1], rk[0], rk[-1]


def _tau_args(beta, scale):
    """Kernel arguments BETA, SCALE, s_beta, s_scale, HAS_BETA for tau_i = beta_h * scale[h, i]: beta (H,)
    (any stride) with the beta-free row factor scale (M,), or beta None with tau itself as scale (H, M)."""
    if beta is None:
        return scale, scale, 0, scale.stride(0), False
    return beta, scale, beta.stride(0), 0, True


def forward_meta(cfg: KernelConfig, D, Dv, dtype, two, causal, p, normalize, has_beta, for_bwd, tma,
                 varlen=False) -> dict:
    """The forward kernel's constexprs and launch options for a call (sm90.py compiles the same ones)."""
    screen = cfg.survivor_test or for_bwd  # training always tests: the backward needs the flags
    unit = cfg.unit_keys and normalize and screen
    FM, FN = cfg.flags if for_bwd else (cfg.block_m, cfg.block_n)
    meta = dict(TWO_VIEWS=two, CAUSAL=causal, P_MODE=_p_mode(p), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                HEAD_D=D, HEAD_DV=Dv, PREC=_prec(dtype), NORMALIZE=normalize, HAS_BETA=has_beta,
                TAU_F64=dtype == torch.float64, EPS2=EPS2, FLAG_M=FM, FLAG_N=FN, SCREEN=screen, FOR_BWD=for_bwd,
                UNIT_KEYS=unit, HAT_DELTA=hat_delta(dtype, D) if unit and for_bwd else 0.0,
                ROW_SCREEN=cfg.row_screen and not for_bwd, TMA=tma if unit else 0,
                MASK_SCREEN=cfg.mask_screen and screen, VARLEN=varlen, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages)
    if cfg.maxnreg:
        meta["maxnreg"] = cfg.maxnreg
    return meta


def backward_meta(cfg: KernelConfig, D, Dv, dtype, two, causal, p, normalize, has_beta, varlen=False) -> dict:
    """The backward kernel's constexprs and launch options for a call (sm90.py compiles the same ones)."""
    (KBM, KBN), (QBM, QBN), (MT, NT) = cfg.dkdv_block, cfg.dq_block, cfg.flags
    meta = dict(TWO_VIEWS=two, CAUSAL=causal, P_MODE=_p_mode(p), KV_BLOCK_M=KBM, KV_BLOCK_N=KBN,
                KV_R=max(KBM // MT, 1), KV_C=max(KBN // NT, 1), Q_BLOCK_M=QBM, Q_BLOCK_N=QBN, Q_R=max(QBM // MT, 1),
                Q_C=max(QBN // NT, 1), HEAD_D=D, HEAD_DV=Dv, MT=MT, NT=NT, PREC=_prec(dtype), NORMALIZE=normalize,
                HAS_BETA=has_beta, TAU_F64=dtype == torch.float64, SCALE_DTAU=has_beta, KV_LISTS=cfg.dkdv_lists,
                Q_LISTS=cfg.dq_lists, CHUNK=cfg.list_chunk, LIST_ROW=cfg.list_row, VARLEN=varlen,
                num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages)
    if cfg.bwd_maxnreg:
        meta["maxnreg"] = cfg.bwd_maxnreg
    return meta


def forward(q1, k1, q2, k2, v, beta, scale, lam, p, causal, cfg: KernelConfig, normalize=False, for_bwd=True,
            docs=None):
    """(out, flags, rq, rk): out (B, H, M, Dv); flags (B * H, cdiv(M, flag_m), cdiv(N, flag_n)) int8, the
    survivor flags; rq (T, B, H, M) / rk (T, B, Hk, N) the inverse norms (None unless normalize).
    tau from (beta, scale) as in _tau_args; lam (H,) any stride (TDA) or None (TRA). for_bwd=False (no
    backward will run: inference): the kernel neither computes nor stores the flags and rq, returned as None.
    docs: packed documents, (table, longest) with table int32 (n_docs, 3) = (batch row, first token,
    length) on the device (causal, M = N): each document attends within itself from position 0; the flags
    are then (n_docs * H, cdiv(longest, flag_m), cdiv(longest, flag_n)) and scale covers `longest` rows."""
    B, H, M, D = q1.shape
    Hk, N, Dv = k1.shape[1], k1.shape[2], v.shape[-1]
    n_row = M
    out = torch.empty((B, H, M, Dv), device=q1.device, dtype=q1.dtype)
    table = out
    if docs is not None:  # the kernels' "batch" is the document table, their M = N the longest document
        table, longest = docs
        B, M, N = table.shape[0], longest, longest
    two = q2 is not None
    BM, BN = cfg.block_m, cfg.block_n
    screen = cfg.survivor_test or for_bwd  # training always tests: the backward needs the flags
    FM, FN = cfg.flags if for_bwd else (BM, BN)
    n_mt, n_nt = _cdiv(M, FM), _cdiv(N, FN)
    empty = out.numel() == 0
    flags = rq = rk = None
    unit = cfg.unit_keys and normalize and screen
    tma = (2 if tma_rows_ok(v) else 1) if (cfg.tma and unit and tma_device_ok(q1)) else 0
    if tma:
        _ensure_allocator()
    if for_bwd:
        # the kernel writes every flag (visited pairs: survivor or not; the rest: 0): no zero-fill launch;
        # with documents, the rows past a document's length are never written, so they start at zero
        flags = (torch.zeros if empty or docs is not None else torch.empty)(
            (B * H, n_mt, n_nt), device=q1.device, dtype=torch.int8)
    kh = None
    if normalize:  # rq is written by the forward kernel itself, rk (and the unit keys kh) by the pre-pass
        if for_bwd:  # per token, in the rows' layout
            rq = torch.empty((2 if two else 1, q1.shape[0], H, n_row), device=q1.device, dtype=norm_dtype(q1))
        rk = inv_norms(k1, k2, hat=unit)
        if unit:
            rk, kh = rk
    if empty:
        return out, flags, rq, rk
    BETA, SCALE, s_beta, s_scale, has_beta = _tau_args(beta, scale)
    RQ1, RQ2, RK1, RK2 = norm_args(rq if for_bwd else rk, rk, SCALE)  # rk: a stand-in rq, never written
    KH1, KH2 = (kh[0], kh[-1]) if kh is not None else (RK1, RK2)
    n_bh = B * H
    _fwd[(_cdiv(M, BM) * n_bh,)](
        q1, k1, q2 if two else q1, k2 if two else k1, v, BETA, SCALE, lam if two else SCALE, out,
        flags if flags is not None else out, RQ1, RQ2, RK1, RK2, KH1, KH2, table,
        *q1.stride(), *_strides(q2, q1), *k1.stride(), *_strides(k2, k1), *v.stride(), *out.stride(),
        s_beta, s_scale, lam.stride(0) if two else 0, H, H // Hk, M, N, n_mt, n_nt, float(p), n_bh,
        min(cfg.group, n_bh),  # (no larger: the kernel's group * blocks stays within int32, like the grid)
        n_row, **forward_meta(cfg, D, Dv, q1.dtype, two, causal, p, rk is not None, has_beta, for_bwd, tma,
                              docs is not None))
    return out, flags, rq, rk


def backward(do, q1, k1, q2, k2, v, beta, scale, lam, flags, rq, rk, p, causal, cfg: KernelConfig, norm=None,
             docs=None):
    """(dq1, dk1, dq2, dk2, dv, g): gradients with respect to the kernel's q/k inputs -- raw q/k when
    rq/rk (the forward's inverse norms) are given, i.e. the normalisation's backward included; else q/k are
    taken as the unit vectors -- and g (2, H, B, M) fp32: per row, dtau_i and -sum_j a2_ij dDa_ij (TDA; zero
    for TRA); when beta is given, (2, H, B, cdiv(M, dQ block)): per dQ program, the sums of dtau_i * scale_i
    (the rows' dbeta shares) and of the dlam shares. `flags` come from `forward` with the same cfg.
    norm: norm_args(rq, rk, scale) if the caller prepared it already (the eager op does so in its forward,
    off the backward's thread). docs: as for `forward` (every token belongs to a document, so every gradient
    row is written)."""
    B, H, M, D = q1.shape
    Hk, N, Dv = k1.shape[1], k1.shape[2], v.shape[-1]
    two = q2 is not None
    n_mt, n_nt = flags.shape[1], flags.shape[2]
    # separate buffers: the custom op may not return outputs that alias each other
    dq1 = torch.empty((B, H, M, D), device=q1.device, dtype=q1.dtype)
    dk1 = torch.empty((B, Hk, N, D), device=q1.device, dtype=q1.dtype)
    dq2 = torch.empty_like(dq1) if two else dq1
    dk2 = torch.empty_like(dk1) if two else dk1
    dv = torch.empty((B, Hk, N, Dv), device=q1.device, dtype=v.dtype)
    n_row, table = M, flags
    if docs is not None:  # as in forward: the document table is the kernels' batch
        table, longest = docs
        B, M, N = table.shape[0], longest, longest
    # the rows' dtau / dlam shares: fp64 for fp32 inputs, so that the heavily cancelling sums behind the scalar
    # dbeta / dlam keep fp32's accuracy (fp32 partials alone failed the GPU check's criterion there)
    tdt = torch.float64 if q1.dtype in (torch.float32, torch.float64) else torch.float32
    KBN, QBM = cfg.dkdv_block[1], cfg.dq_block[0]
    # the eager path (beta given) gets one sum per dQ program, (2, H, B, cdiv(M, dQ block)): see bwd._dq_program
    g_rows = _cdiv(M, QBM) if beta is not None else M
    # (documents: the programs past a document's length write no share, so those start at zero)
    g = (torch.empty if two and docs is None else torch.zeros)((2, H, B, g_rows), device=q1.device, dtype=tdt)
    if dq1.numel() == 0 or dk1.numel() == 0:
        for t in (dq1, dk1, dq2, dk2, dv, g):
            t.zero_()
        return dq1, dk1, (dq2 if two else None), (dk2 if two else None), dv, g
    BETA, SCALE, s_beta, s_scale, has_beta = _tau_args(beta, scale)
    n_kb, n_qb = _cdiv(N, KBN), _cdiv(M, QBM)
    # scratch rows for the lists, int32: one per dK/dV program (min(list_row, cdiv(M, KBM)) entries), then
    # one per dQ program (min(list_row, cdiv(N, QBN)) entries)
    row = cfg.list_row
    scr_q = B * Hk * n_kb * min(row, _cdiv(M, cfg.dkdv_block[0]))
    scr = torch.empty(scr_q + B * H * n_qb * min(row, _cdiv(N, cfg.dq_block[1])), device=q1.device,
                      dtype=torch.int32) if cfg.dkdv_lists or cfg.dq_lists else flags
    _bwd[(n_kb * B * Hk + n_qb * B * H,)](  # one flat grid: no cap on batch * heads
        q1, k1, q2 if two else q1, k2 if two else k1, v, BETA, SCALE, lam if two else SCALE, do, flags,
        *(norm if norm is not None else norm_args(rq, rk, SCALE)),
        dk1, dk2, dv, dq1, dq2, g[0], g[1], scr, table,
        *q1.stride(), *_strides(q2, q1), *k1.stride(), *_strides(k2, k1), *v.stride(), *do.stride(),
        s_beta, s_scale, lam.stride(0) if two else 0, H, H // Hk, M, N, n_mt, n_nt, float(p),
        n_kb, n_kb * B * Hk, n_qb, scr_q, min(cfg.bwd_group, B * H), n_row,
        **backward_meta(cfg, D, Dv, q1.dtype, two, causal, p, rq is not None, has_beta, docs is not None))
    return dq1, dk1, (dq2 if two else None), (dk2 if two else None), dv, g
