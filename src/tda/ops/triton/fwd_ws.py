"""Warp-specialised forward (attention.WS_FORWARD; an experiment, off by default, not yet measured).

Triton's automatic warp specialisation on Hopper (`tl.range(warp_specialize=True)`) splits a key loop into a
producer warpgroup issuing the TMA loads and consumer warpgroups running the products, as FA3 does by hand.
`benchmarks/probe_ws_sm90.py` found what it takes: every tile the loop reads loaded through a tensor
descriptor, nothing computed from those tiles outside the loop, one loop, and no data-dependent branch in it.
So this kernel, unlike fwd.py's:
- has no survivor screen: every visited pair takes the PV product (3 products a pair, against fwd.py's 2 on a
  pair the screen drops). It pays only if the specialised loop runs the products fast enough;
- takes the query inverse norms from the pre-pass (rq, like rk) instead of computing them from q;
- scores the unit keys kh (the pre-pass's rounded k^) in every block, the diagonal ones included, with the
  causal and ragged-end masks applied arithmetically (tl.where), in one loop;
- FOR_BWD (training): writes the survivor flags from the unit-key screen with the rounding margin (HAT_DELTA),
  as fwd.py's unit-key training forward does -- a superset of the raw-key survivors the backward recomputes --
  by reductions and stores without a branch; the launcher zero-fills the flags of pairs never visited.

out_i = sum_j (a1_ij - lam a2_ij) v_j with a_ij = ((q_i . round(k^_j)) rq_i - tau_i)_+^p: the reference's own
order of rounding (reference.l2_normalize rounds k^ to the input dtype), as fwd.py's UNIT_KEYS path.
"""
import triton
import triton.language as tl

from .common import exceed_pow, load_tau
from .fwd import _grid_live, _store_flag_grid


@triton.jit(do_not_specialize=["s_beta", "s_scale", "s_lam", "H", "G", "M", "N", "n_mt", "n_nt", "p_val"])
def tda_fwd_ws_kernel(Q1, Q2, KH1, KH2, V, BETA, SCALE, LAM, OUT, RQ1, RQ2, FLAGS,
                      s_q1b, s_q1h, s_q1m, s_q2b, s_q2h, s_q2m, s_vb, s_vh, s_vn, s_ob, s_oh, s_om, s_od,
                      s_beta, s_scale, s_lam, H, G, M, N, n_mt, n_nt, p_val,
                      TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
                      PREC: tl.constexpr, HAS_BETA: tl.constexpr, TAU_F64: tl.constexpr,
                      HEAVY_FIRST: tl.constexpr, WS: tl.constexpr, FOR_BWD: tl.constexpr,
                      FLAG_M: tl.constexpr, FLAG_N: tl.constexpr, HAT_DELTA: tl.constexpr):
    """One program per (query block, batch * head). Q*, V: 16-byte aligned rows with unit inner stride (TMA);
    KH*: the pre-pass's unit keys, contiguous (B, Hk, N, HEAD_D); RQ*: contiguous (B, H, M) inverse norms.
    WS: warp-specialise the key loop (off: the same loop, plain; the interpreter ignores the hint)."""
    if HEAVY_FIRST:  # causal: the last query blocks see the most keys; start those first
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    hk = (h // G).to(tl.int64)
    h64 = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    diag = N - M  # bottom-right causal alignment: row r sees keys j <= r + diag

    # descriptors zero-fill past the ends (query rows >= M, keys >= N): their scores are masked below
    q1 = tl.make_tensor_descriptor(Q1 + b * s_q1b + h64 * s_q1h, shape=[M, HEAD_D], strides=[s_q1m, 1],
                                   block_shape=[BLOCK_M, HEAD_D]).load([start_m, 0])
    rq1 = tl.load(RQ1 + bh.to(tl.int64) * M + offs_m, mask=row_ok, other=0.0)
    kv = b * (H // G) + hk
    kh1 = tl.make_tensor_descriptor(KH1 + kv * N * HEAD_D, shape=[N, HEAD_D], strides=[HEAD_D, 1],
                                    block_shape=[BLOCK_N, HEAD_D])
    if TWO_VIEWS:
        q2 = tl.make_tensor_descriptor(Q2 + b * s_q2b + h64 * s_q2h, shape=[M, HEAD_D], strides=[s_q2m, 1],
                                       block_shape=[BLOCK_M, HEAD_D]).load([start_m, 0])
        rq2 = tl.load(RQ2 + bh.to(tl.int64) * M + offs_m, mask=row_ok, other=0.0)
        kh2 = tl.make_tensor_descriptor(KH2 + kv * N * HEAD_D, shape=[N, HEAD_D], strides=[HEAD_D, 1],
                                        block_shape=[BLOCK_N, HEAD_D])
        lam = tl.load(LAM + h64 * s_lam)
    else:
        q2 = q1
        rq2 = rq1
        kh2 = kh1
        lam = tl.load(SCALE)  # a placeholder (a scalar of tau's dtype), unused
    vd = tl.make_tensor_descriptor(V + b * s_vb + hk * s_vh, shape=[N, HEAD_DV], strides=[s_vn, 1],
                                   block_shape=[BLOCK_N, HEAD_DV])
    tau = load_tau(BETA, SCALE, h64, s_beta, s_scale, offs_m, row_ok, HAS_BETA, TAU_F64)
    lam = lam.to(tau.dtype)

    if FOR_BWD:
        # the screen's thresholds, as fwd.py's unit-key forward: (tau - HAT_DELTA) / rq lowered by a relative 2^-16
        # (rows past M have rq = 0: divide by 1 there, their flags are masked anyway)
        thr1 = (tau - HAT_DELTA) / tl.where(row_ok, rq1, 1.0)
        thr1 = thr1 - tl.abs(thr1) * 1.52587890625e-05
        thr2 = (tau - HAT_DELTA) / tl.where(row_ok, rq2, 1.0)
        thr2 = thr2 - tl.abs(thr2) * 1.52587890625e-05
        frow0 = pid_m * (BLOCK_M // FLAG_M)
        flag_row = FLAGS + bh.to(tl.int64) * n_mt * n_nt + frow0 * n_nt
    if CAUSAL:  # keys < hi are visible to at least one row of the block
        hi = tl.maximum(tl.minimum(tl.minimum(start_m + BLOCK_M, M) - 1 + diag + 1, N), 0)
    else:
        hi = N
    acc = tl.zeros([BLOCK_M, HEAD_DV], dtype=tl.float32)
    for start_n in tl.range(0, hi, BLOCK_N, warp_specialize=WS):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ok = (offs_n[None, :] < N) & row_ok[:, None]
        if CAUSAL:
            ok = ok & (offs_n[None, :] <= offs_m[:, None] + diag)
        h1 = tl.dot(q1, tl.trans(kh1.load([start_n, 0])), input_precision=PREC)
        w = exceed_pow(tl.where(ok, tl.maximum(h1 * rq1[:, None] - tau[:, None], 0.0), 0.0), P, p_val)
        if FOR_BWD:
            c = h1 - thr1[:, None]
        if TWO_VIEWS:
            h2 = tl.dot(q2, tl.trans(kh2.load([start_n, 0])), input_precision=PREC)
            e2 = tl.where(ok, tl.maximum(h2 * rq2[:, None] - tau[:, None], 0.0), 0.0)
            w = w - lam * exceed_pow(e2, P, p_val)
            if FOR_BWD:
                c = tl.maximum(c, h2 - thr2[:, None])
        if FOR_BWD:  # the flags of this pair's sub-tiles (outside the masks: none)
            sub = _grid_live(tl.where(ok, c, -1.0), BLOCK_M, BLOCK_N, FLAG_M, FLAG_N)
            _store_flag_grid(flag_row, frow0, n_mt, n_nt, start_n, sub, BLOCK_M, BLOCK_N, FLAG_M, FLAG_N)
        v = vd.load([start_n, 0])
        acc += tl.dot(w.to(v.dtype), v, input_precision=PREC)
    offs_dv = tl.arange(0, HEAD_DV)
    tl.store(OUT + b * s_ob + h64 * s_oh + offs_m[:, None] * s_om + offs_dv[None, :] * s_od,
             acc.to(OUT.dtype.element_ty), mask=row_ok[:, None])
