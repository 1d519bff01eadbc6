"""Cross-entropy of a linear head without the full logits: the training loss over a large vocabulary.

    loss = mean over rows with t != ignore_index of  logsumexp(h W^T) - (h W^T)[t]

`F.cross_entropy(lm_head(h).float(), t)` writes the (rows, V) logits, an fp32 copy, the fp32
log-softmax, and the same again backward: with a 50K vocabulary that is the largest activation of a small
model's step and the largest share of its time. Here the rows go through in chunks: each chunk's logits
are one GEMM in the compute dtype, a row pass turns them into the loss and, in place, the gradient of the
mean loss (softmax minus one-hot, over n_valid), and two more GEMMs fold that into dh and dW at once. The
backward only scales the saved gradients by the incoming one. So the logits never exist in full, and
nothing of them is kept for the backward.

The row pass is one Triton kernel on CUDA (tda.ops.triton.cross_entropy), torch ops elsewhere. Under
autocast the GEMMs run in the autocast dtype, as the head's Linear would; fp16 is refused (the gradient,
computed before the loss scaler scales it, would underflow in fp16), as are inputs needing no gradient
for which a plain loss is as cheap.
"""
from __future__ import annotations

import torch

from .validate import linear_compute_dtype

try:  # optional: CPU-only installs work without triton
    from .triton import cross_entropy as fused
except ImportError:
    fused = None

CHUNK_BYTES = 1 << 30  # one chunk's logits: large GEMMs, and a bounded buffer whatever the batch


def supported(h: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether linear_cross_entropy computes in a dtype it takes (fp32, bf16, fp64; not fp16)."""
    return linear_compute_dtype(h, weight) in (torch.float32, torch.bfloat16, torch.float64)


def _row_pass_torch(logits, targets, n_valid, ignore_index: int, grad: bool):
    """The row pass as torch ops (any device): per-row losses in fp32 (fp64 for fp64 logits); with grad,
    logits := d(mean loss)."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = torch.logsumexp(x, dim=-1)
    ignored = targets == ignore_index
    t = torch.where(ignored, 0, targets)
    loss = torch.where(ignored, 0.0, lse - x.gather(1, t[:, None]).squeeze(1))
    if grad:
        g = torch.exp(x - lse[:, None])
        g[torch.arange(len(t), device=t.device), t] -= 1.0
        g *= torch.where(ignored, 0.0, 1.0 / n_valid.to(x.dtype))[:, None]
        logits.copy_(g)
    return loss


def _row_pass(logits, targets, n_valid, ignore_index, grad):
    if logits.is_cuda and fused is not None and logits.dtype in (torch.bfloat16, torch.float32):
        return fused.row_pass(logits, targets, n_valid, ignore_index, grad)
    return _row_pass_torch(logits, targets, n_valid, ignore_index, grad)


def _chunk_rows(V: int, elem: int) -> int:
    return max(256, CHUNK_BYTES // max(1, V * elem) // 256 * 256)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index, chunk_rows, grad):
        dt = linear_compute_dtype(h, weight)
        with torch.autocast(h.device.type, enabled=False):  # the GEMMs below already run in dt (and use out=)
            return _LinearCrossEntropy._forward(ctx, h, weight, targets, ignore_index, chunk_rows, grad, dt)

    @staticmethod
    def _forward(ctx, h, weight, targets, ignore_index, chunk_rows, grad, dt):
        hc, wc = h.to(dt), weight.to(dt)
        R, V = h.shape[0], weight.shape[0]
        n_valid = (targets != ignore_index).sum()
        dh = torch.empty_like(hc) if grad else None
        acc = torch.promote_types(dt, torch.float32)  # dW's sum over chunks and the losses: fp32 at least
        dw = torch.zeros(weight.shape, dtype=acc, device=h.device) if grad else None
        losses = torch.empty(R, dtype=acc, device=h.device)
        step = chunk_rows or _chunk_rows(V, hc.element_size())
        for s in range(0, R, step):
            e = min(R, s + step)
            logits = hc[s:e] @ wc.t()  # (rows, V) in the compute dtype: the chunk's only copy of its logits
            losses[s:e] = _row_pass(logits, targets[s:e], n_valid, ignore_index, grad)
            if grad:  # logits now hold the chunk's gradient
                torch.mm(logits, wc, out=dh[s:e])
                dw += logits.t() @ hc[s:e]
        ctx.save_for_backward(dh, dw)
        ctx.dtypes = h.dtype, weight.dtype
        return losses.sum() / n_valid

    @staticmethod
    def backward(ctx, g):
        dh, dw = ctx.saved_tensors
        dh = (dh * g).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        dw = (dw * g).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """F.cross_entropy(h @ weight.T, targets, ignore_index=ignore_index) (the mean over rows not ignored),
    chunk by chunk: h (rows, C), weight (V, C), targets (rows,) integers. chunk_rows: rows per chunk
    (default: about 1 GiB of logits). Check supported() first."""
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"h must be (rows, C) and weight (V, C), got {tuple(h.shape)} and {tuple(weight.shape)}")
    if targets.shape != h.shape[:1] or targets.dtype.is_floating_point:
        raise ValueError(f"targets must be integers of shape ({h.shape[0]},), got {targets.dtype} "
                         f"{tuple(targets.shape)}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    # gradients are computed in the forward: only where a backward can follow
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(h, weight, targets, ignore_index, chunk_rows, grad)
