"""Rotary position embedding (rotate-half form) as one kernel each way.

    y = x * cos + rotate_half(x) * sin,   rotate_half(x) = (-x2, x1) for the halves x1, x2 of the last dim

with the cos/sin tables of rotate-half RoPE (each row's two halves equal). Written as torch ops this is five
elementwise kernels forward (neg, cat, two products, a sum) and more backward, each a full pass over q or k:
in the GPU comparison model's eager TDA step they cost more than attention itself (docs/kernels.md). Here
each direction reads x (or dy) once and writes once, computing in fp32 (fp64 for fp64 inputs). The backward
is the inverse rotation, dx = dy * cos - rotate_half(dy * sin): the same kernel with sin negated.

Any strides in; the output has x's layout (x's own strides where x is dense; else x's order of dims,
compacted), and so does the gradient dx whatever dy's: a transposed head view stays a transposed view, so
the gradient flows back through split_heads' view without a copy. A gapped view (softmax's k, half of the
heads of one k|v projection) is read in place and its rotation written dense.

Rows sit at positions 0 .. N - 1 of the tables, or, given `positions` (B, N) (packed documents: every
document restarts at 0), at those rows of the tables, read per batch row in the kernel (no gathered copy
of the tables). `rope_pair` rotates two tensors of the same rows (a layer's q and k) in one launch each way.
"""
import torch
import triton
import triton.language as tl

from .launch_cache import FastKernel


@triton.jit(do_not_specialize=["H", "H2", "N"])  # sizes vary per call (generation): no recompile per size
def _rope_kernel(X, COS, SIN, Y, POS, X2, Y2, s_xb, s_xh, s_xn, s_xd, s_yb, s_yh, s_yn, s_yd,
                 s_x2b, s_x2h, s_x2n, s_x2d, s_y2b, s_y2h, s_y2n, s_y2d, s_cn, s_sn, s_pb, s_pn, H, H2, N,
                 SIGN: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr, F64: tl.constexpr,
                 HAS_POS: tl.constexpr, TWO: tl.constexpr):
    """One (block of BLOCK_N rows, batch * head) program: y = rotate(x), SIGN = -1 rotates backwards; in fp32
    (fp64 for fp64 inputs). HAS_POS: row n of batch b takes table row POS[b, n], else row n. TWO: a second
    tensor X2 -> Y2 of H2 heads (the same batch, rows and positions) in the same launch, its heads after
    X's in each batch row of the grid."""
    acc = tl.float64 if F64 else tl.float32
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    n_h = H + H2 if TWO else H
    b = (bh // n_h).to(tl.int64)
    h = (bh % n_h).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HALF)
    ok = (offs_n < N)[:, None]
    # both halves' pointers, in and out (blocks of pointers: the same type whichever tensor a program takes)
    xp = X + b * s_xb + h * s_xh + offs_n[:, None] * s_xn + offs_d[None, :] * s_xd
    xq = xp + HALF * s_xd
    yp = Y + b * s_yb + h * s_yh + offs_n[:, None] * s_yn + offs_d[None, :] * s_yd
    yq = yp + HALF * s_yd
    if TWO:
        if h >= H:
            xp = X2 + b * s_x2b + (h - H) * s_x2h + offs_n[:, None] * s_x2n + offs_d[None, :] * s_x2d
            xq = xp + HALF * s_x2d
            yp = Y2 + b * s_y2b + (h - H) * s_y2h + offs_n[:, None] * s_y2n + offs_d[None, :] * s_y2d
            yq = yp + HALF * s_y2d
    x1 = tl.load(xp, mask=ok, other=0.0).to(acc)
    x2 = tl.load(xq, mask=ok, other=0.0).to(acc)
    if HAS_POS:
        rows = tl.load(POS + b * s_pb + offs_n * s_pn, mask=offs_n < N, other=0).to(tl.int64)
    else:
        rows = offs_n
    # the tables' halves are equal: the first half serves both
    c = tl.load(COS + rows[:, None] * s_cn + offs_d[None, :], mask=ok, other=0.0).to(acc)
    s = tl.load(SIN + rows[:, None] * s_sn + offs_d[None, :], mask=ok, other=0.0).to(acc) * SIGN
    tl.store(yp, (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=ok)
    tl.store(yq, (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=ok)


MAX_GRID_Y = 65535  # CUDA's limit on a grid's second axis, which holds batch x heads here

_rope = FastKernel(_rope_kernel)  # a launch without Triton's per-call JIT dispatch (launch.py)


def _rotate(x, cos, sin, sign, stride=None, pos=None, x2=None, stride2=None, out=None, out2=None):
    """rotate(x) into a new tensor with the given strides (default: layout(x)), or into `out` (any strides);
    with x2 (the same batch and rows, its own heads), rotate(x2) too, in the same launch (into out2 where
    given): returns (y, y2)."""
    B, H, N, D = x.shape
    y = out if out is not None else \
        torch.empty_strided(x.shape, stride or layout(x), dtype=x.dtype, device=x.device)
    two = x2 is not None
    y2 = None
    if two:
        y2 = out2 if out2 is not None else \
            torch.empty_strided(x2.shape, stride2 or layout(x2), dtype=x2.dtype, device=x2.device)
    H2 = x2.shape[1] if two else 0
    if B * N * D and H + H2:
        BLOCK_N = 16 if x.device.type == "cpu" else 32
        s_pb, s_pn = pos.stride() if pos is not None else (0, 0)
        xs, ys = (x2, y2) if two else (x, y)  # a stand-in second tensor, never read
        _rope[(-(-N // BLOCK_N), B * (H + H2))](
            x, cos, sin, y, pos if pos is not None else cos, xs, ys, *x.stride(), *y.stride(), *xs.stride(),
            *ys.stride(), cos.stride(0), sin.stride(0), s_pb, s_pn, H, H2, N, SIGN=sign, HALF=D // 2,
            BLOCK_N=BLOCK_N, F64=x.dtype == torch.float64, HAS_POS=pos is not None, TWO=two, num_warps=4)
    return (y, y2) if two else y


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, pos=None):
        ctx.save_for_backward(cos, sin, pos)
        ctx.x_stride = layout(x)
        return _rotate(x, cos, sin, 1.0, ctx.x_stride, pos=pos)

    @staticmethod
    def backward(ctx, dy):
        cos, sin, pos = ctx.saved_tensors
        # dx in x's layout, whatever dy's: a head view's gradient then flows back through the view (and the
        # projection's matmul) without a copy
        return _rotate(dy, cos, sin, -1.0, ctx.x_stride, pos), None, None, None


class _RopePair(torch.autograd.Function):
    """Two tensors of the same batch and rows (q and k) rotated in one launch each way."""

    @staticmethod
    def forward(ctx, x, x2, cos, sin, pos=None):
        ctx.save_for_backward(cos, sin, pos)
        ctx.strides = layout(x), layout(x2)
        return _rotate(x, cos, sin, 1.0, ctx.strides[0], pos=pos, x2=x2, stride2=ctx.strides[1])

    @staticmethod
    def backward(ctx, dy, dy2):
        cos, sin, pos = ctx.saved_tensors
        dx, dx2 = _rotate(dy, cos, sin, -1.0, ctx.strides[0], pos, x2=dy2, stride2=ctx.strides[1])
        return dx, dx2, None, None, None


def layout(x: torch.Tensor) -> tuple:
    """Strides of a dense tensor shaped like x with x's order of dims (by stride, largest first; broadcast and
    size-1 dims outermost): x's own strides where x is dense, else x's layout compacted (a gapped or expanded
    view's output and gradient)."""
    if _dense(x):
        return x.stride()
    order = sorted(range(x.dim()), key=lambda i: (x.stride(i) == 0 or x.shape[i] == 1, x.stride(i), -i), reverse=True)
    out, step = [0] * x.dim(), 1
    for i in reversed(order):
        out[i] = step
        step *= x.shape[i]
    return tuple(out)


def _dense(x: torch.Tensor) -> bool:
    """Non-overlapping and dense: some order of the dims makes x contiguous (then layout() keeps x's
    strides)."""
    expected = 1
    for size, stride in sorted((d for d in zip(x.shape, x.stride()) if d[0] != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def supported(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None = None) -> bool:
    """Whether rope() takes these: x (B, H, N, D) with D a power of two >= 4 (Triton blocks), any strides,
    tables (N, D) with unit stride along D; with positions, an integer (B, N) tensor on x's device and tables
    of any number of rows (every position must be a row of them: the caller's promise, not checked here)."""
    D = x.shape[-1] if x.dim() == 4 else 0
    if D and x.shape[0] * x.shape[1] > MAX_GRID_Y:  # the grid's second axis (a pair launch checks its sum)
        return False
    if not (D >= 4 and D & (D - 1) == 0 and cos.shape == sin.shape and cos.dim() == 2
            and cos.shape[1] == D and cos.stride(1) == 1 and sin.stride(1) == 1):
        return False
    if positions is None:
        return cos.shape[0] == x.shape[2]
    return (positions.dtype in (torch.int32, torch.int64) and positions.device == x.device
            and tuple(positions.shape) == (x.shape[0], x.shape[2]))


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
         positions: torch.Tensor | None = None) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin for x (B, H, N, D) and tables (N, D), with autograd through x (the
    tables are constants); with positions (B, N), row n of batch b rotated by table row positions[b, n].
    Check supported() first."""
    return _Rope.apply(x, cos, sin, positions)


def pair_supported(x: torch.Tensor, x2: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   positions: torch.Tensor | None = None) -> bool:
    """Whether rope_pair() takes these: supported() for each, and their heads together within the grid."""
    return (supported(x, cos, sin, positions) and supported(x2, cos, sin, positions)
            and x.shape[0] * (x.shape[1] + x2.shape[1]) <= MAX_GRID_Y)


def rope_pair(x: torch.Tensor, x2: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              positions: torch.Tensor | None = None) -> tuple:
    """(rope(x), rope(x2)) in one launch each way, for x and x2 of the same batch and rows (q and k; heads
    may differ) and the same dtype. Check pair_supported() first."""
    return _RopePair.apply(x, x2, cos, sin, positions)
