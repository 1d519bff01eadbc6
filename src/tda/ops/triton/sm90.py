"""Compile the kernels for a GPU target on a machine without a GPU (Triton's bundled ptxas).

The interpreter (TRITON_INTERPRET=1) checks what the kernels compute, not whether they compile: layout
conversions, shared memory and register limits only show when Triton lowers them for real. This module
builds the signature Triton's JIT would specialise for contiguous bf16 inputs and compiles for sm_90
(H100/H200), so CI can compile every block config of the GPU table, and `benchmarks/compile_sm90.py` can
report registers, spills and shared memory before any device time is spent.

It must run with TRITON_INTERPRET unset (under the interpreter @triton.jit builds no compilable kernels):
tests call it in a subprocess.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# fp32 pointer parameters (per-row / per-head scalars, inverse norms, dtau / dlam); FLAGS is int8; every
# other upper-case parameter is a tensor in the input dtype
_FP32_PTRS = {"BETA", "SCALE", "LAM", "RQ1", "RQ2", "RK1", "RK2", "R", "DTAU", "DLAM"}
_UNALIGNED = {"s_beta", "s_scale", "s_lam"}
_INTS = {"H", "G", "M", "N", "Hk"}  # upper-case sizes, not pointers (SCR: the backward's int32 scratch)


def compile_kernel(fn, consts: dict, num_warps: int, num_stages: int, dtype: str = "bf16", arch: int = 90):
    """triton.compile of @triton.jit `fn` with constexprs `consts`, for contiguous inputs: unit inner
    strides (s_*d) become the constant 1, pointers and the other strides 16-divisible, as the JIT
    specialises a call on contiguous, aligned tensors. consts may carry the launch option "maxnreg"."""
    names = list(fn.arg_names)
    consts = dict(consts)
    extra = {"maxnreg": consts.pop("maxnreg")} if consts.get("maxnreg") else {}
    consts.pop("maxnreg", None)
    sig = {}
    for n in names:
        if n in consts:
            sig[n] = "constexpr"
        elif n[:1].isupper() and n not in _INTS:
            sig[n] = ("*i8" if n == "FLAGS" else "*i32" if n == "SCR"
                      else "*fp32" if n in _FP32_PTRS else "*" + dtype)
        elif n == "p_val":
            sig[n] = "fp32"
        elif n.startswith("s_") and n.endswith("d") and n not in _UNALIGNED:
            sig[n], consts[n] = "constexpr", 1
        else:
            sig[n] = "i32"
    missing = [n for n in names if sig[n] == "constexpr" and n not in consts]
    if missing:
        raise ValueError(f"{fn.__name__}: constexprs not given: {missing}")
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n].startswith("*") or (sig[n] == "i32" and n.startswith("s_") and n not in _UNALIGNED)}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages, **extra))


def resource_usage(compiled) -> dict:
    """Registers per thread and stack/local (spill) bytes from cuobjdump (bundled with Triton), shared
    memory, and counts of layout conversions / barriers in the IR."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    regs, spill = None, None
    if os.path.exists(tool):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+)", out)
        regs = int(m.group(1)) if m else None
        spill = sum(int(x) for x in re.findall(r"(?:STACK|LOCAL):(\d+)", out))
    return dict(regs=regs, stack_local=spill, shared=compiled.metadata.shared,
                convert_layout=compiled.asm["ttgir"].count("ttg.convert_layout"),
                ws_regions=compiled.asm["ttgir"].count("ttg.warp_specialize"),
                bar_sync=len(re.findall(r"bar\.sync|barrier\.sync", compiled.asm["ptx"])))


def table_variants(full: bool = True):
    """(name, kernel, constexprs, warps, stages) for every kernel of the GPU block table (attention._configs:
    bf16 TDA, p = 2, fused normalisation; d 64 / 128; short (1K), long and, at d 64, 4K ("mid") keys;
    forward for training and for inference, dK/dV, dQ, and the one-launch backward; full: also the long-key
    training forward's other variants -- the raw-key screen and the unit-key screen without UNIT_KEYS -- the
    inference forward with the other ROW_SCREEN choice, and the warp-specialised inference forward at d 64 and
    128, for inference and for training).
    full=False: the long-key d 64 and short-key d 128 configs only."""
    from . import attention as tk
    from .bwd import tda_bwd_dkdv_kernel, tda_bwd_dq_kernel, tda_bwd_kernel
    from .fwd import tda_fwd_kernel
    import torch

    out = []
    # short (1K) and long keys; d 64 also at 4K (its capped 64 x 32 backward)
    cases = [(64, None), (64, 1024), (64, 4096), (128, None), (128, 1024)] if full else [(64, None), (128, 1024)]
    for D, N in cases:
        cfg = tk._configs(D, torch.bfloat16, True, N)
        common = dict(TWO_VIEWS=True, CAUSAL=True, P=2, HEAD_D=D, HEAD_DV=D, PREC="tf32", NORMALIZE=True,
                      HAS_BETA=True, TAU_F64=False)
        FM, FN = cfg["flags"]
        tag = f"d{D}-{'long' if N is None else 'short' if N <= 1024 else 'mid'}"
        BM, BN, w, s = cfg["fwd"]
        unit, unit_inf = cfg.get("unit_keys", (False, False))  # the table's unit-key forward (SCREEN_HAT + UNIT_KEYS)
        delta = tk._hat_delta(torch.bfloat16, D)
        keys = dict(SCREEN_HAT=unit, UNIT_KEYS=unit)
        train = dict(common, BLOCK_M=BM, BLOCK_N=BN, SKIP_EMPTY=1, EPS2=tk._EPS2, FLAG_M=FM, FLAG_N=FN,
                     SCREEN=True, FOR_BWD=True, HEAVY_FIRST=True, HAT_DELTA=delta if unit else 0.0,
                     ROW_SCREEN=False, TMA=cfg.get("tma", (0, 0))[0] if unit else 0,
                     maxnreg=cfg.get("maxnreg", (None, None))[0], MASK_SCREEN=cfg.get("mask_screen", (True, True))[0],
                     **keys)
        out.append((f"fwd-train-{tag}", tda_fwd_kernel, train, w, s))
        if full and N is None:  # the other forward variants, long keys: raw-key screen, unit-key screen alone
            raw = dict(train, SCREEN_HAT=False, UNIT_KEYS=False, HAT_DELTA=0.0, TMA=0)
            out.append((f"fwd-train-rawkeys-{tag}", tda_fwd_kernel, raw, w, s))
            hat = dict(train, SCREEN_HAT=True, UNIT_KEYS=False, HAT_DELTA=delta, TMA=0)
            out.append((f"fwd-train-hat-{tag}", tda_fwd_kernel, hat, w, s))
        BM, BN, w, s, test = cfg["infer"]
        infer = dict(common, BLOCK_M=BM, BLOCK_N=BN, SKIP_EMPTY=1 if test else 3, EPS2=tk._EPS2, FLAG_M=BM,
                     FLAG_N=BN, SCREEN=test, FOR_BWD=False, HEAVY_FIRST=True, HAT_DELTA=0.0,
                     SCREEN_HAT=test and unit_inf, UNIT_KEYS=test and unit_inf,
                     ROW_SCREEN=test and cfg.get("row_screen", False),
                     TMA=cfg.get("tma", (0, 0))[1] if test and unit_inf else 0,
                     maxnreg=cfg.get("maxnreg", (None, None))[1],
                     MASK_SCREEN=test and cfg.get("mask_screen", (True, True))[1])
        out.append((f"fwd-infer-{tag}", tda_fwd_kernel, infer, w, s))
        if full and N is None:  # the other choice of the row screen (ROW_SCREEN), long keys
            rows = not infer["ROW_SCREEN"]
            out.append((f"fwd-infer-{'rows' if rows else 'tile'}-{tag}", tda_fwd_kernel, dict(infer, ROW_SCREEN=rows),
                        w, s))
        for name, kern, key in (("dkdv", tda_bwd_dkdv_kernel, "dkdv"), ("dq", tda_bwd_dq_kernel, "dq")):
            BM, BN, w, s = cfg[key]
            c = dict(common, BLOCK_M=BM, BLOCK_N=BN, MT=FM, NT=FN, R=max(BM // FM, 1), C=max(BN // FN, 1),
                     PREFETCH=False, LISTS=cfg["lists"][0 if name == "dkdv" else 1], CHUNK=tk.LIST_CHUNK,
                     LIST_ROW=tk.LIST_ROW)
            if name == "dq":
                c.update(SCALE_DTAU=True, HEAVY_FIRST=True)
            c["maxnreg"] = cfg.get("bwd_maxnreg")
            out.append((f"{name}-{tag}", kern, c, w, s))
        (KBM, KBN, w, s), (QBM, QBN, _, _) = cfg["dkdv"], cfg["dq"]
        out.append((f"bwd-{tag}", tda_bwd_kernel,
                    dict(common, KV_BLOCK_M=KBM, KV_BLOCK_N=KBN, KV_R=max(KBM // FM, 1), KV_C=max(KBN // FN, 1),
                         Q_BLOCK_M=QBM, Q_BLOCK_N=QBN, Q_R=max(QBM // FM, 1), Q_C=max(QBN // FN, 1), MT=FM,
                         NT=FN, PREFETCH=False, SCALE_DTAU=True, HEAVY_FIRST=True,
                         KV_LISTS=cfg["lists"][0], Q_LISTS=cfg["lists"][1], CHUNK=tk.LIST_CHUNK,
                         LIST_ROW=tk.LIST_ROW, maxnreg=cfg.get("bwd_maxnreg")), w, s))
    return out
