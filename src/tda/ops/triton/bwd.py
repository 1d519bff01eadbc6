"""The backward kernel (the Triton fused-attention tutorial's split into dK/dV programs and dQ programs), both
kinds in one launch (attention_bwd_kernel). The formulas are those of tda.ops.reference.attention_backward.

With dDa_ij = dO_i . v_j and e_ij = (s_ij - tau_i)_+ :
    dv_j   = sum_i Da_ij dO_i                       Da = a1 - lam a2
    de1_ij = dDa_ij p e1_ij^(p-1)                   de2_ij = -lam dDa_ij p e2_ij^(p-1)   (0 where e = 0)
    dq_t   = de_t @ k_t        dk_t = de_t^T @ q_t  (ds = de: s enters e with slope one)
    dtau_i = -sum_j (de1 + de2)_ij                 dlam = -sum_ij a2_ij dDa_ij
No softmax statistics are needed: every weight is recomputed from the scores alone. Pairs of blocks
that the forward's survivor flags mark empty are skipped outright (no loads, no products): in the masked
(diagonal) stage by a flag test per block, in the unmasked stage either the same way or (LISTS) through a
list of the live blocks that the program compacts from the flags first (common.live_list), so that its
loop carries no test, its loads are software-pipelined and an empty block costs no serial flag load.

NORMALIZE (fused cosine normalisation, see fwd.py): s_ij = (q_i . k_j) rq_i rk_j with q^_i = rq_i q_i,
rq_i = (|q_i|^2 + eps^2)^(-1/2). The loops accumulate the gradients of the unit vectors,
    dq^_i = sum_j ds_ij k^_j = sum_j (ds_ij rk_j) k_j        dk^_j = sum_i (ds_ij rq_i) q_i
(the scale folded into ds before the product, which runs on the raw tiles), and the epilogues apply the
exact derivative of x -> x (|x|^2 + eps^2)^(-1/2):   dx = r dx^ - x r^3 (x . dx^).
dk^ is summed over the grouped-query heads first (the normalisation is per kv vector, so that is exact).
"""
import triton
import triton.language as tl

from .common import (doc_span, exceed_dpow, exceed_pow, grouped_order, key_range, live_list, load_block, load_rows,
                     load_tau, load_vec, pair_alive, visible)


@triton.jit
def _unnormalize_grad(dxh, x, r, ACC: tl.constexpr):
    """dx = r dx^ - x r^3 (x . dx^): the exact backward of x^ = x (|x|^2 + eps^2)^(-1/2), r its inverse
    norm (per row), dx^ the gradient of the unit vector; in fp32 (fp64 for fp64 inputs)."""
    xf = x.to(ACC)
    g = dxh.to(ACC)
    xg = tl.sum(xf * g, 1)
    return r[:, None] * g - xf * (r * r * r * xg)[:, None]


@triton.jit
def _store_grad(OUT, o, offs, ok, g, x, r, NORMALIZE: tl.constexpr, WIDTH: tl.constexpr, ACC: tl.constexpr):
    """Stores rows offs (< ok) of a gradient to OUT, contiguous rows of WIDTH from row o. NORMALIZE: g is the
    gradient of the unit rows x^ = r x, and the stored one that of the raw rows x (_unnormalize_grad)."""
    if NORMALIZE:
        g = _unnormalize_grad(g, x, r, ACC)
    offs_w = tl.arange(0, WIDTH)
    tl.store(OUT + (o + offs[:, None]) * WIDTH + offs_w[None, :], g.to(OUT.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _load_query_side(q1_base, q2_base, do_base, BETA, SCALE, h, s_beta, s_scale, offs_m, M,
                     s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                     TWO_VIEWS: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
                     HAS_BETA: tl.constexpr, TAU_F64: tl.constexpr):
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    row_ok = offs_m < M
    q1 = load_block(q1_base, offs_m, offs_d, s_q1m, s_q1d, row_ok)
    if TWO_VIEWS:
        q2 = load_block(q2_base, offs_m, offs_d, s_q2m, s_q2d, row_ok)
    else:
        q2 = q1
    do = load_block(do_base, offs_m, offs_dv, s_dom, s_dod, row_ok)
    tau = load_tau(BETA, SCALE, h, s_beta, s_scale, offs_m, row_ok, HAS_BETA, TAU_F64)
    return q1, q2, do, tau


@triton.jit
def _load_key_side(k1_base, k2_base, v_base, offs_n, N, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
                   MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr):
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    k1 = load_rows(k1_base, offs_n, offs_d, s_k1n, s_k1d, N, MASKED)
    v = load_rows(v_base, offs_n, offs_dv, s_vn, s_vd, N, MASKED)
    if TWO_VIEWS:
        k2 = load_rows(k2_base, offs_n, offs_d, s_k2n, s_k2d, N, MASKED)
    else:
        k2 = k1
    return k1, k2, v


@triton.jit
def _dkdv_pair(dk1, dk2, dv, k1, k2, v, rk1, rk2, lam, q1, q2, do, tau, rq1_base, rq2_base, offs_m, offs_n,
               diag, M, p, MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, P_MODE: tl.constexpr,
               PREC: tl.constexpr, NORMALIZE: tl.constexpr):
    """One live (query block, key block) pair's share of dk1, dk2, dv."""
    # transposed tiles (keys x queries), as the dK/dV accumulators are indexed by key
    s1 = tl.dot(k1, tl.trans(q1), input_precision=PREC)
    if NORMALIZE:
        rq1 = load_vec(rq1_base, offs_m, M, True)
        s1 = s1 * rk1[:, None] * rq1[None, :]
    e1 = tl.maximum(s1 - tau[None, :], 0.0)
    if MASKED:
        ok = offs_n[:, None] <= offs_m[None, :] + diag
        e1 = tl.where(ok, e1, 0.0)
    dda = tl.dot(v, tl.trans(do), input_precision=PREC)
    w = exceed_pow(e1, P_MODE, p)
    de1 = dda * exceed_dpow(e1, P_MODE, p)
    if NORMALIZE:
        de1 = de1 * rq1[None, :]
    dk1 += tl.dot(de1.to(q1.dtype), q1, input_precision=PREC)
    if TWO_VIEWS:
        s2 = tl.dot(k2, tl.trans(q2), input_precision=PREC)
        if NORMALIZE:
            rq2 = load_vec(rq2_base, offs_m, M, True)
            s2 = s2 * rk2[:, None] * rq2[None, :]
        e2 = tl.maximum(s2 - tau[None, :], 0.0)
        if MASKED:
            e2 = tl.where(ok, e2, 0.0)
        w = w - lam * exceed_pow(e2, P_MODE, p)
        de2 = (-lam) * dda * exceed_dpow(e2, P_MODE, p)
        if NORMALIZE:
            de2 = de2 * rq2[None, :]
        dk2 += tl.dot(de2.to(q2.dtype), q2, input_precision=PREC)
    dv += tl.dot(w.to(do.dtype), do, input_precision=PREC)
    return dk1, dk2, dv


@triton.jit
def _dkdv_inner(dk1, dk2, dv, k1, k2, v, rk1, rk2, lam, q1_base, q2_base, do_base, BETA, SCALE, h, s_beta,
                s_scale, flag_base, rq1_base, rq2_base, s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                start_n, lo, hi, diag, M, n_mt, n_nt, p,
                MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
                MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr,
                NORMALIZE: tl.constexpr, HAS_BETA: tl.constexpr,
                TAU_F64: tl.constexpr):
    """Query blocks lo, lo + BLOCK_M, ... < hi, each tested against the survivor flags."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        if pair_alive(flag_base, start_m, start_n, n_mt, n_nt, MT, NT, R, C):
            q1, q2, do, tau = _load_query_side(q1_base, q2_base, do_base, BETA, SCALE, h, s_beta,
                                               s_scale, offs_m, M, s_q1m, s_q1d, s_q2m, s_q2d, s_dom,
                                               s_dod, TWO_VIEWS, HEAD_D, HEAD_DV, HAS_BETA, TAU_F64)
            dk1, dk2, dv = _dkdv_pair(dk1, dk2, dv, k1, k2, v, rk1, rk2, lam, q1, q2, do, tau, rq1_base,
                                      rq2_base, offs_m, offs_n, diag, M, p, MASKED, TWO_VIEWS, P_MODE, PREC,
                                      NORMALIZE)
    return dk1, dk2, dv


@triton.jit
def _dkdv_listed(dk1, dk2, dv, k1, k2, v, rk1, rk2, lam, q1_base, q2_base, do_base, BETA, SCALE, h, s_beta,
                 s_scale, flag_base, rq1_base, rq2_base, s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                 scratch, row, start_n, lo, hi, diag, M, n_mt, n_nt, p,
                 TWO_VIEWS: tl.constexpr, P_MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, MT: tl.constexpr, NT: tl.constexpr,
                 R: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr, NORMALIZE: tl.constexpr,
                 HAS_BETA: tl.constexpr, TAU_F64: tl.constexpr, CHUNK: tl.constexpr):
    """The unmasked query blocks lo, lo + BLOCK_M, ... < hi through lists: `row` candidates at a time, the
    live ones are first compacted into this program's scratch row (flags read CHUNK blocks per load), then
    visited with no test in the loop, so an empty block costs no serial flag load and the loop's loads can
    be pipelined. The scratch row holds `row` entries, so the scratch is O(N), not O(N^2)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    n_cand = (hi - lo + BLOCK_M - 1) // BLOCK_M
    for r0 in range(0, n_cand, row):
        cnt = live_list(flag_base, scratch, lo + r0 * BLOCK_M, tl.minimum(n_cand - r0, row), start_n, n_mt,
                        n_nt, BLOCK_M, MT, NT, R, C, True, CHUNK)
        for t in range(0, cnt):
            start_m = tl.multiple_of(tl.load(scratch + t), BLOCK_M)
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q1, q2, do, tau = _load_query_side(q1_base, q2_base, do_base, BETA, SCALE, h, s_beta, s_scale,
                                               offs_m, M, s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                                               TWO_VIEWS, HEAD_D, HEAD_DV, HAS_BETA, TAU_F64)
            dk1, dk2, dv = _dkdv_pair(dk1, dk2, dv, k1, k2, v, rk1, rk2, lam, q1, q2, do, tau, rq1_base,
                                      rq2_base, offs_m, offs_n, diag, M, p, False, TWO_VIEWS, P_MODE, PREC,
                                      NORMALIZE)
        tl.debug_barrier()  # every thread is done with the scratch row before it is rewritten
    return dk1, dk2, dv


@triton.jit
def _dkdv_program(pid_n, bhk, Q1, K1, Q2, K2, V, BETA, SCALE, LAM, DO, FLAGS, RQ1, RQ2, RK1, RK2, DK1, DK2, DV,
                  SCR, DOCS, n_row,
                  s_q1b, s_q1h, s_q1m, s_q1d, s_q2b, s_q2h, s_q2m, s_q2d,
                  s_k1b, s_k1h, s_k1n, s_k1d, s_k2b, s_k2h, s_k2n, s_k2d,
                  s_vb, s_vh, s_vn, s_vd, s_dob, s_doh, s_dom, s_dod,
                  s_beta, s_scale, s_lam, Hk, G, M, N, n_mt, n_nt, p,
                  TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
                  HEAD_DV: tl.constexpr, MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr,
                  C: tl.constexpr, PREC: tl.constexpr, NORMALIZE: tl.constexpr,
                  HAS_BETA: tl.constexpr, TAU_F64: tl.constexpr, LISTS: tl.constexpr, CHUNK: tl.constexpr,
                  LIST_ROW: tl.constexpr, VARLEN: tl.constexpr):
    """The dK/dV work of key block pid_n of (batch, kv head) bhk: loops over the G query heads sharing the
    kv head (grouped-query), so dk/dv are summed over the group without atomics. DK*/DV are contiguous.
    LISTS: the unmasked query blocks go through _dkdv_listed, with this program's scratch row in SCR
    (int32, cdiv(M, BLOCK_M) entries per (kv head, key block), rows in program order)."""
    b = (bhk // Hk).to(tl.int64)
    hk = (bhk % Hk).to(tl.int64)
    H = Hk * G
    start_n = pid_n * BLOCK_N
    m_all = M  # the grid's (and the scratch's) extent; with VARLEN, M and N become the document's length
    n_all = N
    brow, t0, M, N, m_lay, n_lay = doc_span(DOCS, b, M, N, n_row, VARLEN)
    if VARLEN and start_n >= N:  # past this document's end
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    key_ok = offs_n < N
    diag = N - M
    k1 = load_block(K1 + brow * s_k1b + hk * s_k1h + t0 * s_k1n, offs_n, offs_d, s_k1n, s_k1d, key_ok)
    if TWO_VIEWS:
        k2 = load_block(K2 + brow * s_k2b + hk * s_k2h + t0 * s_k2n, offs_n, offs_d, s_k2n, s_k2d, key_ok)
    else:
        k2 = k1
    v = load_block(V + brow * s_vb + hk * s_vh + t0 * s_vn, offs_n, offs_dv, s_vn, s_vd, key_ok)
    rk_row = (brow * Hk + hk) * n_lay + t0
    if NORMALIZE:  # RK* contiguous (B, Hk, N), RQ* contiguous (B, H, M)
        rk1 = load_vec(RK1 + rk_row, offs_n, N, True)
        if TWO_VIEWS:
            rk2 = load_vec(RK2 + rk_row, offs_n, N, True)
        else:
            rk2 = rk1
    else:
        rk1 = 0.0
        rk2 = 0.0
    dk1 = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    dk2 = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DV], dtype=tl.float32)

    if CAUSAL:
        # rows >= first see some key of the block; rows >= full see all of them
        first = tl.maximum(start_n - diag, 0)
        full = tl.maximum(start_n + BLOCK_N - 1 - diag, 0)
        lo = tl.minimum((first // BLOCK_M) * BLOCK_M, M)
        mid = tl.maximum(tl.minimum(((full + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, M), lo)
    else:
        lo = 0
        mid = 0
    for g in range(0, G):
        h = hk * G + g
        bh = b * H + h
        if TWO_VIEWS:
            lam = tl.load(LAM + h * s_lam).to(tl.float64 if TAU_F64 else tl.float32)
        else:
            lam = 0.0
        q1_base = Q1 + brow * s_q1b + h * s_q1h + t0 * s_q1m
        q2_base = Q2 + brow * s_q2b + h * s_q2h + t0 * s_q2m
        do_base = DO + brow * s_dob + h * s_doh + t0 * s_dom
        flag_base = FLAGS + bh * n_mt * n_nt
        rq1_base = RQ1 + (brow * H + h) * m_lay + t0
        rq2_base = RQ2 + (brow * H + h) * m_lay + t0
        dk1, dk2, dv = _dkdv_inner(dk1, dk2, dv, k1, k2, v, rk1, rk2, lam, q1_base, q2_base, do_base,
                                   BETA, SCALE, h, s_beta, s_scale, flag_base, rq1_base, rq2_base,
                                   s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                                   start_n, lo, mid, diag, M, n_mt, n_nt, p,
                                   True, TWO_VIEWS, CAUSAL, P_MODE, BLOCK_M, BLOCK_N, HEAD_D, HEAD_DV,
                                   MT, NT, R, C, PREC, NORMALIZE, HAS_BETA, TAU_F64)
        if LISTS:
            row = tl.minimum(tl.cdiv(m_all, BLOCK_M), LIST_ROW)
            scratch = SCR + (bhk.to(tl.int64) * tl.cdiv(n_all, BLOCK_N) + pid_n) * row
            dk1, dk2, dv = _dkdv_listed(dk1, dk2, dv, k1, k2, v, rk1, rk2, lam, q1_base, q2_base, do_base,
                                        BETA, SCALE, h, s_beta, s_scale, flag_base, rq1_base, rq2_base,
                                        s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                                        scratch, row, start_n, mid, M, diag, M, n_mt, n_nt, p,
                                        TWO_VIEWS, P_MODE, BLOCK_M, BLOCK_N, HEAD_D, HEAD_DV,
                                        MT, NT, R, C, PREC, NORMALIZE, HAS_BETA, TAU_F64, CHUNK)
        else:
            dk1, dk2, dv = _dkdv_inner(dk1, dk2, dv, k1, k2, v, rk1, rk2, lam, q1_base, q2_base, do_base,
                                       BETA, SCALE, h, s_beta, s_scale, flag_base, rq1_base, rq2_base,
                                       s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                                       start_n, mid, M, diag, M, n_mt, n_nt, p,
                                       False, TWO_VIEWS, CAUSAL, P_MODE, BLOCK_M, BLOCK_N, HEAD_D, HEAD_DV,
                                       MT, NT, R, C, PREC, NORMALIZE, HAS_BETA, TAU_F64)
    # outputs are contiguous (B, Hk, N, D); NORMALIZE: from the unit vectors' gradient to the raw keys',
    # dk = r dk^ - k r^3 (k . dk^), one view at a time (each stored before the next)
    o = rk_row
    _store_grad(DK1, o, offs_n, key_ok, dk1, k1, rk1, NORMALIZE, HEAD_D, RK1.dtype.element_ty)
    if TWO_VIEWS:
        _store_grad(DK2, o, offs_n, key_ok, dk2, k2, rk2, NORMALIZE, HEAD_D, RK1.dtype.element_ty)
    _store_grad(DV, o, offs_n, key_ok, dv, v, rk1, False, HEAD_DV, RK1.dtype.element_ty)


@triton.jit
def _dq_pair(dq1, dq2, dtau, dlam, q1, q2, rq1, rq2, do, tau, lam, k1, k2, v, rk1_base, rk2_base, offs_m,
             offs_n, diag, N, p, MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr,
             P_MODE: tl.constexpr, PREC: tl.constexpr, NORMALIZE: tl.constexpr):
    """One live (query block, key block) pair's share of dq1, dq2 and the rows' dtau / dlam."""
    s1 = tl.dot(q1, tl.trans(k1), input_precision=PREC)
    if NORMALIZE:
        rk1 = load_vec(rk1_base, offs_n, N, True)
        s1 = s1 * rq1[:, None] * rk1[None, :]
    e1 = tl.maximum(s1 - tau[:, None], 0.0)
    if MASKED:
        ok = visible(offs_m, offs_n, diag, N, CAUSAL)
        e1 = tl.where(ok, e1, 0.0)
    dda = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = dda * exceed_dpow(e1, P_MODE, p)
    if NORMALIZE:
        dq1 += tl.dot((ds * rk1[None, :]).to(k1.dtype), k1, input_precision=PREC)
    else:
        dq1 += tl.dot(ds.to(k1.dtype), k1, input_precision=PREC)
    if TWO_VIEWS:
        s2 = tl.dot(q2, tl.trans(k2), input_precision=PREC)
        if NORMALIZE:
            rk2 = load_vec(rk2_base, offs_n, N, True)
            s2 = s2 * rq2[:, None] * rk2[None, :]
        e2 = tl.maximum(s2 - tau[:, None], 0.0)
        if MASKED:
            e2 = tl.where(ok, e2, 0.0)
        de2 = (-lam) * dda * exceed_dpow(e2, P_MODE, p)
        if NORMALIZE:
            dq2 += tl.dot((de2 * rk2[None, :]).to(k2.dtype), k2, input_precision=PREC)
        else:
            dq2 += tl.dot(de2.to(k2.dtype), k2, input_precision=PREC)
        dlam -= tl.sum((exceed_pow(e2, P_MODE, p) * dda).to(dlam.dtype), 1)
        ds = ds + de2
    dtau -= tl.sum(ds.to(dtau.dtype), 1)
    return dq1, dq2, dtau, dlam


@triton.jit
def _dq_inner(dq1, dq2, dtau, dlam, q1, q2, rq1, rq2, do, tau, lam, k1_base, k2_base, v_base, flag_base,
              rk1_base, rk2_base, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
              start_m, offs_m, lo, hi, diag, N, n_mt, n_nt, p,
              MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
              BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
              MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr,
              NORMALIZE: tl.constexpr):
    """Key blocks lo, lo + BLOCK_N, ... < hi, each tested against the survivor flags."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if pair_alive(flag_base, start_m, start_n, n_mt, n_nt, MT, NT, R, C):
            k1, k2, v = _load_key_side(k1_base, k2_base, v_base, offs_n, N, s_k1n, s_k1d, s_k2n, s_k2d,
                                       s_vn, s_vd, MASKED, TWO_VIEWS, HEAD_D, HEAD_DV)
            dq1, dq2, dtau, dlam = _dq_pair(dq1, dq2, dtau, dlam, q1, q2, rq1, rq2, do, tau, lam, k1, k2, v,
                                            rk1_base, rk2_base, offs_m, offs_n, diag, N, p, MASKED,
                                            TWO_VIEWS, CAUSAL, P_MODE, PREC, NORMALIZE)
    return dq1, dq2, dtau, dlam


@triton.jit
def _dq_listed(dq1, dq2, dtau, dlam, q1, q2, rq1, rq2, do, tau, lam, k1_base, k2_base, v_base, flag_base,
               rk1_base, rk2_base, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
               scratch, row, start_m, offs_m, hi, diag, N, n_mt, n_nt, p,
               TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
               BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
               MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr,
               NORMALIZE: tl.constexpr, CHUNK: tl.constexpr):
    """The unmasked key blocks 0, BLOCK_N, ... < hi through lists of `row` candidates (see _dkdv_listed)."""
    n_cand = hi // BLOCK_N
    for r0 in range(0, n_cand, row):
        cnt = live_list(flag_base, scratch, r0 * BLOCK_N, tl.minimum(n_cand - r0, row), start_m, n_mt, n_nt,
                        BLOCK_N, MT, NT, R, C, False, CHUNK)
        for t in range(0, cnt):
            start_n = tl.multiple_of(tl.load(scratch + t), BLOCK_N)
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k1, k2, v = _load_key_side(k1_base, k2_base, v_base, offs_n, N, s_k1n, s_k1d, s_k2n, s_k2d,
                                       s_vn, s_vd, False, TWO_VIEWS, HEAD_D, HEAD_DV)
            dq1, dq2, dtau, dlam = _dq_pair(dq1, dq2, dtau, dlam, q1, q2, rq1, rq2, do, tau, lam, k1, k2, v,
                                            rk1_base, rk2_base, offs_m, offs_n, diag, N, p, False,
                                            TWO_VIEWS, CAUSAL, P_MODE, PREC, NORMALIZE)
        tl.debug_barrier()  # every thread is done with the scratch row before it is rewritten
    return dq1, dq2, dtau, dlam


@triton.jit
def _dq_program(pid_m, bh, n_bh, Q1, K1, Q2, K2, V, BETA, SCALE, LAM, DO, FLAGS, RQ1, RQ2, RK1, RK2,
                DQ1, DQ2, DTAU, DLAM, SCR, scr_q, DOCS, n_row,
                s_q1b, s_q1h, s_q1m, s_q1d, s_q2b, s_q2h, s_q2m, s_q2d,
                s_k1b, s_k1h, s_k1n, s_k1d, s_k2b, s_k2h, s_k2n, s_k2d,
                s_vb, s_vh, s_vn, s_vd, s_dob, s_doh, s_dom, s_dod,
                s_beta, s_scale, s_lam, H, G, M, N, n_mt, n_nt, p,
                TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
                HEAD_DV: tl.constexpr, MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr,
                C: tl.constexpr, PREC: tl.constexpr, NORMALIZE: tl.constexpr,
                HAS_BETA: tl.constexpr, TAU_F64: tl.constexpr, SCALE_DTAU: tl.constexpr, LISTS: tl.constexpr,
                CHUNK: tl.constexpr, LIST_ROW: tl.constexpr, VARLEN: tl.constexpr):
    """The dQ work of query block pid_m of batch * head bh (n_bh = B * H of them): dq1, dq2 (contiguous),
    and per row dtau_i and -sum_j a2_ij dDa_ij ((H, B, M), fp32, or fp64 where DTAU is: fp32 inputs),
    reduced over rows/batch in torch.
    SCALE_DTAU (the eager path, beta given): instead, the block's sums of dtau_i * scale_i (its share of dbeta_h,
    as tau_i = beta_h * scale_i) and of the dlam shares, one value per program in (H, B, cdiv(M, BLOCK_M))
    buffers: torch's reduction of per-row buffers cost 2-12 us at B * M = 1K-8K rows (an H200), ~2 us this one.
    LISTS: the unmasked key blocks go through _dq_listed, with this program's scratch row at SCR + scr_q
    (int32, cdiv(N, BLOCK_N) entries per (head, query block))."""
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hk = h // G
    start_m = pid_m * BLOCK_M
    m_all = M  # the grid's (and the buffers') extent; with VARLEN, M and N become the document's length
    n_all = N
    brow, t0, M, N, m_lay, n_lay = doc_span(DOCS, b, M, N, n_row, VARLEN)
    if VARLEN and start_m >= M:  # past this document's end: the launcher zero-fills its dtau / dlam shares
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    row_ok = offs_m < M
    diag = N - M
    q1 = load_block(Q1 + brow * s_q1b + h * s_q1h + t0 * s_q1m, offs_m, offs_d, s_q1m, s_q1d, row_ok)
    if TWO_VIEWS:
        q2 = load_block(Q2 + brow * s_q2b + h * s_q2h + t0 * s_q2m, offs_m, offs_d, s_q2m, s_q2d, row_ok)
        lam = tl.load(LAM + h * s_lam).to(tl.float64 if TAU_F64 else tl.float32)
    else:
        q2 = q1
        lam = 0.0
    do = load_block(DO + brow * s_dob + h * s_doh + t0 * s_dom, offs_m, offs_dv, s_dom, s_dod, row_ok)
    tau = load_tau(BETA, SCALE, h, s_beta, s_scale, offs_m, row_ok, HAS_BETA, TAU_F64)
    k1_base = K1 + brow * s_k1b + hk * s_k1h + t0 * s_k1n
    k2_base = K2 + brow * s_k2b + hk * s_k2h + t0 * s_k2n
    v_base = V + brow * s_vb + hk * s_vh + t0 * s_vn
    flag_base = FLAGS + bh.to(tl.int64) * n_mt * n_nt
    # inverse norms (NORMALIZE): RQ* contiguous (B, H, M), RK* contiguous (B, Hk, N)
    rk1_base = RK1 + (brow * (H // G) + hk) * n_lay + t0
    rk2_base = RK2 + (brow * (H // G) + hk) * n_lay + t0
    rq_row = (brow * H + h) * m_lay + t0
    if NORMALIZE:
        rq1 = load_vec(RQ1 + rq_row, offs_m, M, True)
        if TWO_VIEWS:
            rq2 = load_vec(RQ2 + rq_row, offs_m, M, True)
        else:
            rq2 = rq1
    else:
        rq1 = tau
        rq2 = tau
    lo, hi = key_range(start_m, M, N, BLOCK_M, BLOCK_N, CAUSAL)
    dq1 = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    dq2 = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    # the rows' dtau / dlam sums in the buffers' dtype: fp64 for fp32 inputs (the launcher's choice), as
    # their reduction to the scalar dbeta / dlam cancels heavily and fp32 row sums lose what fp32 inputs carry
    dtau = tl.zeros([BLOCK_M], dtype=DTAU.dtype.element_ty)
    dlam = tl.zeros([BLOCK_M], dtype=DTAU.dtype.element_ty)
    if LISTS:
        row = tl.minimum(tl.cdiv(n_all, BLOCK_N), LIST_ROW)
        scratch = SCR + scr_q + (bh.to(tl.int64) * tl.cdiv(m_all, BLOCK_M) + pid_m) * row
        dq1, dq2, dtau, dlam = _dq_listed(dq1, dq2, dtau, dlam, q1, q2, rq1, rq2, do, tau, lam,
                                          k1_base, k2_base, v_base, flag_base, rk1_base, rk2_base,
                                          s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
                                          scratch, row, start_m, offs_m, lo, diag, N, n_mt, n_nt, p,
                                          TWO_VIEWS, CAUSAL, P_MODE, BLOCK_N, HEAD_D, HEAD_DV,
                                          MT, NT, R, C, PREC, NORMALIZE, CHUNK)
    else:
        dq1, dq2, dtau, dlam = _dq_inner(dq1, dq2, dtau, dlam, q1, q2, rq1, rq2, do, tau, lam,
                                         k1_base, k2_base, v_base, flag_base, rk1_base, rk2_base,
                                         s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
                                         start_m, offs_m, 0, lo, diag, N, n_mt, n_nt, p,
                                         False, TWO_VIEWS, CAUSAL, P_MODE, BLOCK_N, HEAD_D, HEAD_DV,
                                         MT, NT, R, C, PREC, NORMALIZE)
    dq1, dq2, dtau, dlam = _dq_inner(dq1, dq2, dtau, dlam, q1, q2, rq1, rq2, do, tau, lam,
                                     k1_base, k2_base, v_base, flag_base, rk1_base, rk2_base,
                                     s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
                                     start_m, offs_m, lo, hi, diag, N, n_mt, n_nt, p,
                                     True, TWO_VIEWS, CAUSAL, P_MODE, BLOCK_N, HEAD_D, HEAD_DV,
                                     MT, NT, R, C, PREC, NORMALIZE)
    o = rq_row
    # per-row dtau / dlam go to (H, B, M) buffers: their reduction to per-head values is then over one
    # contiguous run per head (fast), not over the batch and row dims of a (B, H, M) layout
    if SCALE_DTAU:
        og = (h * (n_bh // H) + b) * tl.cdiv(m_all, BLOCK_M) + pid_m
    else:
        og = (h * (n_bh // H) + b) * m_all
    _store_grad(DQ1, o, offs_m, row_ok, dq1, q1, rq1, NORMALIZE, HEAD_D, RQ1.dtype.element_ty)
    if TWO_VIEWS:
        _store_grad(DQ2, o, offs_m, row_ok, dq2, q2, rq2, NORMALIZE, HEAD_D, RQ1.dtype.element_ty)
        if SCALE_DTAU:
            tl.store(DLAM + og, tl.sum(tl.where(row_ok, dlam, 0.0), 0))
        else:
            tl.store(DLAM + og + offs_m, dlam, mask=row_ok)
    if SCALE_DTAU:  # rows past M: scale 0 (and dlam masked above)
        dtau = dtau * tl.load(SCALE + h * s_scale + offs_m, mask=row_ok, other=0.0)
        tl.store(DTAU + og, tl.sum(dtau, 0))
    else:
        tl.store(DTAU + og + offs_m, dtau, mask=row_ok)


# sizes that vary per call are not specialised on (see fwd.py)
@triton.jit(do_not_specialize=["s_beta", "s_scale", "s_lam", "H", "G", "M", "N", "n_mt", "n_nt", "p",
                               "n_kb", "n_kv", "n_qb", "scr_q", "group", "n_row"])
def attention_bwd_kernel(Q1, K1, Q2, K2, V, BETA, SCALE, LAM, DO, FLAGS, RQ1, RQ2, RK1, RK2,
                   DK1, DK2, DV, DQ1, DQ2, DTAU, DLAM, SCR, DOCS,
                   s_q1b, s_q1h, s_q1m, s_q1d, s_q2b, s_q2h, s_q2m, s_q2d,
                   s_k1b, s_k1h, s_k1n, s_k1d, s_k2b, s_k2h, s_k2n, s_k2d,
                   s_vb, s_vh, s_vn, s_vd, s_dob, s_doh, s_dom, s_dod,
                   s_beta, s_scale, s_lam, H, G, M, N, n_mt, n_nt, p, n_kb, n_kv, n_qb, scr_q, group, n_row,
                   TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
                   KV_BLOCK_M: tl.constexpr, KV_BLOCK_N: tl.constexpr, KV_R: tl.constexpr, KV_C: tl.constexpr,
                   Q_BLOCK_M: tl.constexpr, Q_BLOCK_N: tl.constexpr, Q_R: tl.constexpr, Q_C: tl.constexpr,
                   HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, MT: tl.constexpr, NT: tl.constexpr,
                   PREC: tl.constexpr, NORMALIZE: tl.constexpr,
                   HAS_BETA: tl.constexpr, TAU_F64: tl.constexpr, SCALE_DTAU: tl.constexpr,
                   KV_LISTS: tl.constexpr, Q_LISTS: tl.constexpr, CHUNK: tl.constexpr,
                   LIST_ROW: tl.constexpr, VARLEN: tl.constexpr):
    """The whole backward in one launch (one launch less of host work than the two kernels above, and no
    idle tail between them): a flat grid whose first n_kv = n_kb * B * Hk programs run _dkdv_program (n_kb
    key blocks per kv head) and whose remaining n_qb * B * H run _dq_program (n_qb query blocks per head).
    The two halves share nothing, so they may run in any order; both need the same warps and stages.
    Causal work per program falls with the key block (dK/dV) and grows with the query block (dQ), so the
    dK/dV half runs key blocks in order and the dQ half query blocks in reverse: the
    grid ends on the lightest programs. KV_LISTS / Q_LISTS: LISTS of the dK/dV / dQ programs. group: each half
    starts its programs in sections of that many heads (common.grouped_order; 1: head by head)."""
    pid = tl.program_id(0)
    Hk = H // G
    if pid < n_kv:
        pid_n, bhk = grouped_order(pid, n_kb, n_kv // n_kb, group)
        _dkdv_program(pid_n, bhk,
                      Q1, K1, Q2, K2, V, BETA, SCALE, LAM, DO, FLAGS, RQ1, RQ2, RK1, RK2, DK1, DK2, DV, SCR,
                      DOCS, n_row, s_q1b, s_q1h, s_q1m, s_q1d, s_q2b, s_q2h, s_q2m, s_q2d,
                      s_k1b, s_k1h, s_k1n, s_k1d, s_k2b, s_k2h, s_k2n, s_k2d,
                      s_vb, s_vh, s_vn, s_vd, s_dob, s_doh, s_dom, s_dod,
                      s_beta, s_scale, s_lam, Hk, G, M, N, n_mt, n_nt, p,
                      TWO_VIEWS, CAUSAL, P_MODE, KV_BLOCK_M, KV_BLOCK_N, HEAD_D, HEAD_DV, MT, NT, KV_R, KV_C,
                      PREC, NORMALIZE, HAS_BETA, TAU_F64, KV_LISTS, CHUNK, LIST_ROW, VARLEN)
    else:
        n_bh = (n_kv // n_kb) * G
        pid_m, bh = grouped_order(pid - n_kv, n_qb, n_bh, group)
        pid_m = n_qb - 1 - pid_m  # heaviest first
        _dq_program(pid_m, bh, n_bh,
                    Q1, K1, Q2, K2, V, BETA, SCALE, LAM, DO, FLAGS, RQ1, RQ2, RK1, RK2, DQ1, DQ2, DTAU, DLAM,
                    SCR, scr_q, DOCS, n_row, s_q1b, s_q1h, s_q1m, s_q1d, s_q2b, s_q2h, s_q2m, s_q2d,
                    s_k1b, s_k1h, s_k1n, s_k1d, s_k2b, s_k2h, s_k2n, s_k2d,
                    s_vb, s_vh, s_vn, s_vd, s_dob, s_doh, s_dom, s_dod,
                    s_beta, s_scale, s_lam, H, G, M, N, n_mt, n_nt, p,
                    TWO_VIEWS, CAUSAL, P_MODE, Q_BLOCK_M, Q_BLOCK_N, HEAD_D, HEAD_DV, MT, NT, Q_R, Q_C,
                    PREC, NORMALIZE, HAS_BETA, TAU_F64, SCALE_DTAU, Q_LISTS, CHUNK, LIST_ROW, VARLEN)
