"""The row pass of the chunked linear cross-entropy (tda.ops.cross_entropy) as one kernel.

For a chunk of logits (rows, V) in bf16 / fp32 and its targets, one program a row: an online max and
sum of exponentials over V in fp32 gives lse; the row's loss is lse - x[t]; with GRAD, a second read of
the row writes the gradient of the mean loss in place of the logits,

    g_j = (exp(x_j - lse) - [j == t]) / n_valid,

so the chunk's logits buffer becomes its gradient without an fp32 copy. Ignored rows (t == ignore_index)
get loss 0 and a zero gradient; a target outside [0, V) gets a NaN loss, so bad labels show in the loss
instead of reading out of bounds.
"""
import torch
import triton
import triton.language as tl

from .launch_cache import FastKernel


@triton.jit(do_not_specialize=["V", "ignore_index"])
def _ce_row_kernel(X, T, LOSS, NVALID, s_x, V, ignore_index, BLOCK_V: tl.constexpr, GRAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = X + row * s_x
    offs = tl.arange(0, BLOCK_V)
    # running max and rescaled sum over the row's blocks: one exp per logit (the rescale is one per block)
    m = tl.max(tl.full([BLOCK_V], float("-inf"), tl.float32), axis=0)
    s = tl.sum(tl.zeros([BLOCK_V], tl.float32), axis=0)
    for start in range(0, V, BLOCK_V):
        x = tl.load(base + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))  # finite: every block holds at least one logit
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    t = tl.load(T + row).to(tl.int64)
    ignored = t == ignore_index
    inside = (t >= 0) & (t < V)
    xt = tl.load(base + tl.where(inside, t, 0)).to(tl.float32)
    loss = tl.where(ignored, 0.0, tl.where(inside, lse - xt, float("nan")))
    tl.store(LOSS + row, loss)
    if GRAD:
        scale = tl.where(ignored, 0.0, 1.0 / tl.load(NVALID).to(tl.float32))
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            x = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(cols == t, 1.0, 0.0)) * scale
            tl.store(base + cols, g.to(X.dtype.element_ty), mask=cols < V)


_row = FastKernel(_ce_row_kernel)  # launches without Triton's per-call JIT dispatch (launch_cache.py)


def row_pass(logits: torch.Tensor, targets: torch.Tensor, n_valid: torch.Tensor, ignore_index: int,
             grad: bool) -> torch.Tensor:
    """Per-row losses (fp32) of logits (rows, V) (unit stride along V) against targets (rows,); with grad,
    the logits are overwritten with the mean loss's gradient (n_valid: a one-element tensor, the number of
    rows not ignored across every chunk, read on the device)."""
    R, V = logits.shape
    loss = torch.empty(R, dtype=torch.float32, device=logits.device)
    if R:
        block = 1024 if logits.device.type == "cpu" else 4096
        _row[(R,)](logits, targets, loss, n_valid, logits.stride(0), V, ignore_index, BLOCK_V=block, GRAD=grad,
                   num_warps=8)
    return loss
