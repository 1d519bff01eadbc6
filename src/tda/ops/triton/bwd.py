"""Backward kernels (Triton fused-attention tutorial split: one produces dK/dV, one dQ).

With dDa_ij = dO_i . v_j and e_ij = (s_ij - tau_i)_+ :
    dv_j   = sum_i Da_ij dO_i                       Da = a1 - lam a2
    de1_ij = dDa_ij p e1_ij^(p-1)                   de2_ij = -lam dDa_ij p e2_ij^(p-1)   (0 where e = 0)
    dq_t   = de_t @ k_t        dk_t = de_t^T @ q_t  (ds = de: s enters e with slope one)
    dtau_i = -sum_j (de1 + de2)_ij                 dlam = -sum_ij a2_ij dDa_ij
No softmax statistics are needed: every weight is recomputed from the scores alone. Pairs of blocks
that the forward's survivor flags mark empty are skipped outright (no loads, no products).
"""
import triton
import triton.language as tl

from .common import exceed_dpow, exceed_pow, pair_alive


@triton.jit
def _load_query_side(q1_base, q2_base, do_base, tau_base, offs_m, M, s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                     TWO_VIEWS: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr):
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    row_ok = offs_m < M
    q1 = tl.load(q1_base + offs_m[:, None] * s_q1m + offs_d[None, :] * s_q1d, mask=row_ok[:, None], other=0.0)
    if TWO_VIEWS:
        q2 = tl.load(q2_base + offs_m[:, None] * s_q2m + offs_d[None, :] * s_q2d, mask=row_ok[:, None],
                     other=0.0)
    else:
        q2 = q1
    do = tl.load(do_base + offs_m[:, None] * s_dom + offs_dv[None, :] * s_dod, mask=row_ok[:, None], other=0.0)
    tau = tl.load(tau_base + offs_m, mask=row_ok, other=0.0)
    return q1, q2, do, tau


@triton.jit
def _load_key_side(k1_base, k2_base, v_base, offs_n, N, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
                   MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr):
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    k1_ptrs = k1_base + offs_n[:, None] * s_k1n + offs_d[None, :] * s_k1d
    k2_ptrs = k2_base + offs_n[:, None] * s_k2n + offs_d[None, :] * s_k2d
    v_ptrs = v_base + offs_n[:, None] * s_vn + offs_dv[None, :] * s_vd
    if MASKED:
        k1 = tl.load(k1_ptrs, mask=offs_n[:, None] < N, other=0.0)
        v = tl.load(v_ptrs, mask=offs_n[:, None] < N, other=0.0)
    else:
        k1 = tl.load(k1_ptrs)
        v = tl.load(v_ptrs)
    if TWO_VIEWS:
        if MASKED:
            k2 = tl.load(k2_ptrs, mask=offs_n[:, None] < N, other=0.0)
        else:
            k2 = tl.load(k2_ptrs)
    else:
        k2 = k1
    return k1, k2, v


@triton.jit
def _dkdv_inner(dk1, dk2, dv, k1, k2, v, lam, q1_base, q2_base, do_base, tau_base, flag_base,
                s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                start_n, lo, hi, diag, M, n_mt, n_nt, p_val,
                MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
                MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr,
                PREFETCH: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        if PREFETCH:
            q1, q2, do, tau = _load_query_side(q1_base, q2_base, do_base, tau_base, offs_m, M,
                                               s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                                               TWO_VIEWS, HEAD_D, HEAD_DV)
        if pair_alive(flag_base, start_m, start_n, n_mt, n_nt, MT, NT, R, C):
            if not PREFETCH:
                q1, q2, do, tau = _load_query_side(q1_base, q2_base, do_base, tau_base, offs_m, M,
                                                   s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                                                   TWO_VIEWS, HEAD_D, HEAD_DV)
            # transposed tiles (keys x queries), as the dK/dV accumulators are indexed by key
            e1 = tl.maximum(tl.dot(k1, tl.trans(q1), input_precision=PREC) - tau[None, :], 0.0)
            if MASKED:
                ok = offs_n[:, None] <= offs_m[None, :] + diag
                e1 = tl.where(ok, e1, 0.0)
            dda = tl.dot(v, tl.trans(do), input_precision=PREC)
            w = exceed_pow(e1, P, p_val)
            de1 = dda * exceed_dpow(e1, P, p_val)
            dk1 += tl.dot(de1.to(q1.dtype), q1, input_precision=PREC)
            if TWO_VIEWS:
                e2 = tl.maximum(tl.dot(k2, tl.trans(q2), input_precision=PREC) - tau[None, :], 0.0)
                if MASKED:
                    e2 = tl.where(ok, e2, 0.0)
                w = w - lam * exceed_pow(e2, P, p_val)
                de2 = (-lam) * dda * exceed_dpow(e2, P, p_val)
                dk2 += tl.dot(de2.to(q2.dtype), q2, input_precision=PREC)
            dv += tl.dot(w.to(do.dtype), do, input_precision=PREC)
    return dk1, dk2, dv


@triton.jit
def tda_bwd_dkdv_kernel(Q1, K1, Q2, K2, V, TAU, LAM, DO, FLAGS, DK1, DK2, DV,
                        s_q1b, s_q1h, s_q1m, s_q1d, s_q2b, s_q2h, s_q2m, s_q2d,
                        s_k1b, s_k1h, s_k1n, s_k1d, s_k2b, s_k2h, s_k2n, s_k2d,
                        s_vb, s_vh, s_vn, s_vd, s_dob, s_doh, s_dom, s_dod,
                        Hk, G, M, N, n_mt, n_nt, p_val,
                        TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
                        HEAD_DV: tl.constexpr, MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr,
                        C: tl.constexpr, PREC: tl.constexpr, PREFETCH: tl.constexpr):
    """One program per (key block, batch * kv head); loops over the G query heads sharing the kv head
    (grouped-query), so dk/dv are summed over the group without atomics. DK*/DV are contiguous."""
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = (bhk // Hk).to(tl.int64)
    hk = (bhk % Hk).to(tl.int64)
    H = Hk * G
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    key_ok = offs_n < N
    diag = N - M
    k1 = tl.load(K1 + b * s_k1b + hk * s_k1h + offs_n[:, None] * s_k1n + offs_d[None, :] * s_k1d,
                 mask=key_ok[:, None], other=0.0)
    if TWO_VIEWS:
        k2 = tl.load(K2 + b * s_k2b + hk * s_k2h + offs_n[:, None] * s_k2n + offs_d[None, :] * s_k2d,
                     mask=key_ok[:, None], other=0.0)
    else:
        k2 = k1
    v = tl.load(V + b * s_vb + hk * s_vh + offs_n[:, None] * s_vn + offs_dv[None, :] * s_vd,
                mask=key_ok[:, None], other=0.0)
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
            lam = tl.load(LAM + h)
        else:
            lam = 0.0
        q1_base = Q1 + b * s_q1b + h * s_q1h
        q2_base = Q2 + b * s_q2b + h * s_q2h
        do_base = DO + b * s_dob + h * s_doh
        tau_base = TAU + h * M
        flag_base = FLAGS + bh * n_mt * n_nt
        dk1, dk2, dv = _dkdv_inner(dk1, dk2, dv, k1, k2, v, lam, q1_base, q2_base, do_base, tau_base,
                                   flag_base, s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                                   start_n, lo, mid, diag, M, n_mt, n_nt, p_val,
                                   True, TWO_VIEWS, CAUSAL, P, BLOCK_M, BLOCK_N, HEAD_D, HEAD_DV,
                                   MT, NT, R, C, PREC, PREFETCH)
        dk1, dk2, dv = _dkdv_inner(dk1, dk2, dv, k1, k2, v, lam, q1_base, q2_base, do_base, tau_base,
                                   flag_base, s_q1m, s_q1d, s_q2m, s_q2d, s_dom, s_dod,
                                   start_n, mid, M, diag, M, n_mt, n_nt, p_val,
                                   False, TWO_VIEWS, CAUSAL, P, BLOCK_M, BLOCK_N, HEAD_D, HEAD_DV,
                                   MT, NT, R, C, PREC, PREFETCH)
    # outputs are contiguous (B, Hk, N, D)
    o = (b * Hk + hk) * N
    tl.store(DK1 + (o + offs_n[:, None]) * HEAD_D + offs_d[None, :], dk1.to(DK1.dtype.element_ty),
             mask=key_ok[:, None])
    if TWO_VIEWS:
        tl.store(DK2 + (o + offs_n[:, None]) * HEAD_D + offs_d[None, :], dk2.to(DK2.dtype.element_ty),
                 mask=key_ok[:, None])
    tl.store(DV + (o + offs_n[:, None]) * HEAD_DV + offs_dv[None, :], dv.to(DV.dtype.element_ty),
             mask=key_ok[:, None])


@triton.jit
def _dq_inner(dq1, dq2, dtau, dlam, q1, q2, do, tau, lam, k1_base, k2_base, v_base, flag_base,
              s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
              start_m, offs_m, lo, hi, diag, N, n_mt, n_nt, p_val,
              MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P: tl.constexpr,
              BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
              MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr,
              PREFETCH: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if PREFETCH:
            k1, k2, v = _load_key_side(k1_base, k2_base, v_base, offs_n, N, s_k1n, s_k1d, s_k2n, s_k2d,
                                       s_vn, s_vd, MASKED, TWO_VIEWS, HEAD_D, HEAD_DV)
        if pair_alive(flag_base, start_m, start_n, n_mt, n_nt, MT, NT, R, C):
            if not PREFETCH:
                k1, k2, v = _load_key_side(k1_base, k2_base, v_base, offs_n, N, s_k1n, s_k1d, s_k2n, s_k2d,
                                           s_vn, s_vd, MASKED, TWO_VIEWS, HEAD_D, HEAD_DV)
            e1 = tl.maximum(tl.dot(q1, tl.trans(k1), input_precision=PREC) - tau[:, None], 0.0)
            if MASKED:
                ok = offs_n[None, :] < N
                if CAUSAL:
                    ok = ok & (offs_n[None, :] <= offs_m[:, None] + diag)
                e1 = tl.where(ok, e1, 0.0)
            dda = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = dda * exceed_dpow(e1, P, p_val)
            dq1 += tl.dot(ds.to(k1.dtype), k1, input_precision=PREC)
            if TWO_VIEWS:
                e2 = tl.maximum(tl.dot(q2, tl.trans(k2), input_precision=PREC) - tau[:, None], 0.0)
                if MASKED:
                    e2 = tl.where(ok, e2, 0.0)
                de2 = (-lam) * dda * exceed_dpow(e2, P, p_val)
                dq2 += tl.dot(de2.to(k2.dtype), k2, input_precision=PREC)
                dlam -= tl.sum(exceed_pow(e2, P, p_val) * dda, 1)
                ds = ds + de2
            dtau -= tl.sum(ds, 1)
    return dq1, dq2, dtau, dlam


@triton.jit
def tda_bwd_dq_kernel(Q1, K1, Q2, K2, V, TAU, LAM, DO, FLAGS, DQ1, DQ2, DTAU, DLAM,
                      s_q1b, s_q1h, s_q1m, s_q1d, s_q2b, s_q2h, s_q2m, s_q2d,
                      s_k1b, s_k1h, s_k1n, s_k1d, s_k2b, s_k2h, s_k2n, s_k2d,
                      s_vb, s_vh, s_vn, s_vd, s_dob, s_doh, s_dom, s_dod,
                      H, G, M, N, n_mt, n_nt, p_val,
                      TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
                      HEAD_DV: tl.constexpr, MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr,
                      C: tl.constexpr, PREC: tl.constexpr, PREFETCH: tl.constexpr):
    """One program per (query block, batch * head): dq1, dq2 (contiguous), and per row
    dtau_i and -sum_j a2_ij dDa_ij (fp32, (B*H, M)), reduced over rows/batch in torch."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hk = h // G
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    row_ok = offs_m < M
    diag = N - M
    q1 = tl.load(Q1 + b * s_q1b + h * s_q1h + offs_m[:, None] * s_q1m + offs_d[None, :] * s_q1d,
                 mask=row_ok[:, None], other=0.0)
    if TWO_VIEWS:
        q2 = tl.load(Q2 + b * s_q2b + h * s_q2h + offs_m[:, None] * s_q2m + offs_d[None, :] * s_q2d,
                     mask=row_ok[:, None], other=0.0)
        lam = tl.load(LAM + h)
    else:
        q2 = q1
        lam = 0.0
    do = tl.load(DO + b * s_dob + h * s_doh + offs_m[:, None] * s_dom + offs_dv[None, :] * s_dod,
                 mask=row_ok[:, None], other=0.0)
    tau = tl.load(TAU + h * M + offs_m, mask=row_ok, other=0.0)
    k1_base = K1 + b * s_k1b + hk * s_k1h
    k2_base = K2 + b * s_k2b + hk * s_k2h
    v_base = V + b * s_vb + hk * s_vh
    flag_base = FLAGS + bh.to(tl.int64) * n_mt * n_nt
    if CAUSAL:
        last_row = tl.minimum(start_m + BLOCK_M, M) - 1
        free = tl.minimum(tl.maximum(start_m + diag + 1, 0), N)
        lo = (free // BLOCK_N) * BLOCK_N
        hi = tl.maximum(tl.minimum(last_row + diag + 1, N), lo)
    else:
        lo = (N // BLOCK_N) * BLOCK_N
        hi = N
    dq1 = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    dq2 = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    dtau = tl.zeros([BLOCK_M], dtype=tl.float32)
    dlam = tl.zeros([BLOCK_M], dtype=tl.float32)
    dq1, dq2, dtau, dlam = _dq_inner(dq1, dq2, dtau, dlam, q1, q2, do, tau, lam, k1_base, k2_base, v_base,
                                     flag_base, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
                                     start_m, offs_m, 0, lo, diag, N, n_mt, n_nt, p_val,
                                     False, TWO_VIEWS, CAUSAL, P, BLOCK_N, HEAD_D, HEAD_DV,
                                     MT, NT, R, C, PREC, PREFETCH)
    dq1, dq2, dtau, dlam = _dq_inner(dq1, dq2, dtau, dlam, q1, q2, do, tau, lam, k1_base, k2_base, v_base,
                                     flag_base, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
                                     start_m, offs_m, lo, hi, diag, N, n_mt, n_nt, p_val,
                                     True, TWO_VIEWS, CAUSAL, P, BLOCK_N, HEAD_D, HEAD_DV,
                                     MT, NT, R, C, PREC, PREFETCH)
    o = bh.to(tl.int64) * M
    tl.store(DQ1 + (o + offs_m[:, None]) * HEAD_D + offs_d[None, :], dq1.to(DQ1.dtype.element_ty),
             mask=row_ok[:, None])
    if TWO_VIEWS:
        tl.store(DQ2 + (o + offs_m[:, None]) * HEAD_D + offs_d[None, :], dq2.to(DQ2.dtype.element_ty),
                 mask=row_ok[:, None])
        tl.store(DLAM + o + offs_m, dlam, mask=row_ok)
    tl.store(DTAU + o + offs_m, dtau, mask=row_ok)
