"""Entry points of the fused kernels: `tda`, `tra`, `unsupported_reason` (called by tda.ops dispatch).

Semantics are those of tda.ops.reference (see its docstring). The l2 normalisation of q/k is fused
(normalize_qk=True): the kernels get the raw q/k and scale the raw dot products by fp32 inverse norms --
rq (T, B, H, M) computed and stored by the forward kernel itself, rk (T, B, Hk, N) by one small pre-pass
launch (common.inv_norm_kernel) -- O(N), kept for the backward, whose epilogues apply the normalisation's
exact backward. The row thresholds tau_i = beta_h * scale_i, scale_i = sqrt(2 max(log((pos+1)/kappa), 0) / d)
(reference.tau), are formed inside the kernels from beta and a cached scale vector, and the dq kernel
returns each row's dbeta share, so a call runs no PyTorch kernels besides allocations and one final
reduction: at short N the per-call host work, not the GPU, sets the time. In eager mode the launches go
through a plain autograd.Function; under torch.compile through the torch custom ops
`tda::threshold_attention_fwd` / `_bwd` (opaque: no graph break), with tau (H, M) formed in torch.

Forward: tda_fwd_kernel (fwd.py) also records, per (query block, key block), whether any exceedance
survived; the backward (bwd.py; one launch, dK/dV and dQ programs in one grid) skips the empty pairs.
A call that needs no gradient (no_grad, or no input requiring grad) takes the inference forward instead:
no autograd node, no flags, no stored norms.
Block configs depend on the head dim and the key length (_configs; BY_LENGTH = False: the long-key ones).
Where the table uses TMA loads (d = 64 past 4K keys, on compute capability 9.0+), the forward builds tensor
descriptors in the kernel, whose scratch comes from Triton's allocator: if the calling context has none set,
the first such call sets torch's caching allocator (triton.set_allocator).
"""

import contextlib
import os
import weakref
from typing import Optional

import torch
import triton

from .. import reference
from ..validate import _check_scalar_param, check_inputs
from .bwd import tda_bwd_dkdv_kernel, tda_bwd_dq_kernel, tda_bwd_kernel
from .common import dot_probe_kernel, inv_norm_kernel
from .fwd import tda_fwd_kernel
from .launch import FastKernel

HEAD_DIMS = (16, 32, 64, 128)
# the kernels behind launch caches (launch.py): at short N the host's per-launch work sets the time
_inv_norm = FastKernel(inv_norm_kernel)
_fwd = FastKernel(tda_fwd_kernel)
_dkdv = FastKernel(tda_bwd_dkdv_kernel)
_dq = FastKernel(tda_bwd_dq_kernel)
_bwd = FastKernel(tda_bwd_kernel)
_EPS2 = reference.NORM_EPS * reference.NORM_EPS
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Block sizes: (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel. Tests and benchmarks may override
# them through `set_config` (e.g. small tiles so that tiny interpreter shapes span several blocks).
_OVERRIDE: dict = {}
# Forward handling of survivor-free blocks: 0 accumulate anyway, 1 skip the V load and the product,
# 2 load V (keeps it in the software pipeline) but skip the product, 3 no survivor test at all (every
# flag set, so the backward skips nothing either: for measuring what the test costs). Backward:
# PREFETCH loads a block pair's q/dO (dK/dV kernel) or k/v (dQ kernel) before testing its flag.
# Defaults are the fastest on an H200 (docs/benchmarks.md).
SKIP_EMPTY = 1
PREFETCH = False
# SCREEN: the forward first tests each unmasked pair for a possible survivor with one fused multiply-add
# per score (no exceedance, power or difference), and only pairs that pass take the exact path
SCREEN = True
# MERGED_BWD: the backward's dK/dV and dQ programs in one launch (bwd.tda_bwd_kernel) whenever their
# configs agree on warps and stages; False: two launches
MERGED_BWD = True
# HEAVY_FIRST: the forward and dQ grids run query blocks last-to-first (causal: the last blocks see the most
# keys), so the lightest programs fill the grid's tail
HEAVY_FIRST = True
# FWD_GROUP / BWD_GROUP: the forward's and the one-launch backward's programs start in sections of this many
# heads, heaviest blocks first across a section's heads (common.grouped_order), rather than head by head (1), whose
# last head's heavy blocks start late and run on alone at the grid's end (a greedy schedule of 16 heads x 64
# blocks on 132 SMs, simulated: 11% over the ideal makespan; sections of 4 heads: 0.1%). Sections rather than
# every head at once keep the keys (queries) the running programs read few enough for L2. None: per the block
# table (_configs' "group": (forward, backward)).
FWD_GROUP = None
BWD_GROUP = None
ALL_HEADS = 1 << 20  # a section as large as any grid: every head at once
# LISTS: each backward program first compacts the live blocks of its unmasked stage (from the survivor
# flags, LIST_CHUNK per vector load) into its row of an int32 scratch buffer, then loops over that list with
# no test in the loop: no serial flag load per empty block, and loads the compiler can pipeline. False: the
# loop visits every block and tests its flag. None: per the block table (_configs' "lists", a pair: for the
# dK/dV programs, for the dQ programs).
LISTS = None
LIST_CHUNK = 64
# LIST_ROW: a program's scratch row holds at most this many entries; a program with more candidate blocks
# compacts and visits them LIST_ROW at a time, so the scratch grows as O(N) (programs x LIST_ROW), not O(N^2)
LIST_ROW = 256
# SCREEN_HAT (with SCREEN and fused normalisation): the key-norm pre-pass also writes the unit keys, rounded to
# the inputs' dtype, and the forward's screen scores them (no per-key norm in its loop: the probe in
# docs/benchmarks.md measured those loads at 0.14-0.40x SDPA's forward); without UNIT_KEYS, pairs that pass
# recompute the exact scores from the raw keys, so outputs and gradients are unchanged. Costs the unit keys'
# memory during the forward (freed before the backward). None: per the block table (_configs' "unit_keys").
SCREEN_HAT = None
# UNIT_KEYS (with SCREEN_HAT): the unmasked pairs' exact path takes its scores from the unit keys too,
# s = (q . round(k^)) rq -- the reference's own order in the input dtype (reference.l2_normalize rounds k^
# to it) -- so passing pairs load no raw keys or norms and no score is computed twice. The output moves by
# k^'s rounding (half an ulp, 2^-8 relative, in bf16: below the reference's own low-precision error); the
# backward is unchanged (raw keys), its flags the screen's with the margin, a superset of its survivors (it
# visits a few more pairs: +2-10%). Inference needs no flags, so its screen runs without the margin.
# None: per the block table (bf16/fp16: training past 4K keys, inference wherever it screens; forward -8 to
# -25% at 4K-16K, docs/benchmarks.md). At 4K keys a no-grad call and a training call therefore differ by
# that rounding.
UNIT_KEYS = None
# ROW_SCREEN: the inference forward (no flags to write) takes the screen's decision from each row's maximum
# score against its threshold, a row reduction per view, rather than from the tile of differences -- the same
# decisions, so the same output. The probe (docs/benchmarks.md) put the tile's reduction at ~0.1x SDPA's
# forward. None: per the block table (_configs' "row_screen": bf16/fp16, where it measured -4 to -6% at
# d = 128, 4K-16K, and -0 to -4% at d = 64 on the thirteenth session's forward (register cap, TMA, sections of
# heads; before those it measured +8 to +11% there), docs/results/kernels/row-screen/, .../fourteenth/).
ROW_SCREEN = None
# TMA: the forward's unmasked stage loads tiles through tensor descriptors (Hopper's copy engine, straight to
# shared memory, no per-thread addresses in registers): 1 the unit keys (with SCREEN_HAT), 2 the values too
# (where their layout allows: unit inner stride, 16-byte aligned rows and heads; else 1), 0 neither. None:
# per the block table (_configs' "tma": 2 at d = 64 past 4K keys, where with the register cap below it
# measured -2 to -7%; alone it measured slower, docs/benchmarks.md). Needs a Triton allocator for the
# descriptors' scratch (_ensure_allocator).
TMA = None
# MASK_SCREEN (with SCREEN): the forward's masked stage (the diagonal key blocks and the ragged tail) is screened
# like the unmasked one -- with the unit keys where SCREEN_HAT is on -- its hidden scores left out of the
# screen, so only its pairs that pass take the exact path (else every masked pair does). None: per the block
# table (_configs' "mask_screen", (training, inference); on where it is not given).
MASK_SCREEN = None
# FWD_MAXNREG: a register cap (Triton's maxnreg) for the forward's launches; 0 none. None: per the block table
# (_configs' "maxnreg": 168 at d = 64, which fits three 4-warp programs per SM instead of two: -5 to -12%)
FWD_MAXNREG = None
# BWD_MAXNREG: a register cap for the backward's launches; 0 none. None: per the block table (_configs'
# "bwd_maxnreg": 168 at d = 64 from 1K to 4K keys, whose 64 x 32 blocks then run three programs per SM: -5
# to -6% backward; with the 64 x 64 blocks of other lengths, or at d = 128, the spills made it far slower)
BWD_MAXNREG = None


# the unit keys' rounding (half an ulp, relative) and the fp32 (fp64) accumulation's unit roundoff
_HAT_ROUND = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24,
              torch.float64: 2.0 ** -53}


def _hat_delta(dtype: torch.dtype, D: int) -> float:
    """SCREEN_HAT's margin in cosine units. With unit q^ and k^ (|.| <= 1) the screen's q . round(k^) differs
    from the exact path's (q . k) rq rk by at most |k^ - round(k^)| (u_k) plus both dot products' rounding
    ((d + 3) u each, u the accumulation's unit roundoff); this takes twice the latter, u taken as 2^-23 for
    fp32 accumulation (tensor cores may truncate), so a pair the screen drops has no survivor."""
    u = 2.0 ** -52 if dtype == torch.float64 else 2.0 ** -23
    return _HAT_ROUND[dtype] + (4 * D + 16) * u


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # triton.cdiv is a jit function: microseconds of host work per call


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# BY_LENGTH: block configs depend on the key length N (see _configs); False uses the long-sequence configs
# at every N (the GPU check uses it to reach them with short inputs)
BY_LENGTH = True
# CONFIG_LENGTH: with BY_LENGTH, the configs of this key length instead of the call's (None: the call's); the GPU
# check uses it to reach the mid-length configs (e.g. 4K's capped backward) with short inputs
CONFIG_LENGTH = None


def set_config(**kw):
    """Override block configs: set_config(fwd=(BM, BN, warps, stages), dkdv=..., dq=..., flags=(FM, FN),
    infer=(BM, BN, warps, stages, test), lists=bool or (dkdv, dq), unit_keys=bool, row_screen=bool,
    tma=0/1/2, maxnreg=int, bwd_maxnreg=int); no args resets.
    flags: the grain of the forward's survivor flags (dividing the forward block; default: per head dim in
    _configs, else the block itself) -- finer flags let the backward skip more of its smaller blocks.
    infer: the forward with no backward to follow; test False runs it without any survivor test (the PV
    product on every visited pair). lists: whether the dK/dV and the dQ programs loop over compacted
    live-block lists (LISTS). unit_keys: whether the forward scores the unit keys (SCREEN_HAT and
    UNIT_KEYS, where those switches are None): bool or (training, inference). row_screen: whether the
    inference forward's screen decides from row maxima (ROW_SCREEN, where that switch is None). tma, maxnreg:
    the forward's descriptor loads and register cap (TMA, FWD_MAXNREG, where None): int or (training,
    inference). bwd_maxnreg: the backward's register cap (BWD_MAXNREG, where None). mask_screen: whether the
    forward screens its masked stage (MASK_SCREEN, where None): bool or (training, inference)."""
    _OVERRIDE.clear()
    _OVERRIDE.update({k: (v if isinstance(v, int) else tuple(v)) for k, v in kw.items() if v is not None})
    _CFG_CACHE.clear()


_CFG_CACHE: dict = {}  # _configs' results (a few microseconds of dict building per call otherwise)


def _configs(D: int, dtype: torch.dtype, two_views: bool, N: Optional[int] = None) -> dict:
    """Block configs for head dim D and key length N (None: long sequences), cached: callers must not
    modify the dict. The forward and the backward of one call must agree on the flags' grain, so both pass
    the same N (the key length)."""
    if CONFIG_LENGTH is not None and N is not None:
        N = int(CONFIG_LENGTH)
    key = (D, dtype, two_views, N, BY_LENGTH, _interpreting())
    cfg = _CFG_CACHE.get(key)
    if cfg is None:
        if len(_CFG_CACHE) > 256:
            _CFG_CACHE.clear()
        cfg = _CFG_CACHE[key] = _make_configs(D, dtype, two_views, N)
    return cfg


def _make_configs(D: int, dtype: torch.dtype, two_views: bool, N: Optional[int]) -> dict:
    """_configs, uncached.

    Chosen by benchmarks/sweep_modes.py on an H200 (kernel-only time; docs/benchmarks.md). Short keys: most
    pairs hold a survivor there (tau is low for early rows), so smaller forward blocks with flags at block
    grain win, and the inference forward runs faster without any survivor test."""
    n = N if (N is not None and BY_LENGTH) else 1 << 62
    if _interpreting():
        # sections of 3 heads: the tests' 4-8 heads then end on a short section (common.grouped_order)
        cfg = {"fwd": (16, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1), "group": (3, 3)}
    elif dtype == torch.float32:
        cfg = {"fwd": (64, 32, 4, 2), "dkdv": (32, 64, 4, 2), "dq": (64, 32, 4, 2)}
    elif D <= 64:
        cfg = {"fwd": (64, 64, 4, 3), "dkdv": (64, 64, 4, 2), "dq": (64, 64, 4, 2), "flags": (64, 64)}
        if n <= 4096:
            # up to 4K keys: flags at 64 x 32 with backward blocks to match skip more of the denser rows
            # (-8% fwd+bwd kernels on planted 4K, -10% random; docs/results/kernels/sweep-bwd/grain/)
            cfg.update(flags=(64, 32), dkdv=(64, 32, 4, 2), dq=(64, 32, 4, 2))
        if n <= 1024:
            # 1K: dK/dV at 64 x 64 and no lists (planted 1K: 0.235 against 0.266 ms backward with the above)
            cfg.update(fwd=(64, 32, 4, 3), dkdv=(64, 64, 4, 2), lists=(False, False))
        if n <= 2048:
            cfg.update(infer=(64, 32, 4, 3, False))
    else:
        # the inference forward with 4 stages past 2K keys: -0 to -2.4% against 3 (planted 4K-16K), ~0 on random
        # inputs; the training forward keeps 3 (docs/results/kernels/fourteenth/)
        cfg = {"fwd": (128, 64, 8, 3), "dkdv": (64, 32, 4, 2), "dq": (64, 32, 4, 2), "flags": (32, 32),
               "infer": (128, 64, 8, 4, True)}
        if n <= 4096:
            cfg.update(fwd=(64, 32, 4, 3), flags=(64, 32), infer=(128, 64, 8, 4 if n > 2048 else 3, n > 2048))
    if dtype != torch.float32 and not _interpreting():
        # (training, inference): the forward scores the unit keys (SCREEN_HAT + UNIT_KEYS) past 4K keys in
        # training (fwd+bwd kernels -1 to -18% at 8K-16K; at 4K even, the backward paying for the margin's
        # flags) and wherever the inference forward screens (-8 to -15% at 4K; docs/results/kernels/unit-keys/)
        cfg["unit_keys"] = (n > 4096, True)
        cfg["row_screen"] = True  # the inference forward's screen from row maxima (ROW_SCREEN)
        # (training, inference): the forward screens its masked stage (MASK_SCREEN): -3 to -5% training forward
        # at d = 128 and past 4K keys, -1 to -6% inference; the d = 64 training forward up to 4K keys, with its
        # register cap, measured 7% slower (docs/results/kernels/mask-screen/)
        cfg["mask_screen"] = (D > 64 or n > 4096, True)
        # (forward, backward) heads per section of the program order (FWD_GROUP, BWD_GROUP): the forward -3 to -9%
        # at 4K-8K keys, ~0 at 16K, and at 1K (every head at once, ALL_HEADS: whose keys all fit in L2) -9 to
        # -17%; larger sections, or any in the backward, measured slower past 4K keys or at d = 128 (L2),
        # docs/results/kernels/group/
        cfg["group"] = (ALL_HEADS if n <= 1024 else 8 if D <= 64 else 4 if n <= 4096 else 2, 1)
        if D <= 64 and n > 1024:
            # (training, inference) forward: 168 registers fit three 4-warp 64 x 64 programs per SM (two at the
            # ~200 they take uncapped); with it, TMA loads pay past 4K keys (docs/results/kernels/tma/)
            cfg["maxnreg"] = (168, 168)
            cfg["tma"] = (2, 2) if n > 4096 else (0, 0)
            if n <= 4096:  # the backward's 64 x 32 blocks capped too (three programs per SM)
                cfg["bwd_maxnreg"] = 168
    if "fwd" in _OVERRIDE or "flags" in _OVERRIDE:  # an overridden forward applies to both uses
        cfg.pop("infer", None)
        if "fwd" in _OVERRIDE:
            cfg.pop("flags", None)
    cfg.update(_OVERRIDE)
    cfg.setdefault("infer", (*cfg["fwd"], True))
    lists = cfg.setdefault("lists", (True, True))
    if isinstance(lists, bool):  # set_config(lists=True): both kinds of program
        cfg["lists"] = (lists, lists)
    for key in ("unit_keys", "tma", "maxnreg", "mask_screen"):  # set_config(tma=2, ...): training and inference
        if isinstance(cfg.get(key), int):
            cfg[key] = (cfg[key], cfg[key])
    BM, BN = cfg["fwd"][:2]
    FM, FN = cfg.setdefault("flags", (BM, BN))
    if BM % FM or BN % FN:
        raise ValueError(f"flags grain {(FM, FN)} must divide the forward block {(BM, BN)}")
    return cfg


def _p_mode(p: float) -> int:
    return int(p) if p in (1.0, 2.0, 3.0) else 0


def _prec(dtype: torch.dtype) -> str:
    # fp32/fp64 inputs get exact products: the reference in fp32 does not use tf32 either
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _strides(t: Optional[torch.Tensor], like: torch.Tensor):
    return tuple((t if t is not None else like).stride())


def unsupported_reason(q, k, v, p) -> Optional[str]:
    """None if the fused kernel can run a call with these tensors, else why not (in words)."""
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return None  # let argument validation name the culprit
    if (q.is_cuda and q.dtype in _DTYPES and q.dim() == 4 and v.dim() == 4 and q.shape[-1] in HEAD_DIMS
            and v.shape[-1] in HEAD_DIMS):
        return None  # the common case, decided without the environment look-ups below
    if q.device.type != "cuda" and not _interpreting():
        return f"tensors are on {q.device.type}; the Triton kernel needs CUDA (or TRITON_INTERPRET=1)"
    dtypes = _DTYPES + ((torch.float64,) if _interpreting() else ())
    if q.dtype not in dtypes:
        return f"dtype {q.dtype} not in {tuple(str(d) for d in dtypes)}"
    if _interpreting() and q.dtype in (torch.float16, torch.bfloat16) and not interpreter_dot_ok(q.dtype):
        return (f"this Triton's interpreter ({triton.__version__}) computes {q.dtype} products wrongly; "
                f"on the CPU pass float32 or float64 (or use backend='reference')")
    if q.dim() == 4 and q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} not in {HEAD_DIMS}"
    if v.dim() == 4 and v.shape[-1] not in HEAD_DIMS:
        return f"value head dim {v.shape[-1]} not in {HEAD_DIMS}"
    return None


_DOT_OK: dict = {}


@torch.compiler.assume_constant_result  # under torch.compile: probed eagerly once, not traced
def interpreter_dot_ok(dtype: torch.dtype) -> bool:
    """Whether the Triton interpreter multiplies `dtype` tiles correctly (once per dtype: a 16 x 16 tl.dot
    against torch). Triton 3.9's does not for bfloat16: it multiplies bf16's raw bit patterns (values off by
    ~1e10; triton-lang/triton#11584, unsupported upstream), so a bf16 call under TRITON_INTERPRET=1 is
    refused rather than answered with garbage."""
    ok = _DOT_OK.get(dtype)
    if ok is None:
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(16, 16, generator=g).to(dtype) for _ in range(2))
        c = torch.empty(16, 16)
        dot_probe_kernel[(1,)](a, b, c, N=16)
        want = a.float() @ b.float()
        ok = _DOT_OK[dtype] = bool(torch.allclose(c, want, rtol=1e-2, atol=1e-2))
    return ok


# ---------------------------------------------------------------------------------------------------
# launchers (the caller sets the CUDA device: _on_device)

def _on_device(t):
    """torch.cuda.device(t.device) only where it differs from the current device (entering the context
    costs a few microseconds, a large share of a small call)."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _inv_norms(x1, x2, hat=False):
    """(T, B, H, M) inverse norms 1 / sqrt(|x|^2 + NORM_EPS^2) of x1 (and x2, same shape), T = 1 or 2:
    fp32, fp64 for fp64 inputs; the same numbers as reference.l2_normalize's. hat: returns (norms, unit
    rows), the unit rows x * norm in x's dtype, contiguous (T, B, H, M, D), for the SCREEN_HAT screen."""
    B, H, M, D = x1.shape
    two = x2 is not None
    r = torch.empty((2 if two else 1, B, H, M), device=x1.device, dtype=_norm_dtype(x1))
    xh = torch.empty((2 if two else 1, B, H, M, D), device=x1.device, dtype=x1.dtype) if hat else None
    rows = B * H * M
    if rows > 0:
        BR = 64 if D <= 64 else 32
        _inv_norm[(_cdiv(rows, BR), 2 if two else 1)](
            x1, x2 if two else x1, r, xh if hat else r, *x1.stride(), *_strides(x2, x1), H, M, rows,
            EPS2=_EPS2, TWO=two, HEAD_D=D, BLOCK_R=BR, WRITE_HAT=hat, num_warps=4)
    return (r, xh) if hat else r


def _tma_rows_ok(t) -> bool:
    """Whether every head of t (B, H, N, D) can be read through a tensor descriptor: unit inner stride, and
    16-byte aligned base, rows and heads (TMA's requirements)."""
    e = t.element_size()
    return (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
            and all((st * e) % 16 == 0 for st in t.stride()[:-1]))


_TMA_OK: dict = {}


def _tma_device_ok(t) -> bool:
    """Whether t's device has TMA (compute capability 9.0 or newer) and this Triton builds tensor descriptors
    in kernels; under the interpreter, whether the descriptors exist (they run there on any CPU). Cached per
    device."""
    if not hasattr(triton.language, "make_tensor_descriptor"):
        return False
    if not t.is_cuda:
        return True
    ok = _TMA_OK.get(t.device.index)
    if ok is None:
        ok = _TMA_OK[t.device.index] = torch.cuda.get_device_capability(t.device)[0] >= 9
    return ok


def _scratch(size: int, alignment: int, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


def _ensure_allocator():
    """The descriptors built in-kernel (tl.make_tensor_descriptor) need global scratch from Triton's
    allocator; set one (torch's caching allocator) unless the caller's context already has one. The
    interpreter needs none."""
    if _interpreting():
        return
    try:
        from triton.runtime import _allocation
    except ImportError:  # a Triton without the allocator hook: nothing to set
        return
    current = _allocation._allocator.get()
    if isinstance(current, _allocation.NullAllocator):
        triton.set_allocator(_scratch)


def _norm_args(rq, rk, like):
    """Kernel pointer arguments RQ1, RQ2, RK1, RK2 (any tensor where not normalising)."""
    if rq is None:
        return like, like, like, like
    return rq[0], rq[-1], rk[0], rk[-1]


def _tau_args(beta, scale):
    """Kernel arguments BETA, SCALE, s_beta, s_scale, HAS_BETA for tau_i = beta_h * scale[h, i]: beta (H,)
    (any stride) with the beta-free row factor scale (M,), or beta None with tau itself as scale (H, M)."""
    if beta is None:
        return scale, scale, 0, scale.stride(0), False
    return beta, scale, beta.stride(0), 0, True


def _launch_fwd(q1, k1, q2, k2, v, beta, scale, lam, p, causal, cfg, normalize=False, for_bwd=True):
    """(out, flags, rq, rk): rq (T, B, H, M) / rk (T, B, Hk, N) the inverse norms (None unless normalize).
    tau from (beta, scale) as in _tau_args; lam (H,) any stride (TDA) or None (TRA). for_bwd=False (no
    backward will run): the kernel neither computes nor stores the flags and rq, returned as None."""
    B, H, M, D = q1.shape
    Hk, N, Dv = k1.shape[1], k1.shape[2], v.shape[-1]
    two = q2 is not None
    skip = int(SKIP_EMPTY)
    if for_bwd:
        BM, BN, warps, stages = cfg["fwd"]
    else:
        BM, BN, warps, stages, test = cfg["infer"]
        skip = skip if test else 3
    FM, FN = cfg["flags"] if for_bwd else (BM, BN)
    n_mt, n_nt = _cdiv(M, FM), _cdiv(N, FN)
    out = torch.empty((B, H, M, Dv), device=q1.device, dtype=q1.dtype)
    empty = out.numel() == 0
    flags = rq = rk = None
    screen = bool(SCREEN) and skip in (1, 2)
    table = cfg.get("unit_keys", (False, False))[0 if for_bwd else 1]
    hat = bool(table if SCREEN_HAT is None else SCREEN_HAT) and normalize and screen
    unit = bool(table if UNIT_KEYS is None else UNIT_KEYS) and hat
    rows = bool(cfg.get("row_screen", False) if ROW_SCREEN is None else ROW_SCREEN) and not for_bwd
    mask_screen = bool(cfg.get("mask_screen", (True, True))[0 if for_bwd else 1] if MASK_SCREEN is None
                       else MASK_SCREEN) and screen
    tma = int(cfg.get("tma", (0, 0))[0 if for_bwd else 1] if TMA is None else TMA) if hat else 0
    if tma and not _tma_device_ok(q1):
        tma = 0
    if tma == 2 and not _tma_rows_ok(v):
        tma = 1
    if tma:
        _ensure_allocator()
    cap = cfg.get("maxnreg", (None, None))[0 if for_bwd else 1] if FWD_MAXNREG is None else FWD_MAXNREG
    group = max(int(cfg.get("group", (1, 1))[0] if FWD_GROUP is None else FWD_GROUP), 1)
    extra = {"maxnreg": int(cap)} if cap else {}
    if for_bwd:
        # the kernel writes every flag (visited pairs: survivor or not; the rest: 0): no zero-fill launch
        alloc = torch.ones if skip == 3 else (torch.zeros if empty else torch.empty)
        flags = alloc((B * H, n_mt, n_nt), device=q1.device, dtype=torch.int8)
    kh = None
    if normalize:  # rq is written by the forward kernel itself, rk (and the unit keys kh) by the pre-pass
        if for_bwd:
            rq = torch.empty((2 if two else 1, B, H, M), device=q1.device, dtype=_norm_dtype(q1))
        rk = _inv_norms(k1, k2, hat=hat)
        if hat:
            rk, kh = rk
    if empty:
        return out, flags, rq, rk
    BETA, SCALE, s_beta, s_scale, has_beta = _tau_args(beta, scale)

    def launch(q1, k1, q2, k2, v, out, flags, rq, rk, kh):
        RQ1, RQ2, RK1, RK2 = _norm_args(rq if for_bwd else rk, rk, SCALE)  # rk: a stand-in rq, never written
        KH1, KH2 = (kh[0], kh[-1]) if kh is not None else (RK1, RK2)
        n_bh = q1.shape[0] * H
        _fwd[(_cdiv(M, BM) * n_bh,)](
            q1, k1, q2 if two else q1, k2 if two else k1, v, BETA, SCALE, lam if two else SCALE, out,
            flags if flags is not None else out, RQ1, RQ2, RK1, RK2, KH1, KH2,
            *q1.stride(), *_strides(q2, q1), *k1.stride(), *_strides(k2, k1), *v.stride(), *out.stride(),
            s_beta, s_scale, lam.stride(0) if two else 0, H, H // Hk, M, N, n_mt, n_nt, float(p), n_bh,
            min(group, n_bh),  # (no larger: the kernel's group * blocks stays within int32, like the grid)
            TWO_VIEWS=two, CAUSAL=causal, P=_p_mode(p), BLOCK_M=BM, BLOCK_N=BN, HEAD_D=D, HEAD_DV=Dv,
            PREC=_prec(q1.dtype), SKIP_EMPTY=skip, NORMALIZE=rk is not None,
            HAS_BETA=has_beta, TAU_F64=q1.dtype == torch.float64, EPS2=_EPS2, FLAG_M=FM, FLAG_N=FN,
            SCREEN=screen, FOR_BWD=for_bwd, HEAVY_FIRST=bool(HEAVY_FIRST), SCREEN_HAT=hat,
            HAT_DELTA=_hat_delta(q1.dtype, D) if hat and (for_bwd or not unit) else 0.0, UNIT_KEYS=unit,
            ROW_SCREEN=rows, TMA=tma, MASK_SCREEN=mask_screen, num_warps=warps, num_stages=stages, **extra)

    if B * H <= MAX_GRID_Y:
        launch(q1, k1, q2, k2, v, out, flags, rq, rk, kh)
    else:  # the grid's second axis (batch * heads) is capped: one launch per slice of the batch
        for sl, fl in _batch_slices(B, H):
            launch(q1[sl], k1[sl], q2[sl] if two else None, k2[sl] if two else None, v[sl], out[sl],
                   flags[fl] if flags is not None else None, rq[:, sl] if rq is not None else None,
                   rk[:, sl] if rk is not None else None, kh[:, sl] if kh is not None else None)
    return out, flags, rq, rk


# CUDA caps a grid's second and third axes at 65535 programs; the two-launch backward's second axis is batch *
# heads, so larger calls run as several launches over slices of the batch. (The forward's grid is flat since the
# thirteenth session; it still launches per slice past the cap, as the GPU check verified.)
MAX_GRID_Y = 65535


def _batch_slices(B: int, H: int):
    """(batch slice, flat batch * head slice) pairs covering B in chunks of at most MAX_GRID_Y // H."""
    bc = MAX_GRID_Y // H
    if bc == 0:
        raise ValueError(f"the fused kernel takes at most {MAX_GRID_Y} heads per call, got {H}")
    return [(slice(b0, b0 + bc), slice(b0 * H, min(b0 + bc, B) * H)) for b0 in range(0, B, bc)]


def _launch_bwd(do, q1, k1, q2, k2, v, beta, scale, lam, flags, rq, rk, p, causal, MT, NT, cfg, norm=None):
    """(dq1, dk1, dq2, dk2, dv, g): gradients with respect to the kernel's q/k inputs -- raw q/k when
    rq/rk (the forward's inverse norms) are given, i.e. the normalisation's backward included; else q/k are
    taken as the unit vectors -- and g (2, H, B, M) fp32: per row, dtau_i and -sum_j a2_ij dDa_ij (TDA; zero
    for TRA); when beta is given, (2, H, B, cdiv(M, dQ block)): per dQ program, the sums of dtau_i * scale_i
    (the rows' dbeta shares) and of the dlam shares. norm: _norm_args(rq, rk,
    scale) if the caller prepared it already (the eager op does so in its forward, off the backward's
    thread)."""
    B, H, M, D = q1.shape
    Hk, N, Dv = k1.shape[1], k1.shape[2], v.shape[-1]
    two = q2 is not None
    n_mt, n_nt = flags.shape[1], flags.shape[2]
    # separate buffers: the custom op may not return outputs that alias each other
    dq1 = torch.empty((B, H, M, D), device=q1.device, dtype=q1.dtype)
    dk1 = torch.empty((B, Hk, N, D), device=q1.device, dtype=q1.dtype)
    dq2 = torch.empty_like(dq1) if two else dq1
    dk2 = torch.empty_like(dk1) if two else dk1
    dv = torch.empty((B, Hk, N, Dv), device=q1.device, dtype=v.dtype)
    # the rows' dtau / dlam shares: fp64 for fp32 inputs, so that the heavily cancelling sums behind the scalar
    # dbeta / dlam keep fp32's accuracy (fp32 partials alone failed the GPU check's criterion there)
    tdt = torch.float64 if q1.dtype in (torch.float32, torch.float64) else torch.float32
    # the eager path (beta given) gets one sum per dQ program, (2, H, B, cdiv(M, dQ block)): see bwd._dq_program
    g_rows = _cdiv(M, cfg["dq"][0]) if beta is not None else M
    g = (torch.empty if two else torch.zeros)((2, H, B, g_rows), device=q1.device, dtype=tdt)
    if dq1.numel() == 0 or dk1.numel() == 0:
        for t in (dq1, dk1, dq2, dk2, dv, g):
            t.zero_()
    else:
        BETA, SCALE, s_beta, s_scale, has_beta = _tau_args(beta, scale)
        common = (*q1.stride(), *_strides(q2, q1), *k1.stride(), *_strides(k2, k1), *v.stride(), *do.stride(),
                  s_beta, s_scale, lam.stride(0) if two else 0)
        args = (q1, k1, q2 if two else q1, k2 if two else k1, v, BETA, SCALE, lam if two else SCALE, do, flags,
                *(norm if norm is not None else _norm_args(rq, rk, SCALE)))
        meta = dict(TWO_VIEWS=two, CAUSAL=causal, P=_p_mode(p), HEAD_D=D, HEAD_DV=Dv, MT=MT, NT=NT,
                    PREC=_prec(q1.dtype), PREFETCH=bool(PREFETCH), NORMALIZE=rq is not None,
                    HAS_BETA=has_beta, TAU_F64=q1.dtype == torch.float64)
        (KBM, KBN, warps, stages), (QBM, QBN, q_warps, q_stages) = cfg["dkdv"], cfg["dq"]
        n_kb, n_qb = _cdiv(N, KBN), _cdiv(M, QBM)
        kv_lists, q_lists = cfg["lists"] if LISTS is None else (bool(LISTS), bool(LISTS))
        lists = kv_lists or q_lists
        merged = MERGED_BWD and (warps, stages) == (q_warps, q_stages)
        sliced = not merged and B * H > MAX_GRID_Y  # see MAX_GRID_Y
        # scratch rows for the lists, int32: one per dK/dV program (min(LIST_ROW, cdiv(M, KBM)) entries), then
        # one per dQ program (min(LIST_ROW, cdiv(N, QBN)) entries)
        row = int(LIST_ROW)
        scr_q = B * Hk * n_kb * min(row, _cdiv(M, KBM))
        scr = torch.empty(scr_q + B * H * n_qb * min(row, _cdiv(N, QBN)), device=q1.device, dtype=torch.int32) \
            if lists and not sliced else flags
        meta.update(CHUNK=int(LIST_CHUNK), LIST_ROW=row)
        bcap = cfg.get("bwd_maxnreg") if BWD_MAXNREG is None else BWD_MAXNREG
        if bcap:
            meta["maxnreg"] = int(bcap)
        if merged:  # one flat grid: no cap on batch * heads
            group = min(max(int(cfg.get("group", (1, 1))[1] if BWD_GROUP is None else BWD_GROUP), 1), B * H)
            _bwd[(n_kb * B * Hk + n_qb * B * H,)](
                *args, dk1, dk2, dv, dq1, dq2, g[0], g[1], scr, *common, H, H // Hk, M, N, n_mt, n_nt, float(p),
                n_kb, n_kb * B * Hk, n_qb, scr_q, group, KV_BLOCK_M=KBM, KV_BLOCK_N=KBN, KV_R=max(KBM // MT, 1),
                KV_C=max(KBN // NT, 1), Q_BLOCK_M=QBM, Q_BLOCK_N=QBN, Q_R=max(QBM // MT, 1),
                Q_C=max(QBN // NT, 1), SCALE_DTAU=has_beta, HEAVY_FIRST=bool(HEAVY_FIRST), KV_LISTS=kv_lists,
                Q_LISTS=q_lists, **meta, num_warps=warps, num_stages=stages)
        elif not sliced:
            _dkdv[(n_kb, B * Hk)](
                *args, dk1, dk2, dv, scr, *common, Hk, H // Hk, M, N, n_mt, n_nt, float(p),
                BLOCK_M=KBM, BLOCK_N=KBN, R=max(KBM // MT, 1), C=max(KBN // NT, 1), LISTS=kv_lists, **meta,
                num_warps=warps, num_stages=stages)
            _dq[(n_qb, B * H)](
                *args, dq1, dq2, g[0], g[1], scr, *common, H, H // Hk, M, N, n_mt, n_nt, float(p), scr_q,
                BLOCK_M=QBM, BLOCK_N=QBN, R=max(QBM // MT, 1), C=max(QBN // NT, 1), SCALE_DTAU=has_beta,
                HEAVY_FIRST=bool(HEAVY_FIRST), LISTS=q_lists, **meta, num_warps=q_warps, num_stages=q_stages)
        else:  # two launches past the grid cap: the backward per batch slice (its own scratch, g buffer)
            for sl, fl in _batch_slices(B, H):
                res = _launch_bwd(do[sl], q1[sl], k1[sl], q2[sl] if two else None, k2[sl] if two else None, v[sl],
                                  beta, scale, lam, flags[fl], rq[:, sl] if rq is not None else None,
                                  rk[:, sl] if rk is not None else None, p, causal, MT, NT, cfg)
                for full, part in zip((dq1, dk1, dq2, dk2, dv), res[:5]):
                    if part is not None:
                        full[sl] = part
                g[:, :, sl] = res[5]
    return dq1, dk1, (dq2 if two else None), (dk2 if two else None), dv, g


# ---------------------------------------------------------------------------------------------------
# torch custom ops (opaque to torch.compile) with autograd: tau (H, M) precomputed, so beta's gradient
# flows through it by autograd. Defined through torch.library.Library rather than the @custom_op decorator,
# whose per-call Python wrapper (it checks that no output aliases an input) cost 4 us per forward and 13 us per
# backward call on top (torch 2.13, CPU: benchmarks/probe_dispatch.py): a compiled model calls both ops once per
# layer and step, and its step can be host-bound (docs/benchmarks.md). Every output here is a fresh tensor.

_LIB = torch.library.Library("tda", "DEF")
_LIB.define("threshold_attention_fwd(Tensor q1, Tensor k1, Tensor? q2, Tensor? k2, Tensor v, Tensor tau, "
            "Tensor? lam, float p, bool causal, bool normalize=False) -> (Tensor, Tensor, Tensor, Tensor)")
_LIB.define("threshold_attention_bwd(Tensor do, Tensor q1, Tensor k1, Tensor? q2, Tensor? k2, Tensor v, "
            "Tensor tau, Tensor? lam, Tensor flags, Tensor rq, Tensor rk, float p, bool causal, int MT, int NT) "
            "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


def _impl(name):
    def register(fn):
        _LIB.impl(name, fn, "CompositeExplicitAutograd")  # any device: CUDA, or the CPU under the interpreter
        return fn
    return register


@_impl("threshold_attention_fwd")
def _fwd_op(q1, k1, q2, k2, v, tau, lam, p, causal, normalize=False):
    """(out, survivor flags, rq, rk) for tau (H, M) fp32 and lam (H,) fp32 (TDA) or None (TRA).
    normalize: q/k are raw and the op uses their cosine (rq (T, B, H, M), rk (T, B, Hk, N) are the inverse
    norms, for the backward); else q/k are used as given (unit vectors) and rq, rk are empty."""
    cfg = _configs(q1.shape[-1], q1.dtype, q2 is not None, k1.shape[2])
    with _on_device(q1):
        out, flags, rq, rk = _launch_fwd(q1, k1, q2, k2, v, None, tau, lam, p, causal, cfg, normalize)
    if rq is None:
        rq, rk = tau.new_empty(0), tau.new_empty(0)
    return out, flags, rq, rk


def _norm_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("tda::threshold_attention_fwd", lib=_LIB)
def _(q1, k1, q2, k2, v, tau, lam, p, causal, normalize=False):
    B, H, M, D = q1.shape
    Hk, N = k1.shape[1], k1.shape[2]
    FM, FN = _configs(D, q1.dtype, q2 is not None, N)["flags"]
    out = q1.new_empty((B, H, M, v.shape[-1]))
    flags = q1.new_empty((B * H, -(-M // FM), -(-N // FN)), dtype=torch.int8)
    T = 2 if q2 is not None else 1
    if normalize:
        rq = q1.new_empty((T, B, H, M), dtype=_norm_dtype(q1))
        rk = q1.new_empty((T, B, Hk, N), dtype=_norm_dtype(q1))
    else:
        rq, rk = tau.new_empty(0), tau.new_empty(0)
    return out, flags, rq, rk


@_impl("threshold_attention_bwd")
def _bwd_op(do, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, p, causal, MT, NT):
    """(dq1, dk1, dq2, dk2, dv, dtau (H, M), dlam (H,)); the view-2 and lam grads are empty for TRA.
    rq, rk: the forward's inverse norms (empty: no normalisation)."""
    cfg = _configs(q1.shape[-1], q1.dtype, q2 is not None, k1.shape[2])
    if rq.numel() == 0 or rk.numel() == 0:
        rq, rk = None, None
    with _on_device(q1):
        dq1, dk1, dq2, dk2, dv, g = _launch_bwd(do, q1, k1, q2, k2, v, None, tau, lam, flags, rq, rk, p, causal,
                                                MT, NT, cfg)
    dtau = g[0].sum(1).to(tau.dtype)
    if q2 is None:
        return dq1, dk1, q1.new_empty(0), k1.new_empty(0), dv, dtau, tau.new_empty(0)
    return dq1, dk1, dq2, dk2, dv, dtau, g[1].sum((1, 2)).to(tau.dtype)


@torch.library.register_fake("tda::threshold_attention_bwd", lib=_LIB)
def _(do, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, p, causal, MT, NT):
    # the real op returns contiguous gradients whatever the inputs' strides (empty_like would copy a
    # transposed input's strides, and torch.compile rejects a fake kernel whose strides differ)
    two = q2 is not None
    H, M = q1.shape[1], q1.shape[2]
    dq2 = q1.new_empty(q1.shape) if two else q1.new_empty(0)
    dk2 = k1.new_empty(k1.shape) if two else k1.new_empty(0)
    dlam = q1.new_empty((H,), dtype=tau.dtype) if two else q1.new_empty(0, dtype=tau.dtype)
    return (q1.new_empty(q1.shape), k1.new_empty(k1.shape), dq2, dk2, v.new_empty(v.shape),
            q1.new_empty((H, M), dtype=tau.dtype), dlam)


def _setup_context(ctx, inputs, output):
    q1, k1, q2, k2, v, tau, lam, p, causal, normalize = inputs
    _, flags, rq, rk = output
    ctx.save_for_backward(q1, k1, q2, k2, v, tau, lam, flags, rq, rk)
    ctx.p, ctx.causal = p, causal
    ctx.MT, ctx.NT = _configs(q1.shape[-1], q1.dtype, q2 is not None, k1.shape[2])["flags"]
    ctx.mark_non_differentiable(flags, rq, rk)


def _backward(ctx, dout, dflags, drq, drk):
    q1, k1, q2, k2, v, tau, lam, flags, rq, rk = ctx.saved_tensors
    dq1, dk1, dq2, dk2, dv, dtau, dlam = threshold_attention_bwd(
        dout, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, ctx.p, ctx.causal, ctx.MT, ctx.NT)
    two = q2 is not None
    return (dq1, dk1, dq2 if two else None, dk2 if two else None, dv, dtau, dlam if two else None,
            None, None, None)


torch.library.register_autograd("tda::threshold_attention_fwd", _backward, setup_context=_setup_context, lib=_LIB)
threshold_attention_fwd = torch.ops.tda.threshold_attention_fwd
threshold_attention_bwd = torch.ops.tda.threshold_attention_bwd


# ---------------------------------------------------------------------------------------------------
# public functions (same signature, checks and error messages as reference.py)

_VALIDATED: dict = {}  # name -> (weakref to a beta/lam tensor, its version) that passed the checks
_SCALE_CACHE: dict = {}  # (device, M, offset, kappa, d, dtype) -> (M,) beta-free row factor of tau


def _scalar_param(name, t, n_heads, ref, check_finite=True):
    """_check_scalar_param, whose finiteness test costs a host sync on CUDA, skipped for the very tensor
    object (same version counter, so not modified in place since) that passed it on the previous call.
    Returns an (H,) view on ref's device."""
    if isinstance(t, torch.Tensor) and not torch.compiler.is_compiling():
        seen = _VALIDATED.get(name)
        if (seen is not None and seen[0]() is t and seen[1] == t._version and seen[2] == n_heads
                and t.is_floating_point()):
            # a per-head (H,) tensor is used as is: no view nodes for autograd to walk in the backward
            out = t if t.dim() == 1 and t.shape[0] == n_heads else t.reshape(-1).expand(n_heads)
        else:
            out = _check_scalar_param(name, t, n_heads, ref, check_finite)
            if check_finite:
                _VALIDATED[name] = (weakref.ref(t), t._version, n_heads)
    else:
        out = _check_scalar_param(name, t, n_heads, ref, check_finite)
    return out if out.device == ref.device else out.to(ref.device)


def _tau_scale(M, position_offset, kappa, D, device, dtype):
    """reference.tau's beta-free row factor (M,) in dtype (fp32, or fp64 for an fp64 beta), cached per
    shape: tau_i = beta_h * scale_i is then formed inside the kernels, with reference.tau's rounding."""
    key = (device, M, position_offset, kappa, D, dtype)
    scale = _SCALE_CACHE.get(key)
    if scale is None:
        positions = torch.arange(position_offset, position_offset + M, device=device)
        scale = reference.tau(positions, torch.ones(1, device=device, dtype=dtype), kappa, D)[0].contiguous()
        if len(_SCALE_CACHE) > 64:
            _SCALE_CACHE.clear()
        _SCALE_CACHE[key] = scale
    return scale


def _run(q1, k1, q2, k2, v, beta, lam, *, kappa, p, causal, position_offset, normalize_qk, check_finite=True):
    qs = [("q1", q1), ("q2", q2)] if q2 is not None else [("q", q1)]
    ks = [("k1", k1), ("k2", k2)] if k2 is not None else [("k", k1)]
    B, H, M, D, Hk, N = check_inputs(qs, ks, v, kappa=kappa, p=p, position_offset=position_offset)
    beta = _scalar_param("beta", beta, H, q1, check_finite)
    lam = _scalar_param("lam", lam, H, q1, check_finite) if q2 is not None else None
    why = unsupported_reason(q1, k1, v, p)
    if why is not None:
        raise ValueError(f"the Triton kernel cannot run this call: {why}")
    # normalize_qk: fused in the kernels (raw q/k in, inverse norms computed by the kernels)
    if torch.compiler.is_compiling():  # the custom op, with tau (H, M) formed in torch
        pdt = torch.float64 if q1.dtype == torch.float64 else torch.float32
        positions = torch.arange(position_offset, position_offset + M, device=q1.device)
        tau_rows = reference.tau(positions, beta, kappa, D).to(pdt).contiguous()
        lam_h = lam.to(pdt).contiguous() if lam is not None else None
        return threshold_attention_fwd(q1, k1, q2, k2, v, tau_rows, lam_h, float(p), bool(causal),
                                       bool(normalize_qk))[0]
    # eager: the same launches through a plain autograd.Function (dispatches faster), tau formed in-kernel
    sdt = torch.float64 if beta.dtype == torch.float64 else torch.float32
    scale = _tau_scale(M, position_offset, float(kappa), D, q1.device, sdt)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q1, k1, q2, k2, v, beta, lam))):
        # no backward can follow (inference): no autograd node, and a forward that keeps nothing for one
        with _on_device(q1):
            return _launch_fwd(q1, k1, q2, k2, v, beta, scale, lam, float(p), bool(causal),
                               _configs(D, q1.dtype, q2 is not None, N), bool(normalize_qk), for_bwd=False)[0]
    return _EagerTDA.apply(q1, k1, q2, k2, v, beta, lam, scale, float(p), bool(causal), bool(normalize_qk))


class _EagerTDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q1, k1, q2, k2, v, beta, lam, scale, p, causal, normalize):
        cfg = _configs(q1.shape[-1], q1.dtype, q2 is not None, k1.shape[2])
        with _on_device(q1):
            out, flags, rq, rk = _launch_fwd(q1, k1, q2, k2, v, beta, scale, lam, p, causal, cfg, normalize)
        ctx.save_for_backward(q1, k1, q2, k2, v, beta, lam)
        # the op's own tensors (no autograd history, so no reference cycle) ride on ctx as they are, with the
        # backward's norm pointer arguments prepared here: the backward runs on autograd's device thread,
        # where the same Python runs markedly slower (docs/benchmarks.md, "Host cost per call")
        norm = _norm_args(rq, rk, scale) if rq is not None else None
        ctx.own = (scale, flags, rq, rk, norm)
        ctx.p, ctx.causal, ctx.cfg = p, causal, cfg
        return out

    @staticmethod
    def backward(ctx, dout):
        q1, k1, q2, k2, v, beta, lam = ctx.saved_tensors
        scale, flags, rq, rk, norm = ctx.own
        MT, NT = ctx.cfg["flags"]
        with _on_device(q1):
            dq1, dk1, dq2, dk2, dv, g = _launch_bwd(dout, q1, k1, q2, k2, v, beta, scale, lam, flags, rq, rk,
                                                    ctx.p, ctx.causal, MT, NT, ctx.cfg, norm)
        # one contiguous reduction for both: (dbeta (H,), dlam (H,))
        dbeta, dlam = g.view(2, g.shape[1], g.shape[2] * g.shape[3]).sum(2).unbind(0)
        if q2 is None:
            dlam = None
        elif dlam.dtype != lam.dtype:
            dlam = dlam.to(lam.dtype)
        if dbeta.dtype != beta.dtype:
            dbeta = dbeta.to(beta.dtype)
        return dq1, dk1, dq2, dk2, dv, dbeta, dlam, None, None, None, None


def tda(q1, k1, q2, k2, v, beta, lam, *, kappa=1.0, p=2.0, causal=True, position_offset=0,
        normalize_qk=True, check_finite=True):
    """Fused TDA: sum_j (a1_ij - lam a2_ij) v_j, a_ij = (cos(q_i, k_j) - tau_i)_+^p; see reference.py."""
    if q2 is None or k2 is None:
        raise ValueError("q2 and k2 are required for TDA; use threshold_rectified_attention for one view")
    return _run(q1, k1, q2, k2, v, beta, lam, kappa=kappa, p=p, causal=causal,
                position_offset=position_offset, normalize_qk=normalize_qk, check_finite=check_finite)


def tra(q, k, v, beta, *, kappa=1.0, p=2.0, causal=True, position_offset=0, normalize_qk=True,
        check_finite=True):
    """Fused TRA: sum_j (cos(q_i, k_j) - tau_i)_+^p v_j (single view)."""
    return _run(q, k, None, None, v, beta, None, kappa=kappa, p=p, causal=causal,
                position_offset=position_offset, normalize_qk=normalize_qk, check_finite=check_finite)
