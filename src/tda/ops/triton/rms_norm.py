"""RMSNorm as one kernel each way: the model's norms (a gain over the last dim) and TDA's per-head norm.

    y = x * r * g,   r = 1 / sqrt(mean(x^2) + eps) over the last dim (D)

computed in fp32 whatever the input dtype (bf16 squares lose the small rows that sparse attention
produces), then stored in the input's dtype. Written as torch ops in fp32 this is a copy up, the norm, the
gain's product and a copy down each way, every one a full pass over the activations; TDA's per-head norm
also reads a transposed view, so its output needs one more copy before the output projection. Here the
forward reads x once and writes y once (and r, one float per row); the backward reads dy, x and r once,
writes dx in x's layout, and writes the gain's gradient as per-program partial sums that torch adds up.

Rows are indexed (a, n, h): x (A, N, H, D) with a gain per (h, d), or a gain (D,) shared by every row
(then H = 1). Any strides in; y is contiguous in (A, N, H, D) order, so a per-head norm of a transposed
(B, N, H, D) view comes out ready for the output projection's reshape.

    dx = r * (dy * g - xhat * mean(dy * g * xhat)),   xhat = x * r;   dg = sum over rows of dy * xhat
"""
import torch
import triton
import triton.language as tl

from .launch_cache import FastKernel
from .rope import MAX_GRID_Y, _dense  # dense: empty_like keeps the strides


@triton.jit
def _program_rows(H, N, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's rows: (row block, a * H + h, a, h, row offsets, column offsets, in-bounds mask)."""
    pid_n = tl.program_id(0)
    ah = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_n < N)[:, None] & (offs_d < D)[None, :]
    return pid_n, ah, (ah // H).to(tl.int64), (ah % H).to(tl.int64), offs_n, offs_d, ok


@triton.jit(do_not_specialize=["H", "N"])  # sizes vary per call (generation): no recompile per size
def _rms_norm_fwd_kernel(X, W, Y, RSTD, s_xa, s_xn, s_xh, s_xd, s_ya, s_yn, s_yh, s_yd, s_wh, H, N,
                         EPS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """One (block of BLOCK_N rows n, one (a, h)) program: Y = X * r * W[h] in fp32; RSTD[a, h, n] = r."""
    pid_n, ah, a, h, offs_n, offs_d, ok = _program_rows(H, N, D, BLOCK_N, BLOCK_D)
    x = tl.load(X + a * s_xa + h * s_xh + offs_n[:, None] * s_xn + offs_d[None, :] * s_xd, mask=ok,
                other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + EPS)
    w = tl.load(W + h * s_wh + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
    y = x * r[:, None] * w[None, :]
    tl.store(Y + a * s_ya + h * s_yh + offs_n[:, None] * s_yn + offs_d[None, :] * s_yd,
             y.to(Y.dtype.element_ty), mask=ok)
    tl.store(RSTD + ah.to(tl.int64) * N + offs_n, r, mask=offs_n < N)


@triton.jit(do_not_specialize=["H", "N"])
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DX, DW, s_ga, s_gn, s_gh, s_gd, s_xa, s_xn, s_xh, s_xd,
                         s_za, s_zn, s_zh, s_zd, s_wh, H, N,
                         D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """The same programs backward: DX (strides s_z*) from DY (s_g*), X and RSTD; DW[pid_n, a, h, :] the
    program's partial sum of dy * xhat over its rows (fp32)."""
    pid_n, ah, a, h, offs_n, offs_d, ok = _program_rows(H, N, D, BLOCK_N, BLOCK_D)
    rows, cols = offs_n[:, None], offs_d[None, :]
    dy = tl.load(DY + a * s_ga + h * s_gh + rows * s_gn + cols * s_gd, mask=ok, other=0.0).to(tl.float32)
    x = tl.load(X + a * s_xa + h * s_xh + rows * s_xn + cols * s_xd, mask=ok, other=0.0).to(tl.float32)
    r = tl.load(RSTD + ah.to(tl.int64) * N + offs_n, mask=offs_n < N, other=0.0)
    w = tl.load(W + h * s_wh + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
    xhat = x * r[:, None]
    g = dy * w[None, :]
    c = tl.sum(g * xhat, axis=1) / D
    dx = (g - xhat * c[:, None]) * r[:, None]
    tl.store(DX + a * s_za + h * s_zh + rows * s_zn + cols * s_zd, dx.to(DX.dtype.element_ty), mask=ok)
    n_ah = tl.num_programs(1)
    tl.store(DW + (pid_n * n_ah + ah).to(tl.int64) * D + offs_d, tl.sum(dy * xhat, axis=0), mask=offs_d < D)


_fwd = FastKernel(_rms_norm_fwd_kernel)  # launches without Triton's per-call JIT dispatch (launch_cache.py)
_bwd = FastKernel(_rms_norm_bwd_kernel)


def _blocks(D: int, device) -> tuple:
    """(BLOCK_D, BLOCK_N, num_warps): about 4K fp32 values a program (8K with 8 warps past D = 256)."""
    block_d = triton.next_power_of_2(D)
    if device.type == "cpu":  # the interpreter: fewer, larger programs run faster
        return block_d, max(1, min(64, 8192 // block_d)), 4
    warps = 8 if block_d >= 512 else 4
    return block_d, max(1, min(64, 1024 * warps // block_d)), warps


def _as_ranh(t: torch.Tensor, per_head: bool) -> tuple:
    """(A, N, H) sizes and (a, n, h, d) strides of t as the kernels index its rows."""
    if per_head:  # (..., H, D): at most two leading dims (A, N)
        lead = t.shape[:-2]
        A, N = (1, 1) if not lead else (1, lead[0]) if len(lead) == 1 else lead
        s = t.stride()
        s_a = s[0] if len(lead) == 2 else 0
        s_n = s[-3] if lead else 0
        return (A, N, t.shape[-2]), (s_a, s_n, s[-2], s[-1])
    lead = t.shape[:-1]
    A, N = (1, lead[0]) if len(lead) == 1 else lead
    s = t.stride()
    return (A, N, 1), (s[0] if len(lead) == 2 else 0, s[-2], 0, s[-1])


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether rms_norm() takes these: x in fp32 / bf16 / fp16 and dense, weight (D,) with x of 2 or 3 dims
    (..., D), or weight (H, D) with x of 3 or 4 dims (..., H, D); the weight contiguous, on x's device;
    leading dim x heads within a grid axis."""
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or not _dense(x):
        return False
    if weight.device != x.device or not weight.is_contiguous() or weight.dtype.is_complex:
        return False
    if weight.dim() == 1:
        ok = x.dim() in (2, 3) and x.shape[-1] == weight.shape[0]
    else:
        ok = weight.dim() == 2 and x.dim() in (3, 4) and tuple(x.shape[-2:]) == tuple(weight.shape)
    # the grid's second axis holds A x H (_as_ranh): batch x heads per head, else the leading dim of 3-D x
    lead = x.shape[0] if x.dim() == weight.dim() + 2 else 1
    return ok and lead * (x.shape[-2] if weight.dim() == 2 else 1) <= MAX_GRID_Y


def _forward(x, weight, eps):
    per_head = weight.dim() == 2
    (A, N, H), sx = _as_ranh(x, per_head)
    D = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rstd = torch.empty((A, H, N), dtype=torch.float32, device=x.device)
    if y.numel():
        _, sy = _as_ranh(y, per_head)
        block_d, block_n, warps = _blocks(D, x.device)
        _fwd[(triton.cdiv(N, block_n), A * H)](
            x, weight, y, rstd, *sx, *sy, D if per_head else 0, H, N,
            EPS=float(eps), D=D, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps)
    return y, rstd


def _backward(dy, x, weight, rstd):
    per_head = weight.dim() == 2
    (A, N, H), sx = _as_ranh(x, per_head)
    D = x.shape[-1]
    dx = torch.empty_like(x)  # x is dense: its strides kept, so the gradient flows back through x's view
    block_d, block_n, warps = _blocks(D, x.device)
    n_blocks = triton.cdiv(N, block_n)
    dw = torch.empty((n_blocks, A, H, D), dtype=torch.float32, device=x.device)
    if dx.numel():
        _, sg = _as_ranh(dy, per_head)
        _, sz = _as_ranh(dx, per_head)
        _bwd[(n_blocks, A * H)](
            dy, x, weight, rstd, dx, dw, *sg, *sx, *sz, D if per_head else 0, H, N,
            D=D, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps)
    else:
        dw.zero_()
    return dx, dw.sum((0, 1)).reshape(weight.shape).to(weight.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = _forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = _backward(dy, x, weight, rstd)
        return (dx if ctx.needs_input_grad[0] else None), (dw if ctx.needs_input_grad[1] else None), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2, -1) + eps) * weight in fp32, returned in x's dtype, contiguous; weight (D,) or
    (H, D) per head (x (..., H, D)). Autograd through x and weight. Check supported() first."""
    return _RMSNorm.apply(x, weight, eps)
