"""The row pass of the chunked linear cross-entropy (tda.ops.cross_entropy) as one kernel.

For a chunk of logits (rows, V) in bf16 / fp32 and its targets, one program a row: an online max and
sum of exponentials over V in fp32 gives lse; the row's loss is lse - x[t]; with GRAD, a second read of
the row writes the gradient of the mean loss in place of the logits,

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


@triton.jit(do_not_specialize=["R", "V", "ignore_index"])
def _ce_row_kernel(X, T, LOSS, NVALID, s_x, R, V, ignore_index, BLOCK_V: tl.constexpr, GRAD: tl.constexpr,
                   LANES: tl.constexpr):
    # rows pid, pid + programs, ...: a grid of one program per row, or a persistent grid of a few per SM
    for r in range(tl.program_id(0), R, tl.num_programs(0)):
        row = tl.cast(r, tl.int64)
        base = X + row * s_x
        offs = tl.arange(0, BLOCK_V)
        # the target's logit, read before any warp of this program overwrites the row with its gradient
        t = tl.load(T + row).to(tl.int64)
        ignored = t == ignore_index
        inside = (t >= 0) & (t < V)
        xt = tl.load(base + tl.where(inside, t, 0)).to(tl.float32)
        if LANES:
            # a running max and rescaled sum per lane, reduced across lanes once after the loop: no reduction
            # (and its barriers) per block, for a second exp per logit
            mv = tl.full([BLOCK_V], float("-inf"), tl.float32)
            sv = tl.zeros([BLOCK_V], tl.float32)
            for start in range(0, V, BLOCK_V):
                x = tl.load(base + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
                m_new = tl.maximum(mv, x)
                safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a lane with no logit yet stays at 0
                sv = sv * tl.exp(mv - safe) + tl.exp(x - safe)
                mv = m_new
            m = tl.max(mv, axis=0)
            s = tl.sum(sv * tl.exp(tl.where(mv == float("-inf"), m, mv) - m), axis=0)
        else:
            # running max and rescaled sum over the row's blocks: one exp per logit (one rescale per block)
            m = tl.max(tl.full([BLOCK_V], float("-inf"), tl.float32), axis=0)
            s = tl.sum(tl.zeros([BLOCK_V], tl.float32), axis=0)
            for start in range(0, V, BLOCK_V):
                x = tl.load(base + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
                m_new = tl.maximum(m, tl.max(x, axis=0))  # finite: every block holds at least one logit
                s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
                m = m_new
        lse = m + tl.log(s)
        loss = tl.where(ignored, 0.0, tl.where(inside, lse - xt, float("nan")))
        tl.store(LOSS + row, loss)
        if GRAD:
            tl.debug_barrier()  # every warp has its reads of the row (xt, both passes) done before any writes
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
    """The row kernel's launch: block_v logits per load, num_warps, programs_per_sm (a persistent grid of
    that many programs per SM, each looping over rows; 0: one program per row), and lanes (the first pass
    keeps a max and sum per lane, reduced once per row, instead of reducing every block)."""
    block_v: int = 4096
    num_warps: int = 8
    programs_per_sm: int = 0
    lanes: bool = False


DEFAULT = RowPassConfig()
INTERPRETER = RowPassConfig(block_v=1024, num_warps=8, programs_per_sm=0)


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 2  # the interpreter: a persistent grid of a few programs
    return torch.cuda.get_device_properties(device).multi_processor_count


def row_pass(logits: torch.Tensor, targets: torch.Tensor, n_valid: torch.Tensor, ignore_index: int,
             grad: bool, config: RowPassConfig | None = None) -> torch.Tensor:
    """Per-row losses (fp32) of logits (rows, V) (unit stride along V) against targets (rows,); with grad,
    the logits are overwritten with the mean loss's gradient (n_valid: a one-element tensor, the number of
    rows not ignored across every chunk, read on the device). config: the launch (default: DEFAULT on CUDA)."""
    R, V = logits.shape
    loss = torch.empty(R, dtype=torch.float32, device=logits.device)
    if R:
        cfg = config or (INTERPRETER if logits.device.type == "cpu" else DEFAULT)
        programs = R if not cfg.programs_per_sm else min(R, cfg.programs_per_sm * _sm_count(logits.device))
        _row[(programs,)](logits, targets, loss, n_valid, logits.stride(0), R, V, ignore_index,
                          BLOCK_V=cfg.block_v, GRAD=grad, LANES=cfg.lanes, num_warps=cfg.num_warps)
    return loss
