"""Split-KV decode kernel for TDA (two views) and TRA (one view) over a cache of unit keys.

A decode step has a few query rows (M = 1..16) and a long cache. Per (sequence b, kv head, split) one
program takes the G * M query rows of the G = H / Hk query heads that share the kv head (row rho = g * M + r,
query head hk * G + g, absolute position i = L_b - M + r) as one tile, so grouped-query heads share every
K/V load, and walks the split's key blocks:

    s^(t) = <q^(t)_i, k^(t)_j> / |q^(t)_i|      (the cache holds unit keys: no key norm is taken)
    e^(t) = (s^(t) - tau_i)_+ ** p,  tau_i = beta_h * sqrt(2 * max(log((i + 1) / kappa), 0) / d)
    w     = e^(1) - lam_h * e^(2)               (TRA: w = e^(1))
    part  = sum_j w_ij v_j                      over the split's keys j <= i, j < L_b

A key block where no row of either view exceeds its tau (an exact zero everywhere) never loads its V block
nor runs the PV product. TDA has no softmax max or denominator, so the splits' partial sums add up
plainly: a second small kernel sums them (fp32) into the output. With one split the main kernel writes the
output itself.

The split count is chosen so that even one sequence fills the GPU (`num_splits`); the block table is data
(`DecodeConfig`, `decode_config`). Checked against tda.ops.reference by tests/test_decode_kernel.py (under
the interpreter) and benchmarks/check_decode.py (GPU).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import reference
from .common import exceed_pow, inv_norm_rows, load_tau
from .attention import _on_device, interpreter_dot_ok
from .config import interpreting
from .launch_cache import FastKernel

HEAD_DIMS = (16, 32, 64, 128)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_EPS2 = reference.NORM_EPS * reference.NORM_EPS


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Launch settings of the decode kernels.

    block_n: keys per block (the grain of the V skip); max_rows: query rows per tile (G * M rows are
    tiled in powers of two between 16, tl.dot's minimum, and this); num_warps / num_stages: the split
    kernel's; programs_per_sm: how many split programs per SM the split count aims for; min_split_blocks:
    key blocks a split holds at least (each split pays a query load and a partial write); max_splits: cap.
    """
    block_n: int = 64
    max_rows: int = 32
    num_warps: int = 4
    num_stages: int = 3
    programs_per_sm: int = 4
    min_split_blocks: int = 4
    max_splits: int = 256


@functools.lru_cache(maxsize=64)  # called per layer and decode step: a dict hit, not a dataclass construction
def decode_config(D: int, dtype: torch.dtype, rows: int = 1, interpreting: bool = False) -> DecodeConfig:
    """The block table, per head dim D, dtype and query rows per kv head (G * M). Small blocks under the
    interpreter (tiny test shapes still span several blocks and splits). On the GPU, sizes that compile for
    sm_90 without register spills and leave two or more programs per SM (tests/test_decode_kernel.py
    compiles them): 16 KiB of keys (both views) per pipeline stage at d = 64 and 128 alike."""
    if interpreting:
        return DecodeConfig(block_n=16, max_rows=32, num_warps=1, num_stages=1, programs_per_sm=1,
                            min_split_blocks=1, max_splits=64)
    if dtype == torch.float32:
        return DecodeConfig(block_n=32, max_rows=32, num_stages=2)
    if D <= 64:
        return DecodeConfig(block_n=64, max_rows=32, num_stages=3)
    if rows <= 16:
        return DecodeConfig(block_n=32, max_rows=32, num_stages=4)
    return DecodeConfig(block_n=32, max_rows=32, num_stages=3)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (>= 1); triton.next_power_of_2 costs microseconds per call on some
    Triton versions, twice per layer and decode step here."""
    return 1 << max(n - 1, 0).bit_length()


def num_splits(programs: int, max_len: int, cfg: DecodeConfig, n_sm: int) -> int:
    """Splits over the keys for `programs` (batch * kv heads * row tiles) programs per split and a longest
    sequence of max_len keys: enough for programs_per_sm programs on every SM, no split shorter than
    min_split_blocks key blocks."""
    blocks = -(-max_len // cfg.block_n)
    by_len = max(1, blocks // cfg.min_split_blocks)
    want = -(-(cfg.programs_per_sm * n_sm) // max(programs, 1))
    return max(1, min(want, by_len, cfg.max_splits))


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """How one call is cut: rows per tile and tiles, key blocks per split and splits."""
    block_r: int
    row_tiles: int
    chunk: int  # keys per split, a multiple of block_n
    splits: int


def plan(G: int, M: int, B: int, Hk: int, max_len: int, cfg: DecodeConfig, n_sm: int,
         splits: Optional[int] = None) -> DecodePlan:
    """The call's cut; `splits` forces a split count (tests), else num_splits."""
    rows = G * M
    block_r = max(16, min(_pow2(rows), cfg.max_rows))
    row_tiles = -(-rows // block_r)
    if splits is None:
        splits = num_splits(B * Hk * row_tiles, max_len, cfg, n_sm)
    blocks = -(-max_len // cfg.block_n)
    per = -(-blocks // max(1, min(int(splits), blocks)))
    chunk = per * cfg.block_n
    return DecodePlan(block_r, row_tiles, chunk, -(-max_len // chunk))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 8 under the interpreter (so its auto split count is exercised)."""
    if device.type != "cuda":
        return 8
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())




def unsupported_reason(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> Optional[str]:
    """None if the decode kernel can run a call with these (validated) tensors, else why not (in words)."""
    if q.is_cuda and q.dtype in _DTYPES and q.shape[-1] in HEAD_DIMS and v_cache.shape[-1] in HEAD_DIMS:
        return None  # the common case (every layer, every decode step), without the environment look-ups
    if q.device.type != "cuda" and not interpreting():
        return f"tensors are on {q.device.type}; the Triton kernel needs CUDA (or TRITON_INTERPRET=1)"
    dtypes = _DTYPES + ((torch.float64,) if interpreting() else ())
    if q.dtype not in dtypes:
        return f"dtype {q.dtype} not in {tuple(str(d) for d in dtypes)}"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} not in {HEAD_DIMS}"
    if v_cache.shape[-1] not in HEAD_DIMS:
        return f"value head dim {v_cache.shape[-1]} not in {HEAD_DIMS}"
    if interpreting() and q.dtype in (torch.float16, torch.bfloat16) and not interpreter_dot_ok(q.dtype):
        return (f"this Triton's interpreter ({triton.__version__}) computes {q.dtype} products wrongly; "
                f"on the CPU pass float32 or float64 (or use backend='reference')")
    return None


_SCALE_CACHE: dict = {}


def tau_scale(S: int, kappa: float, D: int, device, dtype: torch.dtype) -> torch.Tensor:
    """reference.tau's beta-free factor for absolute positions 0..S-1, (S,) in dtype (fp32, fp64 for an fp64
    beta), cached: the kernel forms tau_i = beta_h * scale[i] with reference.tau's rounding."""
    key = (device, S, kappa, D, dtype)
    scale = _SCALE_CACHE.get(key)
    if scale is None:
        positions = torch.arange(S, device=device)
        scale = reference.tau(positions, torch.ones(1, device=device, dtype=dtype), kappa, D)[0].contiguous()
        if len(_SCALE_CACHE) > 64:
            _SCALE_CACHE.clear()
        _SCALE_CACHE[key] = scale
    return scale


@triton.jit
def _scores(q, rq, k_base, s_kn, s_kd, offs_n, hi, tau, pos, MASKED: tl.constexpr, ACC: tl.constexpr,
            HEAD_D: tl.constexpr, PREC: tl.constexpr):
    """Exceedance (s - tau)_+ of the row tile against one key block; MASKED: 0 where a key lies at or past
    hi or after a row's position (the split's last block, the causal edge), else every key is visible."""
    offs_d = tl.arange(0, HEAD_D)
    if MASKED:
        k = tl.load(k_base + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd, mask=(offs_n < hi)[:, None],
                    other=0.0)
    else:
        k = tl.load(k_base + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd)
    s = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC) * rq[:, None]
    e = tl.maximum(s - tau[:, None], 0.0)
    if MASKED:
        e = tl.where(offs_n[None, :] <= pos[:, None], e, 0.0)
    return e


@triton.jit
def _block(acc, start, hi, q1, rq1, q2, rq2, tau, lam, pos, k1_base, k2_base, v_base, sk1n, sk1d, sk2n, sk2d,
           svn, svd, p_val, MASKED: tl.constexpr, TWO: tl.constexpr, P: tl.constexpr, HEAD_D: tl.constexpr,
           HEAD_DV: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """acc + sum_j w_ij v_j over the key block at start; the V block is loaded only if some row survives."""
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_dv = tl.arange(0, HEAD_DV)
    e1 = _scores(q1, rq1, k1_base, sk1n, sk1d, offs_n, hi, tau, pos, MASKED, ACC, HEAD_D, PREC)
    live = e1
    if TWO:
        e2 = _scores(q2, rq2, k2_base, sk2n, sk2d, offs_n, hi, tau, pos, MASKED, ACC, HEAD_D, PREC)
        live = tl.maximum(e1, e2)
    # exceedances are >= 0: the block holds a survivor iff its largest one is > 0
    if tl.max(tl.max(live, 1), 0) > 0:
        w = exceed_pow(e1, P, p_val)
        if TWO:
            w = w - lam[:, None] * exceed_pow(e2, P, p_val)
        if MASKED:
            v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd, mask=(offs_n < hi)[:, None],
                        other=0.0)
        else:
            v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd)
        acc += tl.dot(w.to(v.dtype), v, input_precision=PREC).to(ACC)
    return acc


@triton.jit
def _query_tile(Q, b, h, r, sqb, sqh, sqm, sqd, offs_d, row_ok, NORM_Q: tl.constexpr, EPS2: tl.constexpr,
                ACC: tl.constexpr, BLOCK_R: tl.constexpr):
    """One view's query rows of the tile (padding rows 0) and their inverse norms (1 when the caller passes
    unit queries)."""
    q = tl.load(Q + (b * sqb + h * sqh + r * sqm)[:, None] + offs_d[None, :] * sqd, mask=row_ok[:, None], other=0.0)
    if NORM_Q:
        rq = inv_norm_rows(q, EPS2, ACC)
    else:
        rq = tl.full([BLOCK_R], 1.0, ACC)
    return q, rq


@triton.jit
def decode_split_kernel(Q1, Q2, K1, K2, V, LENS, BETA, LAM, SCALE, OUT,
                        sq1b, sq1h, sq1m, sq1d, sq2b, sq2h, sq2m, sq2d,
                        sk1b, sk1h, sk1n, sk1d, sk2b, sk2h, sk2n, sk2d,
                        svb, svh, svn, svd,
                        so_s, so_b, so_h, so_m, so_d,
                        s_beta, s_lam, Hk, M, G, row_tiles, chunk, p_val,
                        TWO: tl.constexpr, P: tl.constexpr, NORM_Q: tl.constexpr, HEAD_D: tl.constexpr,
                        HEAD_DV: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                        EPS2: tl.constexpr, TAU_F64: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """One (row tile, sequence, kv head) x split program: OUT[split, b, h, r, :] = the split's sum_j w_ij v_j
    (see the module docstring); OUT's split stride so_s is 0 when one split writes the output itself."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rt = pid % row_tiles
    bh = pid // row_tiles
    b = (bh // Hk).to(tl.int64)
    hk = bh % Hk
    L = tl.load(LENS + b).to(tl.int32)
    lo = split * chunk
    if lo < L:  # splits past a shorter sequence's end have nothing to do (the reduction skips them)
        hi = tl.minimum(lo + chunk, L)
        rows = rt * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < G * M
        g = rows // M
        r = rows % M
        h = tl.where(row_ok, hk * G + g, 0).to(tl.int64)  # padding rows read head 0's beta, lam
        pos = tl.where(row_ok, L - M + r, -1)  # absolute position; -1: a padding row sees no key
        offs_d = tl.arange(0, HEAD_D)
        tau = load_tau(BETA, SCALE, h, s_beta, 0, tl.maximum(pos, 0), row_ok, True, TAU_F64)
        q1, rq1 = _query_tile(Q1, b, h, r, sq1b, sq1h, sq1m, sq1d, offs_d, row_ok, NORM_Q, EPS2, ACC, BLOCK_R)
        k1_base = K1 + b * sk1b + hk.to(tl.int64) * sk1h
        v_base = V + b * svb + hk.to(tl.int64) * svh
        if TWO:
            q2, rq2 = _query_tile(Q2, b, h, r, sq2b, sq2h, sq2m, sq2d, offs_d, row_ok, NORM_Q, EPS2, ACC, BLOCK_R)
            k2_base = K2 + b * sk2b + hk.to(tl.int64) * sk2h
            lam = tl.load(LAM + h * s_lam, mask=row_ok, other=0.0).to(ACC)
        else:
            q2 = q1
            rq2 = rq1
            k2_base = k1_base
            lam = rq1
        acc = tl.zeros([BLOCK_R, HEAD_DV], dtype=ACC)
        # keys past the tile's last position are no row's (a tile of early rows, when M spans tiles)
        hi = tl.minimum(hi, tl.max(pos, 0) + 1)
        # blocks every row sees whole (all keys j <= L - M, the first row's position) need no masks
        full = lo + tl.maximum(tl.minimum(hi, L - M + 1) - lo, 0) // BLOCK_N * BLOCK_N
        for start in range(lo, full, BLOCK_N):
            acc = _block(acc, start, hi, q1, rq1, q2, rq2, tau, lam, pos, k1_base, k2_base, v_base, sk1n, sk1d,
                         sk2n, sk2d, svn, svd, p_val, False, TWO, P, HEAD_D, HEAD_DV, BLOCK_N, ACC, PREC)
        for start in range(full, hi, BLOCK_N):
            acc = _block(acc, start, hi, q1, rq1, q2, rq2, tau, lam, pos, k1_base, k2_base, v_base, sk1n, sk1d,
                         sk2n, sk2d, svn, svd, p_val, True, TWO, P, HEAD_D, HEAD_DV, BLOCK_N, ACC, PREC)
        offs_dv = tl.arange(0, HEAD_DV)
        o_ptrs = (OUT + split * so_s + (b * so_b + h * so_h + r * so_m)[:, None] + offs_dv[None, :] * so_d)
        tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def decode_reduce_kernel(PART, OUT, LENS, chunk, HM, s_ps, so_b, so_h, so_m, so_d, H, M, GAIN, s_gh, s_gd,
                         norm_eps, HEAD_DV: tl.constexpr, BLOCK_S: tl.constexpr, NORM: tl.constexpr):
    """OUT[b, h, m, :] = sum over the splits that hold keys of sequence b of PART[split, b, h, m, :]
    (PART contiguous (splits, B * H * M, HEAD_DV)), in a fixed order; NORM: then the per-head RMSNorm,
    x * rsqrt(mean(x^2) + eps) * GAIN[h, :] (an all-zero row stays 0)."""
    row = tl.program_id(0).to(tl.int64)
    b = row // HM
    h = (row // M) % H
    m = row % M
    L = tl.load(LENS + b).to(tl.int32)
    n_valid = (L + chunk - 1) // chunk
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DV)
    acc = tl.zeros([HEAD_DV], dtype=PART.dtype.element_ty)
    for s0 in range(0, n_valid, BLOCK_S):
        ss = s0 + offs_s
        x = tl.load(PART + ss.to(tl.int64)[:, None] * s_ps + row * HEAD_DV + offs_d[None, :],
                    mask=(ss < n_valid)[:, None], other=0.0)
        acc += tl.sum(x, 0)
    if NORM:
        gain = tl.load(GAIN + h * s_gh + offs_d * s_gd).to(acc.dtype)
        acc = acc / tl.sqrt(tl.sum(acc * acc, 0) / HEAD_DV + norm_eps) * gain
    tl.store(OUT + b * so_b + h * so_h + m * so_m + offs_d * so_d, acc.to(OUT.dtype.element_ty))


@triton.jit
def decode_append_kernel(K1N, K2N, VN, K1C, K2C, VC, SEQ,
                         sk1nb, sk1nh, sk1nm, sk1nd, sk2nb, sk2nh, sk2nm, sk2nd, svnb, svnh, svnm, svnd,
                         sk1cb, sk1ch, sk1cn, sk1cd, sk2cb, sk2ch, sk2cn, sk2cd, svcb, svch, svcn, svcd, Hk, M,
                         TWO: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, EPS2: tl.constexpr,
                         ACC: tl.constexpr):
    """One program per (sequence b, kv head, new row m): the new keys L2-normalised (reference.l2_normalize:
    x * rsqrt(|x|^2 + eps^2) in at least fp32) and the raw value written at position SEQ[b] + m of the caches."""
    pid = tl.program_id(0)
    m = pid % M
    bh = pid // M
    b = (bh // Hk).to(tl.int64)
    hk = (bh % Hk).to(tl.int64)
    pos = tl.load(SEQ + b).to(tl.int64) + m
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    k = tl.load(K1N + b * sk1nb + hk * sk1nh + m * sk1nm + offs_d * sk1nd).to(ACC)
    k = k / tl.sqrt(tl.sum(k * k, 0) + EPS2)
    tl.store(K1C + b * sk1cb + hk * sk1ch + pos * sk1cn + offs_d * sk1cd, k.to(K1C.dtype.element_ty))
    if TWO:
        k2 = tl.load(K2N + b * sk2nb + hk * sk2nh + m * sk2nm + offs_d * sk2nd).to(ACC)
        k2 = k2 / tl.sqrt(tl.sum(k2 * k2, 0) + EPS2)
        tl.store(K2C + b * sk2cb + hk * sk2ch + pos * sk2cn + offs_d * sk2cd, k2.to(K2C.dtype.element_ty))
    v = tl.load(VN + b * svnb + hk * svnh + m * svnm + offs_dv * svnd)
    tl.store(VC + b * svcb + hk * svch + pos * svcn + offs_dv * svcd, v.to(VC.dtype.element_ty))


def _p_mode(p: float) -> int:
    return int(p) if p in (1.0, 2.0, 3.0) else 0


# decoding launches the same few specialisations once per layer and token: the launch cache skips Triton's
# per-call argument binding and kernel lookup (tens of microseconds of host time per launch)
_split = FastKernel(decode_split_kernel)
_reduce = FastKernel(decode_reduce_kernel)
_append_kernel = FastKernel(decode_append_kernel)


def decode_attention(q1, q2, k1_cache, k2_cache, v_cache, beta, lam, lengths, max_len: int, *, kappa: float,
                     p: float, normalize_q: bool = True, cfg: Optional[DecodeConfig] = None,
                     splits: Optional[int] = None, norm_weight: Optional[torch.Tensor] = None,
                     norm_eps: float = 1e-6) -> torch.Tensor:
    """sum_j (a1_ij - lam_h a2_ij) v_j over each sequence's first lengths[b] cached keys (TRA: q2, k2_cache,
    lam None), shape (B, H, M, Dv) in q1's dtype. Arguments already validated (tda.ops.kvcache): q (B, H, M, D)
    raw queries; caches (B, Hk, S, .) of unit keys; lengths int (B,) on the device, each in [M, S];
    max_len = max(lengths) as a Python int (no host sync here, so a CUDA graph can hold the call);
    beta, lam (H,). norm_weight (H, Dv): each output row then gets the per-head RMSNorm with that gain and
    norm_eps, in the kernel that writes it (fp32). `splits` forces a split count (tests)."""
    B, H, M, D = q1.shape
    Hk, S, Dv = k1_cache.shape[1], k1_cache.shape[2], v_cache.shape[3]
    beta = beta.to(q1.device)  # no-ops where already there; a host-side beta would be read as a device pointer
    lam = lam.to(q1.device) if lam is not None else None
    G = H // Hk
    two = q2 is not None
    if cfg is None:
        cfg = decode_config(D, q1.dtype, G * M, interpreting())
    pl = plan(G, M, B, Hk, max_len, cfg, sm_count(q1.device), splits)
    f64 = q1.dtype == torch.float64
    acc_dt = torch.float64 if f64 else torch.float32
    scale = tau_scale(S, float(kappa), D, q1.device, torch.float64 if beta.dtype == torch.float64 else torch.float32)
    out = torch.empty(B, H, M, Dv, device=q1.device, dtype=q1.dtype)
    norm = norm_weight is not None
    # the head norm runs in the reduction kernel, after one split too: in the split kernel's epilogue it spills
    # registers on sm_90 (d = 128, one row; d = 64, 32 rows)
    reduce = pl.splits > 1 or norm
    if not reduce:
        dst, dst_strides = out, (0, *out.stride())
    else:
        dst = torch.empty(pl.splits, B, H, M, Dv, device=q1.device, dtype=acc_dt)
        dst_strides = dst.stride()
    q2_, k2_, lam_ = (q2, k2_cache, lam) if two else (q1, k1_cache, beta)
    gain = norm_weight.to(q1.device) if norm else beta  # a placeholder pointer when not normalising
    g_strides = (gain.stride(0), gain.stride(1)) if norm else (0, 0)
    grid = (B * Hk * pl.row_tiles, pl.splits)
    with _on_device(q1):
        _split[grid](
            q1, q2_, k1_cache, k2_, v_cache, lengths, beta, lam_, scale, dst,
            *q1.stride(), *q2_.stride(), *k1_cache.stride(), *k2_.stride(), *v_cache.stride(), *dst_strides,
            beta.stride(0), lam_.stride(0), Hk, M, G, pl.row_tiles, pl.chunk, float(p),
            TWO=two, P=_p_mode(float(p)), NORM_Q=bool(normalize_q), HEAD_D=D, HEAD_DV=Dv, BLOCK_R=pl.block_r,
            BLOCK_N=cfg.block_n, EPS2=_EPS2, TAU_F64=f64, ACC=tl.float64 if f64 else tl.float32,
            PREC="ieee" if q1.dtype in (torch.float32, torch.float64) else "tf32",
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        if reduce:
            _reduce[(B * H * M,)](
                dst, out, lengths, pl.chunk, H * M, dst.stride(0), *out.stride(), H, M, gain, *g_strides,
                float(norm_eps), HEAD_DV=Dv, BLOCK_S=min(16, _pow2(pl.splits)), NORM=norm,
                num_warps=1)
    return out


def append_kv(new_keys, new_v, key_caches, v_cache, cache_seqlens):
    """Write new rows into the caches at each sequence's cache_seqlens[b] + m, keys L2-normalised, in one
    launch (tda.ops.kvcache's torch path: an l2_normalize and a scatter per cache). new_keys: one or two
    (B, Hk, M, D) tensors, key_caches the matching (B, Hk, S, D) caches; new_v (B, Hk, M, Dv) into v_cache.
    Arguments already validated; cache_seqlens (B,) int on the device (no host sync: a graph can hold it)."""
    k1n = new_keys[0]
    B, Hk, M, D = k1n.shape
    Dv = new_v.shape[3]
    two = len(new_keys) == 2
    k2n, k2c = (new_keys[1], key_caches[1]) if two else (k1n, key_caches[0])
    acc = tl.float64 if k1n.dtype == torch.float64 else tl.float32
    with _on_device(k1n):
        _append_kernel[(B * Hk * M,)](
            k1n, k2n, new_v, key_caches[0], k2c, v_cache, cache_seqlens,
            *k1n.stride(), *k2n.stride(), *new_v.stride(), *key_caches[0].stride(), *k2c.stride(), *v_cache.stride(),
            Hk, M, TWO=two, HEAD_D=D, HEAD_DV=Dv, EPS2=_EPS2, ACC=acc, num_warps=1)

