"""A layer's q, k and v projections as one GEMM, with RoPE on q and k in one fused launch, each way.

TDA projects four q/k views and v from the same input: as three nn.Linear calls under autocast that is
three casts of the input to bf16, three GEMMs, and backward three input gradients cast up and summed (the
softmax family: q and k|v, two of each, and k|v's gradient concatenated and transposed into place). Here
x is cast once and multiplied once by the concatenated weight (the layer concatenates its projections'
weights: the parameters and checkpoints stay as they are):

    y = x W^T (+ b) = [q | k | v],   q, k rotated by the RoPE kernel out of y into their own buffers,
    v copied out (so y is freed at once instead of living as long as v does).

The backward builds dY in one buffer (the inverse rotation writes dq and dk straight into its q and k
columns, dv is copied into the rest), then dx = dY W and dW = dY^T x are one GEMM each.
"""
import torch

from ..validate import linear_compute_dtype as compute_dtype  # what nn.Linear computes in
from .rope import MAX_GRID_Y, _rotate


class _ProjectRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, cos, sin, pos, heads, head_dim, dt):
        hq, hk, hv = heads
        B, N, C = x.shape
        D = head_dim
        with torch.autocast(x.device.type, enabled=False):
            xc = x.reshape(B * N, C).to(dt)
            wc = weight.to(dt)
            y = xc @ wc.t() if bias is None else torch.addmm(bias.to(dt), xc, wc.t())
        y = y.view(B, N, -1)
        qi = y[..., :hq * D].view(B, N, hq, D).transpose(1, 2)
        ki = y[..., hq * D:(hq + hk) * D].view(B, N, hk, D).transpose(1, 2)
        q = torch.empty(B, N, hq, D, dtype=dt, device=x.device).transpose(1, 2)
        k = torch.empty(B, N, hk, D, dtype=dt, device=x.device).transpose(1, 2)
        _rotate(qi, cos, sin, 1.0, pos=pos, x2=ki, out=q, out2=k)
        v = y[..., (hq + hk) * D:].contiguous().view(B, N, hv, D).transpose(1, 2)  # a copy: y dies here
        ctx.save_for_backward(xc, weight, cos, sin, pos)
        ctx.meta = heads, D, dt, x.dtype, bias is not None
        return q, k, v

    @staticmethod
    def backward(ctx, dq, dk, dv):
        xc, weight, cos, sin, pos = ctx.saved_tensors
        (hq, hk, hv), D, dt, x_dtype, has_bias = ctx.meta
        B, N = dq.shape[0], dq.shape[2]
        dy = torch.empty(B, N, (hq + hk + hv) * D, dtype=dt, device=xc.device)
        oq = dy[..., :hq * D].view(B, N, hq, D).transpose(1, 2)
        ok = dy[..., hq * D:(hq + hk) * D].view(B, N, hk, D).transpose(1, 2)
        _rotate(dq.to(dt), cos, sin, -1.0, pos=pos, x2=dk.to(dt), out=oq, out2=ok)
        dy[..., (hq + hk) * D:].view(B, N, hv, D).copy_(dv.transpose(1, 2))
        dy2 = dy.view(B * N, -1)
        with torch.autocast(xc.device.type, enabled=False):
            dx = (dy2 @ weight.to(dt)).view(B, N, -1).to(x_dtype) if ctx.needs_input_grad[0] else None
            dw = (dy2.t() @ xc).to(weight.dtype) if ctx.needs_input_grad[1] else None
            acc = torch.promote_types(dt, torch.float32)
            db = dy2.sum(0, dtype=acc).to(weight.dtype) if has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None, None, None, None


def supported(x: torch.Tensor, weight: torch.Tensor, heads: tuple, head_dim: int, cos: torch.Tensor,
              sin: torch.Tensor, positions: torch.Tensor | None = None) -> bool:
    """Whether project_rope() takes these: x (B, N, C), weight ((hq + hk + hv) * head_dim, C) on x's device,
    head_dim a power of two >= 4, a compute dtype of fp64 / fp32 / bf16 / fp16, tables (N, head_dim) in that dtype
    with unit stride along it (or, with positions (B, N) integers, tables covering every position)."""
    D = head_dim
    if x.dim() != 3 or weight.dim() != 2 or weight.shape != (sum(heads) * D, x.shape[2]):
        return False
    if D < 4 or D & (D - 1) or weight.device != x.device:
        return False
    if x.shape[0] * (heads[0] + heads[1]) > MAX_GRID_Y:  # the RoPE launch's grid axis of batch x heads
        return False
    dt = compute_dtype(x, weight)
    if dt not in (torch.float64, torch.float32, torch.bfloat16, torch.float16) or cos.dtype != dt or sin.dtype != dt:
        return False
    if cos.dim() != 2 or cos.shape != sin.shape or cos.shape[1] != D or cos.stride(1) != 1 or sin.stride(1) != 1:
        return False
    if positions is None:
        return cos.shape[0] == x.shape[1]
    return (positions.dtype in (torch.int32, torch.int64) and positions.device == x.device
            and tuple(positions.shape) == tuple(x.shape[:2]))


def project_rope(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, heads: tuple, head_dim: int,
                 cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None = None) -> tuple:
    """(rope(q), rope(k), v) of y = x weight^T (+ bias) = [q | k | v] with heads = (hq, hk, hv) heads of
    head_dim each, as (B, heads, N, head_dim) tensors, in the compute dtype (compute_dtype); autograd through
    x, weight and bias. Check supported() first."""
    return _ProjectRope.apply(x, weight, bias, cos, sin, positions, tuple(heads), head_dim,
                              compute_dtype(x, weight))
