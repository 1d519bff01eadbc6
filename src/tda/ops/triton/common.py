"""Small jit helpers shared by the forward and backward kernels."""
import triton
import triton.language as tl


@triton.jit
def exceed_pow(e, P_MODE: tl.constexpr, p):
    """e ** p for an exceedance e >= 0 (exact zero stays zero). P_MODE = 1, 2, 3 are exact fast paths;
    P_MODE = 0 is the general p via exp2(p * log2 e), guarded so that e = 0 gives 0, not NaN."""
    if P_MODE == 1:
        r = e
    elif P_MODE == 2:
        r = e * e
    elif P_MODE == 3:
        r = e * e * e
    else:
        r = tl.where(e > 0, tl.exp2(p * tl.log2(tl.maximum(e, 1e-30))), 0.0)
    return r


@triton.jit
def exceed_dpow(e, P_MODE: tl.constexpr, p):
    """d(e ** p)/de = p * e ** (p - 1) where e > 0, else 0 (an exact-zero weight passes no gradient)."""
    if P_MODE == 1:
        r = tl.where(e > 0, 1.0, 0.0)
    elif P_MODE == 2:
        r = 2.0 * e
    elif P_MODE == 3:
        r = 3.0 * e * e
    else:
        r = tl.where(e > 0, p * tl.exp2((p - 1.0) * tl.log2(tl.maximum(e, 1e-30))), 0.0)
    return r


@triton.jit
def load_rows(base, offs_n, offs_d, s_n, s_d, N, MASKED: tl.constexpr):
    """The (len(offs_n), len(offs_d)) tile at base[offs_n * s_n + offs_d * s_d]; MASKED: rows >= N read as 0."""
    ptrs = base + offs_n[:, None] * s_n + offs_d[None, :] * s_d
    if MASKED:
        x = tl.load(ptrs, mask=offs_n[:, None] < N, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def load_block(base, offs, offs_d, s_n, s_d, ok):
    """A program's own rows: the tile at base[offs * s_n + offs_d * s_d], rows where ok is False read as 0."""
    return tl.load(base + offs[:, None] * s_n + offs_d[None, :] * s_d, mask=ok[:, None], other=0.0)


@triton.jit
def load_vec(base, offs, N, MASKED: tl.constexpr):
    """base[offs]; MASKED: entries >= N read as 0."""
    if MASKED:
        x = tl.load(base + offs, mask=offs < N, other=0.0)
    else:
        x = tl.load(base + offs)
    return x


@triton.jit
def visible(offs_m, offs_n, diag, N, CAUSAL: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: which scores of a masked-stage pair exist (key inside N; causal: j <= i + diag)."""
    ok = offs_n[None, :] < N
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None] + diag)
    return ok


@triton.jit
def doc_span(DOCS, b, M, N, n_row, VARLEN: tl.constexpr):
    """(batch row, first token, M, N, M-layout length, N-layout length) of program batch index b. VARLEN: b
    is a document of the table DOCS (int32 rows: batch row, first token, length), so M = N = its length and
    the per-token buffers keep the rows' layout of n_row tokens; else b is the batch row itself."""
    if VARLEN:  # (one return statement: Triton unifies the types of every return, constexpr branches or not)
        brow = tl.load(DOCS + b * 3).to(tl.int64)
        t0 = tl.load(DOCS + b * 3 + 1).to(tl.int64)
        M = tl.load(DOCS + b * 3 + 2)
        N = M
        m_lay = n_row
        n_lay = n_row
    else:
        brow = b
        t0 = 0
        m_lay = M
        n_lay = N
    return brow, t0, M, N, m_lay, n_lay


@triton.jit
def key_range(start_m, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """(lo, hi) for the query block at start_m: key blocks below lo are visible to every row of the block
    (the unmasked stage), keys in [lo, hi) to some rows (the masked stage: diagonal blocks, ragged tail);
    keys past hi to none. Causal masks are bottom-right aligned: row r sees keys j <= r + N - M."""
    if CAUSAL:
        diag = N - M
        last_row = tl.minimum(start_m + BLOCK_M, M) - 1
        free = tl.minimum(tl.maximum(start_m + diag + 1, 0), N)
        lo = (free // BLOCK_N) * BLOCK_N
        hi = tl.maximum(tl.minimum(last_row + diag + 1, N), lo)
    else:
        lo = (N // BLOCK_N) * BLOCK_N
        hi = N
    return lo, hi


@triton.jit
def grouped_order(pid, n_blk, n_bh, group):
    """(block index, batch * head) of program pid of a flat grid of n_blk * n_bh programs, started in sections
    of `group` heads: within a section every head's block 0 comes before any head's block 1, and so on.
    group = 1 is head by head (one head's blocks, then the next head's); group >= n_bh is every head at once.
    Causal work per program falls (or grows) with the block index, so block 0 first across a few heads keeps
    heavy programs from starting late (the grid's tail), while sections keep the heads whose keys the running
    programs read few enough for L2. The last section may hold fewer heads."""
    s0 = (pid // (group * n_blk)) * group
    heads = tl.minimum(group, n_bh - s0)
    r = pid - s0 * n_blk
    return r // heads, s0 + r % heads


@triton.jit
def pair_alive(flag_base, start_m, start_n, n_mt, n_nt,
               MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    """Whether the (query block at start_m, key block at start_n) pair holds any survivor, read from the
    forward's survivor flags of granularity MT x NT. A block spans R x C flag tiles (R, C >= 1; when a
    block is smaller than a flag tile it lies inside one, since all sizes are powers of two)."""
    r0 = start_m // MT
    c0 = start_n // NT
    if R == 1:
        if C == 1:
            f = tl.load(flag_base + r0 * n_nt + c0).to(tl.int32)
        else:
            cols = c0 + tl.arange(0, C)
            f = tl.max(tl.load(flag_base + r0 * n_nt + cols, mask=cols < n_nt, other=0).to(tl.int32), 0)
    else:
        rows = r0 + tl.arange(0, R)
        if C == 1:
            f = tl.max(tl.load(flag_base + rows * n_nt + c0, mask=rows < n_mt, other=0).to(tl.int32), 0)
        else:
            cols = c0 + tl.arange(0, C)
            ff = tl.load(flag_base + rows[:, None] * n_nt + cols[None, :],
                         mask=(rows[:, None] < n_mt) & (cols[None, :] < n_nt), other=0).to(tl.int32)
            f = tl.max(tl.max(ff, 1), 0)
    return f > 0


@triton.jit
def inv_norm_kernel(X1, X2, R, XH, s1b, s1h, s1m, s1d, s2b, s2h, s2m, s2d, H, M, rows,
                    EPS2: tl.constexpr, TWO: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_R: tl.constexpr,
                    WRITE_HAT: tl.constexpr):
    """R[t, b, h, m] = 1 / sqrt(|x_t[b, h, m, :]|^2 + EPS2) for x_1 = X1, x_2 = X2 (TWO) of one shape
    (B, H, M, HEAD_D), any strides; R contiguous (T, B, H, M) in fp32 (fp64 for fp64 inputs). The same
    numbers as reference.l2_normalize's inverse norm (sum of squares in at least fp32, eps^2 added).
    WRITE_HAT: also the unit rows x * R rounded to XH's dtype (the inputs'), contiguous (T, B, H, M, HEAD_D):
    the forward's screen (SCREEN_HAT) scores them, with a margin for that rounding."""
    t = tl.program_id(1)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = r < rows
    r64 = r.to(tl.int64)
    b = r64 // (H * M)
    h = (r64 // M) % H
    m = r64 % M
    offs_d = tl.arange(0, HEAD_D)
    if TWO:
        if t == 0:
            ptrs = X1 + (b * s1b + h * s1h + m * s1m)[:, None] + offs_d[None, :] * s1d
        else:
            ptrs = X2 + (b * s2b + h * s2h + m * s2m)[:, None] + offs_d[None, :] * s2d
    else:
        ptrs = X1 + (b * s1b + h * s1h + m * s1m)[:, None] + offs_d[None, :] * s1d
    x = tl.load(ptrs, mask=ok[:, None], other=0.0).to(R.dtype.element_ty)
    ss = tl.sum(x * x, 1) + tl.full([BLOCK_R], EPS2, R.dtype.element_ty)
    inv = tl.rsqrt(ss)
    tl.store(R + t * rows + r64, inv, mask=ok)
    if WRITE_HAT:
        tl.store(XH + (t * rows + r64)[:, None] * HEAD_D + offs_d[None, :],
                 (x * inv[:, None]).to(XH.dtype.element_ty), mask=ok[:, None])


@triton.jit
def load_tau(BETA, SCALE, h, s_beta, s_scale, offs_m, mask, HAS_BETA: tl.constexpr, TAU_F64: tl.constexpr):
    """Row thresholds tau_i = beta_h * scale[h * s_scale + i] with reference.tau's rounding: the product
    in SCALE's dtype (fp32, fp64 for an fp64 beta), then cast to fp32 (fp64 for fp64 inputs). The eager
    path passes the per-head beta and the cached beta-free row factor (s_scale = 0); the torch.compile
    path passes tau itself (H, M) as SCALE and no beta (HAS_BETA = False)."""
    scale = tl.load(SCALE + h * s_scale + offs_m, mask=mask, other=0.0)
    if HAS_BETA:
        scale = tl.load(BETA + h * s_beta).to(scale.dtype) * scale
    if TAU_F64:
        t = scale.to(tl.float64)
    else:
        t = scale.to(tl.float32)
    return t


@triton.jit
def inv_norm_rows(x, EPS2: tl.constexpr, ACC: tl.constexpr):
    """Per-row 1 / sqrt(|x|^2 + eps^2) of a (rows, d) tile, the sum of squares in ACC (fp32 / fp64):
    the same numbers as inv_norm_kernel and reference.l2_normalize."""
    xf = x.to(ACC)
    ss = tl.sum(xf * xf, 1)
    return tl.rsqrt(ss + tl.full(ss.shape, EPS2, ACC))


@triton.jit
def live_list(flag_base, scratch, base, n_cand, fixed, n_mt, n_nt, STEP: tl.constexpr,
              MT: tl.constexpr, NT: tl.constexpr, R: tl.constexpr, C: tl.constexpr, ALONG_M: tl.constexpr,
              CHUNK: tl.constexpr):
    """Writes to scratch[0 : count] the start offsets base + i * STEP (i < n_cand, in order) of the blocks
    whose pair with the block starting at `fixed` holds a survivor (pair_alive's test, CHUNK blocks per
    vector load of the flags), and returns count. ALONG_M: the candidates are query blocks and `fixed` a key
    block's start; else the candidates are key blocks and `fixed` a query block's start."""
    k = tl.arange(0, R * C)
    kr = (k // C)[None, :]
    kc = (k % C)[None, :]
    cnt = tl.sum(tl.zeros([CHUNK], dtype=tl.int32), 0)
    for c0 in range(0, n_cand, CHUNK):
        i = c0 + tl.arange(0, CHUNK)
        start = base + i * STEP
        if ALONG_M:
            rows = (start // MT)[:, None] + kr
            cols = fixed // NT + kc
        else:
            rows = fixed // MT + kr
            cols = (start // NT)[:, None] + kc
        ok = (i < n_cand)[:, None] & (rows < n_mt) & (cols < n_nt)
        alive = tl.max(tl.load(flag_base + rows * n_nt + cols, mask=ok, other=0).to(tl.int32), 1) > 0
        a = alive.to(tl.int32)
        tl.store(scratch + cnt + tl.cumsum(a, 0) - 1, start, mask=alive)
        cnt += tl.sum(a, 0)
    tl.debug_barrier()  # the list is complete before any thread reads it
    return cnt


@triton.jit
def dot_probe_kernel(A, B, C, N: tl.constexpr):
    """C = A @ B for one N x N tile (row-major): attention.interpreter_dot_ok runs it to test whether the
    Triton interpreter computes a dtype's products correctly."""
    r = tl.arange(0, N)
    a = tl.load(A + r[:, None] * N + r[None, :])
    b = tl.load(B + r[:, None] * N + r[None, :])
    tl.store(C + r[:, None] * N + r[None, :], tl.dot(a, b))
