"""Single-pass forward kernel: out_i = sum_j (a1_ij - lam * a2_ij) v_j, a_ij = (s_ij - tau_i)_+^p.

One program per (query block, batch * head), started in sections of heads, heaviest query blocks first
(common.grouped_order). Both views are scored against the same key block in one pass; the causal loop is
split Triton-tutorial style into an unmasked stage (key blocks every row of the query block may see) and a
masked stage (the diagonal blocks and the ragged key tail; screened too with MASK_SCREEN, its hidden scores
left out); key blocks above the diagonal are never visited. Each visited (query block, key block) pair
records in `flags` whether any exceedance survived (per FLAG_M x FLAG_N sub-tile when the flags are set
finer than the blocks); a pair with none skips the V load and the PV product, and the backward skips it
(at the flags' grain) entirely. FOR_BWD = False (no gradient wanted: inference) leaves out what only the
backward reads -- the flags and the query inverse norms -- so their reductions and stores cost nothing there.

Flags from the screen (SCREEN, unmasked pairs): the screen's conservative values decide the flags, so a
flag may be set for a sub-tile whose exceedances all turn out zero (a score within the screen's 2^-16
margin below tau); the backward then recomputes that sub-tile and finds nothing -- wasted work, never a
wrong gradient. A cleared flag always means no survivor.

SCREEN_HAT: the screen scores unit keys the pre-pass wrote (no per-key norm in its loop), without changing
the output; UNIT_KEYS (with SCREEN_HAT): the exact path of the unmasked pairs scores them too (see
attention.UNIT_KEYS), so it recomputes nothing. Both on per the block table (long keys).

NORMALIZE: q/k arrive raw and the cosine score is s_ij = (q_i . k_j) * rq_i * rk_j in fp32, with the
inverse norms rq, rk (reference.l2_normalize's, eps included) precomputed by common.inv_norm_kernel:
the products still run on the raw input-dtype tiles, and no normalised copy of q/k is ever written.
"""
import triton
import triton.language as tl

from .common import exceed_pow, grouped_order, inv_norm_rows, load_tau


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
def _visible(offs_m, offs_n, diag, N, CAUSAL: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: which scores of a masked-stage pair exist (key inside N; causal: j <= i + diag)."""
    ok = offs_n[None, :] < N
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None] + diag)
    return ok


@triton.jit
def _load_v(v_base, s_vn, s_vd, offs_n, start_n, offs_dv, V_DESC: tl.constexpr):
    """An unmasked key block's values: through the tensor descriptor (TMA) or by pointers."""
    if V_DESC:
        v = v_base.load([start_n, 0])
    else:
        v = tl.load(v_base + offs_n[:, None] * s_vn + offs_dv[None, :] * s_vd)
    return v


@triton.jit
def _tile(acc, s1, s2, rq1, rq2, rk1, rk2, tau, lam, v_base, s_vn, s_vd,
          flag_row, frow0, n_mt, n_nt, offs_m, offs_n, start_n, diag, N, p_val,
          MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DV: tl.constexpr,
          PREC: tl.constexpr, SKIP_EMPTY: tl.constexpr, NORMALIZE: tl.constexpr,
          FLAG_M: tl.constexpr, FLAG_N: tl.constexpr, FOR_BWD: tl.constexpr, SCREENED: tl.constexpr,
          V_DESC: tl.constexpr):
    """One (query block, key block) pair from its raw scores s1, s2: exceedances, flags, and the PV product
    into acc -- the exact path, the one the backward recomputes. SCREENED: the screen has already found a
    possible survivor and written the flags, so neither a survivor test nor flags are needed here. V_DESC:
    v_base is a tensor descriptor of the head's values (TMA; unmasked pairs only)."""
    offs_dv = tl.arange(0, HEAD_DV)
    if NORMALIZE:  # cosine: scale the raw dot products by both inverse norms
        s1 = s1 * rq1[:, None] * rk1[None, :]
    e1 = tl.maximum(s1 - tau[:, None], 0.0)
    if MASKED:
        ok = _visible(offs_m, offs_n, diag, N, CAUSAL)
        e1 = tl.where(ok, e1, 0.0)
    w = exceed_pow(e1, P, p_val)
    live = e1
    if TWO_VIEWS:
        if NORMALIZE:
            s2 = s2 * rq2[:, None] * rk2[None, :]
        e2 = tl.maximum(s2 - tau[:, None], 0.0)
        if MASKED:
            e2 = tl.where(ok, e2, 0.0)
        w = w - lam * exceed_pow(e2, P, p_val)
        live = live + e2
    alive = True
    if SKIP_EMPTY != 3 and not SCREENED:
        # exceedances are >= 0, so a (sub-)tile has a survivor iff its largest one is > 0
        if FOR_BWD and (FLAG_M != BLOCK_M or FLAG_N != BLOCK_N):
            # finer flags: one per FLAG_M x FLAG_N sub-tile, so the backward can skip at that grain
            sub = _grid_live(live, BLOCK_M, BLOCK_N, FLAG_M, FLAG_N)
            _store_flag_grid(flag_row, frow0, n_mt, n_nt, start_n, sub, BLOCK_M, BLOCK_N, FLAG_M, FLAG_N)
            alive = tl.max(tl.max(sub, 1), 0) > 0
        else:
            alive = tl.max(tl.max(live, 1), 0) > 0
            if FOR_BWD:
                tl.store(flag_row + start_n // BLOCK_N, alive.to(tl.int8))
    # SKIP_EMPTY: 0 = always accumulate; 1 = a survivor-free block skips the V load and the product;
    # 2 = it loads V regardless (keeps the load in the software pipeline) and skips only the product;
    # 3 = no survivor test at all (the launcher sets every flag). A screened pair is known alive.
    if SKIP_EMPTY == 0 or SKIP_EMPTY == 3 or SCREENED:
        if MASKED:
            v = tl.load(v_base + offs_n[:, None] * s_vn + offs_dv[None, :] * s_vd,
                        mask=offs_n[:, None] < N, other=0.0)
        else:
            v = _load_v(v_base, s_vn, s_vd, offs_n, start_n, offs_dv, V_DESC)
        acc += tl.dot(w.to(v.dtype), v, input_precision=PREC)
    else:
        if SKIP_EMPTY == 2:
            if MASKED:
                v = tl.load(v_base + offs_n[:, None] * s_vn + offs_dv[None, :] * s_vd,
                            mask=offs_n[:, None] < N, other=0.0)
            else:
                v = _load_v(v_base, s_vn, s_vd, offs_n, start_n, offs_dv, V_DESC)
            if alive:
                acc += tl.dot(w.to(v.dtype), v, input_precision=PREC)
        else:
            if alive:
                if MASKED:
                    v = tl.load(v_base + offs_n[:, None] * s_vn + offs_dv[None, :] * s_vd,
                                mask=offs_n[:, None] < N, other=0.0)
                else:
                    v = _load_v(v_base, s_vn, s_vd, offs_n, start_n, offs_dv, V_DESC)
                acc += tl.dot(w.to(v.dtype), v, input_precision=PREC)
    return acc


@triton.jit
def _raw_scores(q1, q2, tau, k1_base, k2_base, rk1_base, rk2_base, s_k1n, s_k1d, s_k2n, s_k2d, offs_n, N,
                MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, HEAD_D: tl.constexpr, PREC: tl.constexpr,
                NORMALIZE: tl.constexpr):
    """The raw dot products s1, s2 of the query block with the key block at offs_n (input-dtype tiles, fp32
    accumulation) and the keys' inverse norms rk1, rk2 (NORMALIZE; else placeholders)."""
    offs_d = tl.arange(0, HEAD_D)
    if MASKED:
        k1 = tl.load(k1_base + offs_n[:, None] * s_k1n + offs_d[None, :] * s_k1d,
                     mask=offs_n[:, None] < N, other=0.0)
    else:
        k1 = tl.load(k1_base + offs_n[:, None] * s_k1n + offs_d[None, :] * s_k1d)
    s1 = tl.dot(q1, tl.trans(k1), input_precision=PREC)
    rk1 = tau  # placeholders where not normalising
    rk2 = tau
    if NORMALIZE:
        if MASKED:
            rk1 = tl.load(rk1_base + offs_n, mask=offs_n < N, other=0.0)
        else:
            rk1 = tl.load(rk1_base + offs_n)
    s2 = s1
    if TWO_VIEWS:
        if MASKED:
            k2 = tl.load(k2_base + offs_n[:, None] * s_k2n + offs_d[None, :] * s_k2d,
                         mask=offs_n[:, None] < N, other=0.0)
        else:
            k2 = tl.load(k2_base + offs_n[:, None] * s_k2n + offs_d[None, :] * s_k2d)
        s2 = tl.dot(q2, tl.trans(k2), input_precision=PREC)
        if NORMALIZE:
            if MASKED:
                rk2 = tl.load(rk2_base + offs_n, mask=offs_n < N, other=0.0)
            else:
                rk2 = tl.load(rk2_base + offs_n)
    return s1, s2, rk1, rk2


@triton.jit
def _screen_flags(c, flag_row, frow0, n_mt, n_nt, start_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  FLAG_M: tl.constexpr, FLAG_N: tl.constexpr, FOR_BWD: tl.constexpr):
    """Whether the screen's values c hold any positive one; the flags come from them (conservative: see the
    module docstring)."""
    if FOR_BWD and (FLAG_M != BLOCK_M or FLAG_N != BLOCK_N):
        sub = _grid_live(c, BLOCK_M, BLOCK_N, FLAG_M, FLAG_N)
        _store_flag_grid(flag_row, frow0, n_mt, n_nt, start_n, sub, BLOCK_M, BLOCK_N, FLAG_M, FLAG_N)
        alive = tl.max(tl.max(sub, 1), 0) > 0
    else:
        alive = tl.max(tl.max(c, 1), 0) > 0
        if FOR_BWD:
            tl.store(flag_row + start_n // BLOCK_N, alive.to(tl.int8))
    return alive


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
def _fwd_inner(acc, q1, q2, rq1, rq2, thr1, thr2, tau, lam, k1_base, k2_base, v_base, rk1_base, rk2_base,
               kh1_base, kh2_base, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd,
               flag_row, frow0, n_mt, n_nt, offs_m, lo, hi, diag, N, p_val,
               MASKED: tl.constexpr, TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
               PREC: tl.constexpr, SKIP_EMPTY: tl.constexpr, NORMALIZE: tl.constexpr,
               FLAG_M: tl.constexpr, FLAG_N: tl.constexpr, SCREEN: tl.constexpr, FOR_BWD: tl.constexpr,
               SCREEN_HAT: tl.constexpr, UNIT_KEYS: tl.constexpr, ROW_SCREEN: tl.constexpr,
               KH_DESC: tl.constexpr, V_DESC: tl.constexpr, MASK_SCREEN: tl.constexpr):
    """One stage of the key loop (MASKED: the diagonal blocks and the ragged tail). KH_DESC / V_DESC: kh*_base /
    v_base are tensor descriptors (TMA loads, unmasked stage only), else pointers. MASK_SCREEN: the masked
    stage is screened too (its hidden scores excluded from the screen), else every masked pair takes the
    exact path."""
    offs_d = tl.arange(0, HEAD_D)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            ok = _visible(offs_m, offs_n, diag, N, CAUSAL)
        else:
            ok = True
        if SCREEN and SCREEN_HAT and (MASK_SCREEN or not MASKED):
            # SCREEN_HAT: the screen scores the unit keys (kh, the pre-pass's rounded copy, contiguous), so it
            # needs no per-key norm: s^ > thr = (tau - delta) / rq, delta covering kh's rounding (launcher: 0
            # where the exact path scores kh too and no flags are written, i.e. UNIT_KEYS inference)
            if KH_DESC:
                kh1 = kh1_base.load([start_n, 0])
            elif MASKED:
                kh1 = tl.load(kh1_base + offs_n[:, None] * HEAD_D + offs_d[None, :], mask=offs_n[:, None] < N,
                              other=0.0)
            else:
                kh1 = tl.load(kh1_base + offs_n[:, None] * HEAD_D + offs_d[None, :])
            h1 = tl.dot(q1, tl.trans(kh1), input_precision=PREC)
            h2 = h1
            if TWO_VIEWS:
                if KH_DESC:
                    kh2 = kh2_base.load([start_n, 0])
                elif MASKED:
                    kh2 = tl.load(kh2_base + offs_n[:, None] * HEAD_D + offs_d[None, :], mask=offs_n[:, None] < N,
                                  other=0.0)
                else:
                    kh2 = tl.load(kh2_base + offs_n[:, None] * HEAD_D + offs_d[None, :])
                h2 = tl.dot(q2, tl.trans(kh2), input_precision=PREC)
            if ROW_SCREEN and not FOR_BWD:
                if MASKED:  # hidden scores out of the row maxima
                    alive = _row_screen(tl.where(ok, h1, float("-inf")), tl.where(ok, h2, float("-inf")), thr1,
                                        thr2, TWO_VIEWS)
                else:
                    alive = _row_screen(h1, h2, thr1, thr2, TWO_VIEWS)
            else:
                c = h1 - thr1[:, None]
                if TWO_VIEWS:
                    c = tl.maximum(c, h2 - thr2[:, None])
                if MASKED:
                    c = tl.where(ok, c, -1.0)
                alive = _screen_flags(c, flag_row, frow0, n_mt, n_nt, start_n, BLOCK_M, BLOCK_N, FLAG_M, FLAG_N,
                                      FOR_BWD)
            if UNIT_KEYS:  # the screen's scores are the exact path's too: (q . round(k^)) rq
                if alive:
                    acc = _tile(acc, h1 * rq1[:, None], h2 * rq2[:, None], rq1, rq2, rq1, rq2, tau, lam, v_base,
                                s_vn, s_vd, flag_row, frow0, n_mt, n_nt, offs_m, offs_n, start_n, diag, N, p_val,
                                MASKED, TWO_VIEWS, CAUSAL, P, BLOCK_M, BLOCK_N, HEAD_DV, PREC, SKIP_EMPTY,
                                False, FLAG_M, FLAG_N, FOR_BWD, True, V_DESC)
            else:  # passing pairs recompute the scores from the raw keys and their norms
                if alive:
                    s1, s2, rk1, rk2 = _raw_scores(q1, q2, tau, k1_base, k2_base, rk1_base, rk2_base, s_k1n,
                                                   s_k1d, s_k2n, s_k2d, offs_n, N, MASKED, TWO_VIEWS, HEAD_D, PREC,
                                                   NORMALIZE)
                    acc = _tile(acc, s1, s2, rq1, rq2, rk1, rk2, tau, lam, v_base, s_vn, s_vd,
                                flag_row, frow0, n_mt, n_nt, offs_m, offs_n, start_n, diag, N, p_val,
                                MASKED, TWO_VIEWS, CAUSAL, P, BLOCK_M, BLOCK_N, HEAD_DV, PREC, SKIP_EMPTY,
                                NORMALIZE, FLAG_M, FLAG_N, FOR_BWD, True, V_DESC)
        else:
            s1, s2, rk1, rk2 = _raw_scores(q1, q2, tau, k1_base, k2_base, rk1_base, rk2_base, s_k1n, s_k1d,
                                           s_k2n, s_k2d, offs_n, N, MASKED, TWO_VIEWS, HEAD_D, PREC, NORMALIZE)
            if SCREEN and (MASK_SCREEN or not MASKED):
                # screen first (most pairs hold no survivor): s * rq * rk > tau  <=>  s * rk > tau / rq, one
                # fused multiply-add per score against thr = tau / rq lowered by a relative 2^-16 (launcher),
                # so the screen passes every pair the exact path below would find alive; only those pay it
                if ROW_SCREEN and not FOR_BWD:
                    g1 = s1
                    g2 = s2
                    if NORMALIZE:
                        g1 = s1 * rk1[None, :]
                        g2 = g1
                        if TWO_VIEWS:
                            g2 = s2 * rk2[None, :]
                    if MASKED:
                        g1 = tl.where(ok, g1, float("-inf"))
                        g2 = tl.where(ok, g2, float("-inf"))
                    alive = _row_screen(g1, g2, thr1, thr2, TWO_VIEWS)
                else:
                    if NORMALIZE:
                        c = s1 * rk1[None, :] - thr1[:, None]
                    else:
                        c = s1 - thr1[:, None]
                    if TWO_VIEWS:
                        if NORMALIZE:
                            c = tl.maximum(c, s2 * rk2[None, :] - thr2[:, None])
                        else:
                            c = tl.maximum(c, s2 - thr2[:, None])
                    if MASKED:
                        c = tl.where(ok, c, -1.0)
                    alive = _screen_flags(c, flag_row, frow0, n_mt, n_nt, start_n, BLOCK_M, BLOCK_N, FLAG_M,
                                          FLAG_N, FOR_BWD)
                if alive:
                    acc = _tile(acc, s1, s2, rq1, rq2, rk1, rk2, tau, lam, v_base, s_vn, s_vd,
                                flag_row, frow0, n_mt, n_nt, offs_m, offs_n, start_n, diag, N, p_val,
                                MASKED, TWO_VIEWS, CAUSAL, P, BLOCK_M, BLOCK_N, HEAD_DV, PREC, SKIP_EMPTY,
                                NORMALIZE, FLAG_M, FLAG_N, FOR_BWD, True, V_DESC)
            else:
                acc = _tile(acc, s1, s2, rq1, rq2, rk1, rk2, tau, lam, v_base, s_vn, s_vd,
                            flag_row, frow0, n_mt, n_nt, offs_m, offs_n, start_n, diag, N, p_val,
                            MASKED, TWO_VIEWS, CAUSAL, P, BLOCK_M, BLOCK_N, HEAD_DV, PREC, SKIP_EMPTY,
                            NORMALIZE, FLAG_M, FLAG_N, FOR_BWD, False, V_DESC)
    return acc


# sizes that vary per call are not specialised on (Triton would compile a variant per value class, i.e.
# per ==1 / %16 pattern of M, N, heads...): one compiled kernel serves every sequence length
@triton.jit(do_not_specialize=["s_beta", "s_scale", "s_lam", "H", "G", "M", "N", "n_mt", "n_nt", "p_val", "n_bh",
                               "group"])
def tda_fwd_kernel(Q1, K1, Q2, K2, V, BETA, SCALE, LAM, OUT, FLAGS, RQ1, RQ2, RK1, RK2, KH1, KH2,
                   s_q1b, s_q1h, s_q1m, s_q1d, s_q2b, s_q2h, s_q2m, s_q2d,
                   s_k1b, s_k1h, s_k1n, s_k1d, s_k2b, s_k2h, s_k2n, s_k2d,
                   s_vb, s_vh, s_vn, s_vd, s_ob, s_oh, s_om, s_od,
                   s_beta, s_scale, s_lam, H, G, M, N, n_mt, n_nt, p_val, n_bh, group,
                   TWO_VIEWS: tl.constexpr, CAUSAL: tl.constexpr, P: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
                   PREC: tl.constexpr, SKIP_EMPTY: tl.constexpr, NORMALIZE: tl.constexpr,
                   HAS_BETA: tl.constexpr, TAU_F64: tl.constexpr, EPS2: tl.constexpr,
                   FLAG_M: tl.constexpr, FLAG_N: tl.constexpr, SCREEN: tl.constexpr, FOR_BWD: tl.constexpr,
                   HEAVY_FIRST: tl.constexpr, SCREEN_HAT: tl.constexpr, HAT_DELTA: tl.constexpr,
                   UNIT_KEYS: tl.constexpr, ROW_SCREEN: tl.constexpr, TMA: tl.constexpr,
                   MASK_SCREEN: tl.constexpr):
    # a flat grid of cdiv(M, BLOCK_M) * n_bh programs (n_bh = batch * heads), started in sections of `group`
    # heads (common.grouped_order)
    n_m = tl.num_programs(0) // n_bh
    pid_m, bh = grouped_order(tl.program_id(0), n_m, n_bh, group)
    if HEAVY_FIRST:  # causal: the last query blocks see the most keys; start those first (shorter tail)
        pid_m = n_m - 1 - pid_m
    b = (bh // H).to(tl.int64)
    h = bh % H
    hk = (h // G).to(tl.int64)
    h64 = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    offs_dv = tl.arange(0, HEAD_DV)
    row_ok = offs_m < M
    diag = N - M  # bottom-right causal alignment: row r sees keys j <= r + diag

    q1 = tl.load(Q1 + b * s_q1b + h64 * s_q1h + offs_m[:, None] * s_q1m + offs_d[None, :] * s_q1d,
                 mask=row_ok[:, None], other=0.0)
    if TWO_VIEWS:
        q2 = tl.load(Q2 + b * s_q2b + h64 * s_q2h + offs_m[:, None] * s_q2m + offs_d[None, :] * s_q2d,
                     mask=row_ok[:, None], other=0.0)
    else:
        q2 = q1
    tau = load_tau(BETA, SCALE, h64, s_beta, s_scale, offs_m, row_ok, HAS_BETA, TAU_F64)
    if TWO_VIEWS:
        lam = tl.load(LAM + h64 * s_lam).to(tau.dtype)
    else:
        lam = 0.0
    # inverse norms (NORMALIZE): RQ* contiguous (B, H, M), written here for the backward (every query row
    # belongs to exactly one program); RK* contiguous (B, Hk, N), from the pre-pass kernel
    rk1_base = RK1 + (b * (H // G) + hk) * N
    rk2_base = RK2 + (b * (H // G) + hk) * N
    if NORMALIZE:
        rq1 = inv_norm_rows(q1, EPS2, RK1.dtype.element_ty)
        if FOR_BWD:
            tl.store(RQ1 + bh.to(tl.int64) * M + offs_m, rq1, mask=row_ok)
        if TWO_VIEWS:
            rq2 = inv_norm_rows(q2, EPS2, RK1.dtype.element_ty)
            if FOR_BWD:
                tl.store(RQ2 + bh.to(tl.int64) * M + offs_m, rq2, mask=row_ok)
        else:
            rq2 = rq1
    else:
        rq1 = tau
        rq2 = tau
    # the screen's row thresholds (SCREEN): tau / rq, lowered by a relative 2^-16 -- far more than the few
    # fp32 roundings between the screen's s * rk - thr and the exact path's s * rq * rk - tau -- so that a
    # pair the screen drops has no survivor (any sign of tau)
    if SCREEN_HAT:  # the unit-key screen: (tau - HAT_DELTA) / rq, HAT_DELTA covering kh's rounding (launcher)
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
    k1_base = K1 + b * s_k1b + hk * s_k1h
    k2_base = K2 + b * s_k2b + hk * s_k2h
    v_base = V + b * s_vb + hk * s_vh
    # unit keys (SCREEN_HAT): KH* contiguous (B, Hk, N, HEAD_D), from the pre-pass kernel
    kh1_base = KH1 + ((b * (H // G) + hk) * N) * HEAD_D
    kh2_base = KH2 + ((b * (H // G) + hk) * N) * HEAD_D
    # flags: one per FLAG_M x FLAG_N sub-tile (n_mt x n_nt of them per head); this program owns flag rows
    # frow0 .. frow0 + BLOCK_M // FLAG_M - 1
    frow0 = pid_m * (BLOCK_M // FLAG_M)
    flag_row = FLAGS + bh.to(tl.int64) * n_mt * n_nt + frow0 * n_nt

    if CAUSAL:
        last_row = tl.minimum(start_m + BLOCK_M, M) - 1
        # keys < free are visible to every row of the block; keys < hi to at least one
        free = tl.minimum(tl.maximum(start_m + diag + 1, 0), N)
        lo = (free // BLOCK_N) * BLOCK_N
        hi = tl.maximum(tl.minimum(last_row + diag + 1, N), lo)
    else:
        lo = (N // BLOCK_N) * BLOCK_N
        hi = N
    # TMA (launcher): the unmasked stage loads the unit keys (1), and the values too (2), through tensor
    # descriptors -- the copy engine writes the tiles straight to shared memory, with no per-thread addresses
    # in registers; the masked stage keeps its pointer loads
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
                     n_mt, n_nt, offs_m, 0, lo, diag, N, p_val, False, TWO_VIEWS, CAUSAL, P, BLOCK_M, BLOCK_N,
                     HEAD_D, HEAD_DV, PREC, SKIP_EMPTY, NORMALIZE, FLAG_M, FLAG_N, SCREEN, FOR_BWD,
                     SCREEN_HAT, UNIT_KEYS, ROW_SCREEN, TMA >= 1, TMA == 2, MASK_SCREEN)
    acc = _fwd_inner(acc, q1, q2, rq1, rq2, thr1, thr2, tau, lam, k1_base, k2_base, v_base, rk1_base, rk2_base,
                     kh1_base, kh2_base, s_k1n, s_k1d, s_k2n, s_k2d, s_vn, s_vd, flag_row, frow0, n_mt, n_nt,
                     offs_m, lo, hi, diag, N, p_val, True, TWO_VIEWS, CAUSAL, P, BLOCK_M, BLOCK_N, HEAD_D,
                     HEAD_DV, PREC, SKIP_EMPTY, NORMALIZE, FLAG_M, FLAG_N, SCREEN, FOR_BWD, SCREEN_HAT,
                     UNIT_KEYS, ROW_SCREEN, False, False, MASK_SCREEN)
    if SKIP_EMPTY != 3 and FOR_BWD:
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
    o_ptrs = OUT + b * s_ob + h64 * s_oh + offs_m[:, None] * s_om + offs_dv[None, :] * s_od
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=row_ok[:, None])
