"""The row pass of the chunked linear cross-entropy (tda.ops.cross_entropy) as one kernel.

For a chunk of logits (rows, V) in bf16 / fp32 and its targets, one program a row: an online max and
sum of exponentials over V in fp32, per lane, gives lse; the row's loss is lse - x[t]; with GRAD, a second
read of the row writes the gradient of the mean loss in place of the logits,

    g_j = (exp(x_j - lse) - [j == t]) / n_valid,

so the chunk's logits buffer becomes its gradient without an fp32 copy. Ignored rows (t == ignore_index)
get loss 0 and a zero gradient; a target outside [0, V) gets a NaN loss, so bad labels show in the loss
instead of reading out of bounds.
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .launch_cache import FastKernel


@triton.jit(do_not_specialize=["V", "ignore_index"])
def _ce_row_kernel(X, T, LOSS, NVALID, s_x, V, ignore_index, BLOCK_V: tl.constexpr, GRAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = X + row * s_x
    offs = tl.arange(0, BLOCK_V)
    # the target's logit, read before any warp of this program overwrites the row with its gradient
    t = tl.load(T + row).to(tl.int64)
    ignored = t == ignore_index
    inside = (t >= 0) & (t < V)
    xt = tl.load(base + tl.where(inside, t, 0)).to(tl.float32)
    # a running max and rescaled sum per lane, reduced across lanes once after the loop: no cross-warp
    # reduction (and its barriers) per block, for a second exp per logit
    mv = tl.full([BLOCK_V], float("-inf"), tl.float32)
    sv = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        x = tl.load(base + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(mv, x)
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a lane with no logit yet keeps a zero sum
        sv = sv * tl.exp(mv - safe) + tl.exp(x - safe)
        mv = m_new
    m = tl.max(mv, axis=0)
    lse = m + tl.log(tl.sum(sv * tl.exp(tl.where(mv == float("-inf"), m, mv) - m), axis=0))
    loss = tl.where(ignored, 0.0, tl.where(inside, lse - xt, float("nan")))
    tl.store(LOSS + row, loss)
    if GRAD:
        tl.debug_barrier()  # every warp's reads of the row (xt, the first pass) are done before any writes
        scale = tl.where(ignored, 0.0, 1.0 / tl.load(NVALID).to(tl.float32))
        # last block first: the blocks read most recently are the likeliest still in L2
        n_blk = tl.cdiv(V, BLOCK_V)
        for i in range(0, n_blk):
            cols = (n_blk - 1 - i) * BLOCK_V + offs
            x = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(cols == t, 1.0, 0.0)) * scale
            tl.store(base + cols, g.to(X.dtype.element_ty), mask=cols < V)


_row = FastKernel(_ce_row_kernel)  # launches without Triton's per-call JIT dispatch (launch_cache.py)


@dataclass(frozen=True)
class RowPassConfig:
    """The row kernel's launch: block_v logits per load and num_warps (one program per row)."""
    block_v: int = 1024
    num_warps: int = 8


# H100, one chunk of 8,192 x 50,304 bf16 logits: 0.85 ms, against 1.69 ms for 4,096 x 8 (bench_cross_entropy.py)
DEFAULT = RowPassConfig(1024, 8)


def row_pass(logits: torch.Tensor, targets: torch.Tensor, n_valid: torch.Tensor, ignore_index: int,
             grad: bool, config: RowPassConfig = DEFAULT) -> torch.Tensor:
    """Per-row losses (fp32) of logits (rows, V) (unit stride along V) against targets (rows,); with grad,
    the logits are overwritten with the mean loss's gradient (n_valid: a one-element tensor, the number of
    rows not ignored across every chunk, read on the device)."""
    R, V = logits.shape
    loss = torch.empty(R, dtype=torch.float32, device=logits.device)
    if R:
        _row[(R,)](logits, targets, loss, n_valid, logits.stride(0), V, ignore_index, BLOCK_V=config.block_v,
                   GRAD=grad, num_warps=config.num_warps)
    return loss
