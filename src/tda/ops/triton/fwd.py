"""Single-pass forward kernel: out_i = sum_j (a1_ij - lam * a2_ij) v_j, a_ij = (s_ij - tau_i)_+^p.

One program per (query block, batch * head), started in sections of heads, heaviest (last) query blocks
first (common.grouped_order). Both views are scored against the same key block in one pass; the causal loop
is split Triton-tutorial style into an unmasked stage (key blocks every row of the query block may see) and
a masked stage (the diagonal blocks and the ragged key tail); key blocks above the diagonal are never
visited.

SCREEN (the config's survivor_test): each visited (query block, key block) pair is first tested for a
possible survivor by the screen -- one multiply-add per score against thr = tau / rq, lowered by a relative
2^-16 so that it passes every pair the exact path finds alive -- and only pairs that pass take the exact
path (exceedances, power, difference, the V load and the PV product). MASK_SCREEN: the masked stage is
screened too (its hidden scores left out); else each masked pair takes the exact path and tests its own
exceedances. FOR_BWD (training) records per FLAG_M x FLAG_N sub-tile whether a survivor may exist: the screen's
conservative values decide, so a flag may be set for a sub-tile whose exceedances all turn out zero (the
backward then finds nothing there -- wasted work, never a wrong gradient); a cleared flag always means no
survivor. Inference (FOR_BWD off) writes neither the flags nor the query inverse norms. SCREEN off (inference
only): every visited pair is accumulated, with no test.

NORMALIZE: q/k arrive raw and the cosine score is s_ij = (q_i . k_j) * rq_i * rk_j in fp32, with the inverse
norms rq (computed here) and rk (common.inv_norm_kernel, reference.l2_normalize's, eps included): the
products run on the raw input-dtype tiles, and no normalised copy of q is ever written.
UNIT_KEYS (with NORMALIZE and SCREEN): the pre-pass also writes the unit keys round(k^) in the input dtype,
and the screen and the exact path of the screened pairs score them, s = (q . round(k^)) rq -- the reference's
own order in the input dtype. In training the screen lowers tau by HAT_DELTA, which bounds that rounding, so
the flags cover every survivor of the raw scores the backward recomputes. ROW_SCREEN (inference): the
screen decides from each row's maximum score against its threshold. TMA: the unmasked stage loads the unit
keys (1), and the values too (2), through tensor descriptors.
"""
import triton
import triton.language as tl

from .common import (doc_span, exceed_pow, grouped_order, inv_norm_rows, key_range, load_block, load_rows, load_tau,
                     load_vec, visible)


@triton.jit
def _store_flag_grid(flag_row, frow0, n_mt, n_nt, start_n, sub,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FLAG_M: tl.constexpr, FLAG_N: tl.constexpr):
    rr = tl.arange(0, BLOCK_M // FLAG_M)
    cc = start_n // FLAG_N + tl.arange(0, BLOCK_N // FLAG_N)
    tl.store(flag_row + rr[:, None] * n_nt + cc[None, :], sub,
             mask=((frow0 + rr) < n_mt)[:, None] & (cc < n_nt)[None, :])


@triton.jit
def _grid_live(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FLAG_M: tl.constexpr, FLAG_N: tl.constexpr):
    """(BLOCK_M // FLAG_M, BLOCK_N // FLAG_N) int8: whether each FLAG_M x FLAG_N sub-tile of x holds a value
    > 0. Row maxima first (within a warp), so only a short vector is regrouped across warps."""
    if FLAG_N == BLOCK_N:
        g = tl.max(tl.reshape(tl.max(x, 1), (BLOCK_M // FLAG_M, FLAG_M)), 1)[:, None]
    else:
        g = tl.max(tl.reshape(x, (BLOCK_M, BLOCK_N // FLAG_N, FLAG_N)), 2)
        g = tl.max(tl.reshape(g, (BLOCK_M // FLAG_M, FLAG_M, BLOCK_N // FLAG_N)), 1)
    return (g > 0).to(tl.int8)


@triton.jit
def _any_live(x, flag_row, frow0, n_mt, n_nt, start_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              FLAG_M: tl.constexpr, FLAG_N: tl.constexpr, FOR_BWD: tl.constexpr):
    """Whether x (exceedances, or the screen's values) holds any positive value; FOR_BWD: also stores the
    survivor flags of the pair from x (per FLAG_M x FLAG_N sub-tile where finer than the block)."""
    if FOR_BWD and (FLAG_M != BLOCK_M or FLAG_N != BLOCK_N):
        sub = _grid_live(x, BLOCK_M, BLOCK_N, FLAG_M, FLAG_N)
        _store_flag_grid(flag_row, frow0, n_mt, n_nt, start_n, sub, BLOCK_M, BLOCK_N, FLAG_M, FLAG_N)
        alive = tl.max(tl.max(sub, 1), 0) > 0
    else:
        alive = tl.max(tl.max(x, 1), 0) > 0
        if FOR_BWD:
            tl.store(flag_row + start_n // BLOCK_N, alive.to(tl.int8))
    return alive


@triton.jit
def _load_v(v_base, s_vn, s_vd, offs_n, offs_dv, start_n, N, MASKED: tl.constexpr, V_DESC: tl.constexpr):
    """A key block's values: through the tensor descriptor (TMA; unmasked stage only) or by pointers."""
    if V_DESC:
        v = v_base.load([start_n, 0])
    else:
        v = load_rows(v_base, offs_n, offs_dv, s_vn, s_vd, N, MASKED)
    return v


@triton.jit
def _load_unit_keys(kh_base, offs_n, offs_d, start_n, N, HEAD_D: tl.constexpr, MASKED: tl.constexpr,
                    KH_DESC: tl.constexpr):
    """A key block's unit keys (contiguous rows of HEAD_D): through the tensor descriptor or by pointers."""
    if KH_DESC:
        kh = kh_base.load([start_n, 0])
    elif MASKED:
        kh = tl.load(kh_base + offs_n[:, None] * HEAD_D + offs_d[None, :], mask=offs_n[:, None] < N, other=0.0)
    else:
        kh = tl.load(kh_base + offs_n[:, None] * HEAD_D + offs_d[None, :])
    return kh


@triton.jit
def _tile(acc, s1, s2, rq1, rq2, rk1, rk2, tau, lam, v_base, s_vn, s_vd,
          flag_row, frow0, n_mt, n_nt, offs_m, offs_n, start_n, diag, N, p,
          MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DV: tl.constexpr,
          PREC: tl.constexpr, SCREEN: tl.constexpr, NORMALIZE: tl.constexpr,
          FLAG_M: tl.constexpr, FLAG_N: tl.constexpr, FOR_BWD: tl.constexpr, SCREENED: tl.constexpr,
          V_DESC: tl.constexpr):
    """The exact path of one (query block, key block) pair from its raw scores s1, s2 -- exceedances, and the
    PV product into acc -- the one the backward recomputes. SCREENED: the screen has already found a possible
    survivor and written the flags; else with SCREEN the exceedances are tested here (and the flags written
    from them), and a pair without a survivor skips the V load and the product. SCREEN off: no test."""
    offs_dv = tl.arange(0, HEAD_DV)
    if NORMALIZE:  # cosine: scale the raw dot products by both inverse norms
        s1 = s1 * rq1[:, None] * rk1[None, :]
    e1 = tl.maximum(s1 - tau[:, None], 0.0)
    if MASKED:
        ok = visible(offs_m, offs_n, diag, N, CAUSAL)
        e1 = tl.where(ok, e1, 0.0)
    w = exceed_pow(e1, P_MODE, p)
    live = e1
    if TWO_VIEWS:
        if NORMALIZE:
            s2 = s2 * rq2[:, None] * rk2[None, :]
        e2 = tl.maximum(s2 - tau[:, None], 0.0)
        if MASKED:
            e2 = tl.where(ok, e2, 0.0)
        w = w - lam * exceed_pow(e2, P_MODE, p)
        live = live + e2
    if SCREENED or not SCREEN:
        v = _load_v(v_base, s_vn, s_vd, offs_n, offs_dv, start_n, N, MASKED, V_DESC)
        acc += tl.dot(w.to(v.dtype), v, input_precision=PREC)
    else:
        # exceedances are >= 0, so a (sub-)tile has a survivor iff its largest one is > 0
        if _any_live(live, flag_row, frow0, n_mt, n_nt, start_n, BLOCK_M, BLOCK_N, FLAG_M, FLAG_N, FOR_BWD):
            v = _load_v(v_base, s_vn, s_vd, offs_n, offs_dv, start_n, N, MASKED, V_DESC)
            acc += tl.dot(w.to(v.dtype), v, input_precision=PREC)
    return acc


@triton.jit
def _raw_scores(q1, q2, tau, k1_base, k2_base, rk1_base, rk2_base, s_k1n, s_k1d, s_k2n, s_k2d, offs_n, N,
                MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, HEAD_D: tl.constexpr, PREC: tl.constexpr,
                NORMALIZE: tl.constexpr):
    """The raw dot products s1, s2 of the query block with the key block at offs_n (input-dtype tiles, fp32
    accumulation) and the keys' inverse norms rk1, rk2 (NORMALIZE; else placeholders)."""
    offs_d = tl.arange(0, HEAD_D)
    k1 = load_rows(k1_base, offs_n, offs_d, s_k1n, s_k1d, N, MASKED)
    s1 = tl.dot(q1, tl.trans(k1), input_precision=PREC)
    rk1 = tau  # placeholders where not normalising
    rk2 = tau
    if NORMALIZE:
        rk1 = load_vec(rk1_base, offs_n, N, MASKED)
    s2 = s1
    if TWO_VIEWS:
        k2 = load_rows(k2_base, offs_n, offs_d, s_k2n, s_k2d, N, MASKED)
        s2 = tl.dot(q2, tl.trans(k2), input_precision=PREC)
        if NORMALIZE:
            rk2 = load_vec(rk2_base, offs_n, N, MASKED)
    return s1, s2, rk1, rk2


@triton.jit
def _row_screen(h1, h2, thr1, thr2, TWO_VIEWS: tl.constexpr):
    """ROW_SCREEN (no flags to write): the screen's decision from the rows' maxima, max_i (max_j h_ij - thr_i)
    > 0 -- the same test as the tile maximum of h - thr (subtraction keeps order), with a row reduction per
    view in place of the per-score subtractions and maxima."""
    m = tl.max(h1, 1) - thr1
    if TWO_VIEWS:
        m = tl.maximum(m, tl.max(h2, 1) - thr2)
    return tl.max(m, 0) > 0


@triton.jit
def _screen(g1, g2, thr1, thr2, ok, flag_row, frow0, n_mt, n_nt, start_n, MASKED: tl.constexpr,
            TWO_VIEWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FLAG_M: tl.constexpr,
            FLAG_N: tl.constexpr, FOR_BWD: tl.constexpr, ROW_SCREEN: tl.constexpr):
    """Whether a pair may hold a survivor, from the screen's scores g (scaled by the keys' inverse norms, or
    the unit keys' scores) against the rows' thresholds thr; the hidden scores of a masked pair left out.
    Training (FOR_BWD) writes the flags from these conservative values."""
    if ROW_SCREEN and not FOR_BWD:
        if MASKED:
            alive = _row_screen(tl.where(ok, g1, float("-inf")), tl.where(ok, g2, float("-inf")), thr1, thr2,
                                TWO_VIEWS)
        else:
            alive = _row_screen(g1, g2, thr1, thr2, TWO_VIEWS)
    else:
        c = g1 - thr1[:, None]
        if TWO_VIEWS:
            c = tl.maximum(c, g2 - thr2[:, None])
        if MASKED:
            c = tl.where(ok, c, -1.0)
        alive = _any_live(c, flag_row, frow0, n_mt, n_nt, start_n, BLOCK_M, BLOCK_N, FLAG_M, FLAG_N, FOR_BWD)
    return alive


@triton.jit
def _fwd_inner(acc, q1, q2, rq1, rq2, thr1, thr2, tau, lam, k1_base, k2_base, v_base, rk1_base, rk2_base,
               kh1_base, kh2_base, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
               flag_row, frow0, n_mt, n_nt, offs_m, lo, hi, diag, N, p,
               MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
               PREC: tl.constexpr, NORMALIZE: tl.constexpr, FLAG_M: tl.constexpr, FLAG_N: tl.constexpr,
               SCREEN: tl.constexpr, FOR_BWD: tl.constexpr, UNIT_KEYS: tl.constexpr, ROW_SCREEN: tl.constexpr,
               KH_DESC: tl.constexpr, V_DESC: tl.constexpr, MASK_SCREEN: tl.constexpr):
    """One stage of the key loop (MASKED: the diagonal blocks and the ragged tail). KH_DESC / V_DESC: kh*_base /
    v_base are tensor descriptors (TMA loads, unmasked stage only), else pointers."""
    offs_d = tl.arange(0, HEAD_D)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            ok = visible(offs_m, offs_n, diag, N, CAUSAL)
        else:
            ok = True
        if SCREEN and UNIT_KEYS and (MASK_SCREEN or not MASKED):
            # the unit keys kh (the pre-pass's rounded copy, contiguous): no per-key norm in the screen, whose
            # thresholds are (tau - HAT_DELTA) / rq; its scores times rq are the exact path's too
            kh1 = _load_unit_keys(kh1_base, offs_n, offs_d, start_n, N, HEAD_D, MASKED, KH_DESC)
            h1 = tl.dot(q1, tl.trans(kh1), input_precision=PREC)
            h2 = h1
            if TWO_VIEWS:
                kh2 = _load_unit_keys(kh2_base, offs_n, offs_d, start_n, N, HEAD_D, MASKED, KH_DESC)
                h2 = tl.dot(q2, tl.trans(kh2), input_precision=PREC)
            if _screen(h1, h2, thr1, thr2, ok, flag_row, frow0, n_mt, n_nt, start_n, MASKED, TWO_VIEWS, BLOCK_M,
                       BLOCK_N, FLAG_M, FLAG_N, FOR_BWD, ROW_SCREEN):
                acc = _tile(acc, h1 * rq1[:, None], h2 * rq2[:, None], rq1, rq2, rq1, rq2, tau, lam, v_base,
                            s_vn, s_vd, flag_row, frow0, n_mt, n_nt, offs_m, offs_n, start_n, diag, N, p,
                            MASKED, TWO_VIEWS, CAUSAL, P_MODE, BLOCK_M, BLOCK_N, HEAD_DV, PREC, SCREEN,
                            False, FLAG_M, FLAG_N, FOR_BWD, True, V_DESC)
        else:
            s1, s2, rk1, rk2 = _raw_scores(q1, q2, tau, k1_base, k2_base, rk1_base, rk2_base, s_k1n, s_k1d,
                                           s_k2n, s_k2d, offs_n, N, MASKED, TWO_VIEWS, HEAD_D, PREC, NORMALIZE)
            if SCREEN and (MASK_SCREEN or not MASKED):
                # s * rq * rk > tau  <=>  s * rk > tau / rq: one multiply-add per score
                g1 = s1
                g2 = s2
                if NORMALIZE:
                    g1 = s1 * rk1[None, :]
                    g2 = g1
                    if TWO_VIEWS:
                        g2 = s2 * rk2[None, :]
                if _screen(g1, g2, thr1, thr2, ok, flag_row, frow0, n_mt, n_nt, start_n, MASKED, TWO_VIEWS,
                           BLOCK_M, BLOCK_N, FLAG_M, FLAG_N, FOR_BWD, ROW_SCREEN):
                    acc = _tile(acc, s1, s2, rq1, rq2, rk1, rk2, tau, lam, v_base, s_vn, s_vd,
                                flag_row, frow0, n_mt, n_nt, offs_m, offs_n, start_n, diag, N, p,
                                MASKED, TWO_VIEWS, CAUSAL, P_MODE, BLOCK_M, BLOCK_N, HEAD_DV, PREC, SCREEN,
                                NORMALIZE, FLAG_M, FLAG_N, FOR_BWD, True, V_DESC)
            else:
                acc = _tile(acc, s1, s2, rq1, rq2, rk1, rk2, tau, lam, v_base, s_vn, s_vd,
                            flag_row, frow0, n_mt, n_nt, offs_m, offs_n, start_n, diag, N, p,
                            MASKED, TWO_VIEWS, CAUSAL, P_MODE, BLOCK_M, BLOCK_N, HEAD_DV, PREC, SCREEN,
                            NORMALIZE, FLAG_M, FLAG_N, FOR_BWD, False, V_DESC)
    return acc


# sizes that vary per call are not specialised on (Triton would compile a variant per value class, i.e.
# per ==1 / %16 pattern of M, N, heads...): one compiled kernel serves every sequence length
@triton.jit(do_not_specialize=["s_beta", "s_scale", "s_lam", "H", "G", "M", "N", "n_mt", "n_nt", "p", "n_bh",
                               "group", "n_row"])
def attention_fwd_kernel(Q1, K1, Q2, K2, V, BETA, SCALE, LAM, OUT, FLAGS, RQ1, RQ2, RK1, RK2, KH1, KH2, DOCS,
                         s_q1b, s_q1h, s_q1m, s_q1d, s_q2b, s_q2h, s_q2m, s_q2d,
                         s_k1b, s_k1h, s_k1n, s_k1d, s_k2b, s_k2h, s_k2n, s_k2d,
                         s_vb, s_vh, s_vn, s_vd, s_ob, s_oh, s_om, s_od,
                         s_beta, s_scale, s_lam, H, G, M, N, n_mt, n_nt, p, n_bh, group, n_row,
                         TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
                         PREC: tl.constexpr, NORMALIZE: tl.constexpr, HAS_BETA: tl.constexpr,
                         TAU_F64: tl.constexpr, EPS2: tl.constexpr, FLAG_M: tl.constexpr, FLAG_N: tl.constexpr,
                         SCREEN: tl.constexpr, FOR_BWD: tl.constexpr, UNIT_KEYS: tl.constexpr,
                         HAT_DELTA: tl.constexpr, ROW_SCREEN: tl.constexpr, TMA: tl.constexpr,
                         MASK_SCREEN: tl.constexpr, VARLEN: tl.constexpr):
    """A flat grid of cdiv(M, BLOCK_M) * n_bh programs (n_bh = batch * heads), started in sections of `group`
    heads, the last query blocks (causal: the most keys) first.
    VARLEN (packed documents): the "batch" is the document table DOCS (int32 (n_docs, 3): batch row, first
    token, length), M = N the longest document; each document runs as its own causal sequence over its
    tokens t0 .. t0 + length - 1 of its row (positions from 0), and programs past its length return at once.
    The per-token buffers (inverse norms, unit keys) keep the rows' layout, n_row tokens per row."""
    n_m = tl.num_programs(0) // n_bh
    pid_m, bh = grouped_order(tl.program_id(0), n_m, n_bh, group)
    pid_m = n_m - 1 - pid_m
    b = (bh // H).to(tl.int64)
    h = bh % H
    hk = (h // G).to(tl.int64)
    h64 = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    brow, t0, M, N, m_lay, n_lay = doc_span(DOCS, b, M, N, n_row, VARLEN)
    if VARLEN and start_m >= M:  # past this document's end
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    row_ok = offs_m < M
    diag = N - M  # bottom-right causal alignment: row r sees keys j <= r + diag

    q1 = load_block(Q1 + brow * s_q1b + h64 * s_q1h + t0 * s_q1m, offs_m, offs_d, s_q1m, s_q1d, row_ok)
    if TWO_VIEWS:
        q2 = load_block(Q2 + brow * s_q2b + h64 * s_q2h + t0 * s_q2m, offs_m, offs_d, s_q2m, s_q2d, row_ok)
    else:
        q2 = q1
    tau = load_tau(BETA, SCALE, h64, s_beta, s_scale, offs_m, row_ok, HAS_BETA, TAU_F64)
    if TWO_VIEWS:
        lam = tl.load(LAM + h64 * s_lam).to(tau.dtype)
    else:
        lam = 0.0
    # inverse norms (NORMALIZE): RQ* contiguous (B, H, M), written here for the backward (every query row
    # belongs to exactly one program); RK* contiguous (B, Hk, N), from the pre-pass kernel
    rk1_base = RK1 + (brow * (H // G) + hk) * n_lay + t0
    rk2_base = RK2 + (brow * (H // G) + hk) * n_lay + t0
    rq_row = (brow * H + h64) * m_lay + t0
    if NORMALIZE:
        rq1 = inv_norm_rows(q1, EPS2, RK1.dtype.element_ty)
        if FOR_BWD:
            tl.store(RQ1 + rq_row + offs_m, rq1, mask=row_ok)
        if TWO_VIEWS:
            rq2 = inv_norm_rows(q2, EPS2, RK1.dtype.element_ty)
            if FOR_BWD:
                tl.store(RQ2 + rq_row + offs_m, rq2, mask=row_ok)
        else:
            rq2 = rq1
    else:
        rq1 = tau
        rq2 = tau
    # the screen's row thresholds: tau / rq ((tau - HAT_DELTA) / rq with the unit keys), lowered by a relative
    # 2^-16 -- far more than the few fp32 roundings between the screen's s * rk - thr and the exact path's
    # s * rq * rk - tau -- so that a pair the screen drops has no survivor (any sign of tau)
    if UNIT_KEYS:
        thr1 = (tau - HAT_DELTA) / rq1
        thr1 = thr1 - tl.abs(thr1) * 1.52587890625e-05
        thr2 = (tau - HAT_DELTA) / rq2
        thr2 = thr2 - tl.abs(thr2) * 1.52587890625e-05
    elif NORMALIZE:
        thr1 = tau / rq1
        thr1 = thr1 - tl.abs(thr1) * 1.52587890625e-05
        thr2 = tau / rq2
        thr2 = thr2 - tl.abs(thr2) * 1.52587890625e-05
    else:
        thr1 = tau
        thr2 = tau
    k1_base = K1 + brow * s_k1b + hk * s_k1h + t0 * s_k1n
    k2_base = K2 + brow * s_k2b + hk * s_k2h + t0 * s_k2n
    v_base = V + brow * s_vb + hk * s_vh + t0 * s_vn
    # unit keys (UNIT_KEYS): KH* contiguous (B, Hk, N, HEAD_D), from the pre-pass kernel
    kh1_base = KH1 + ((brow * (H // G) + hk) * n_lay + t0) * HEAD_D
    kh2_base = KH2 + ((brow * (H // G) + hk) * n_lay + t0) * HEAD_D
    # flags: one per FLAG_M x FLAG_N sub-tile (n_mt x n_nt of them per head); this program owns flag rows
    # frow0 .. frow0 + BLOCK_M // FLAG_M - 1
    frow0 = pid_m * (BLOCK_M // FLAG_M)
    flag_row = FLAGS + bh.to(tl.int64) * n_mt * n_nt + frow0 * n_nt

    lo, hi = key_range(start_m, M, N, BLOCK_M, BLOCK_N, CAUSAL)
    # TMA: the unmasked stage loads the unit keys (1), and the values too (2), through tensor descriptors --
    # the copy engine writes the tiles straight to shared memory, with no per-thread addresses in registers
    if TMA >= 1:
        kh1_un = tl.make_tensor_descriptor(kh1_base, shape=[N, HEAD_D], strides=[HEAD_D, 1],
                                           block_shape=[BLOCK_N, HEAD_D])
        kh2_un = tl.make_tensor_descriptor(kh2_base, shape=[N, HEAD_D], strides=[HEAD_D, 1],
                                           block_shape=[BLOCK_N, HEAD_D])
    else:
        kh1_un = kh1_base
        kh2_un = kh2_base
    if TMA == 2:
        v_un = tl.make_tensor_descriptor(v_base, shape=[N, HEAD_DV], strides=[s_vn, 1],
                                         block_shape=[BLOCK_N, HEAD_DV])
    else:
        v_un = v_base
    acc = tl.zeros([BLOCK_M, HEAD_DV], dtype=tl.float32)
    acc = _fwd_inner(acc, q1, q2, rq1, rq2, thr1, thr2, tau, lam, k1_base, k2_base, v_un, rk1_base,
                     rk2_base, kh1_un, kh2_un, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd, flag_row, frow0,
                     n_mt, n_nt, offs_m, 0, lo, diag, N, p, False, TWO_VIEWS, CAUSAL, P_MODE, BLOCK_M, BLOCK_N,
                     HEAD_D, HEAD_DV, PREC, NORMALIZE, FLAG_M, FLAG_N, SCREEN, FOR_BWD,
                     UNIT_KEYS, ROW_SCREEN, TMA >= 1, TMA == 2, MASK_SCREEN)
    acc = _fwd_inner(acc, q1, q2, rq1, rq2, thr1, thr2, tau, lam, k1_base, k2_base, v_base, rk1_base, rk2_base,
                     kh1_base, kh2_base, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd, flag_row, frow0, n_mt, n_nt,
                     offs_m, lo, hi, diag, N, p, True, TWO_VIEWS, CAUSAL, P_MODE, BLOCK_M, BLOCK_N, HEAD_D,
                     HEAD_DV, PREC, NORMALIZE, FLAG_M, FLAG_N, SCREEN, FOR_BWD, UNIT_KEYS,
                     ROW_SCREEN, False, False, MASK_SCREEN)
    if FOR_BWD:
        # key blocks never visited (above the diagonal) get a zero flag here, so the launcher need not
        # zero-fill the flags first (one launch fewer); the backward may read them when its blocks differ
        if FLAG_M == BLOCK_M and FLAG_N == BLOCK_N:
            for t in range(tl.cdiv(hi, BLOCK_N), n_nt):
                tl.store(flag_row + t, tl.zeros([], dtype=tl.int8))
        else:
            rr = tl.arange(0, BLOCK_M // FLAG_M)
            for t in range(tl.cdiv(hi, BLOCK_N) * (BLOCK_N // FLAG_N), n_nt):
                tl.store(flag_row + rr * n_nt + t, tl.zeros([BLOCK_M // FLAG_M], dtype=tl.int8),
                         mask=(frow0 + rr) < n_mt)
    o_ptrs = OUT + brow * s_ob + h64 * s_oh + (t0 + offs_m[:, None]) * s_om + offs_dv[None, :] * s_od
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=row_ok[:, None])
