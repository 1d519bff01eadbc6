"""Compile the kernels for a GPU target on a machine without a GPU (Triton's bundled ptxas).

The interpreter (TRITON_INTERPRET=1) checks what the kernels compute, not whether they compile: layout
conversions, shared memory and register limits only show when Triton lowers them for real. This module
builds the signature Triton's JIT would specialise for contiguous bf16 inputs and compiles for sm_90
(H100/H200), so CI can compile every block config of the GPU table and report registers, spills and shared
memory before any device time is spent.

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

# fp32 pointer parameters (per-row / per-head scalars, inverse norms, dtau / dlam, RMSNorm's rstd and gain
# partials); FLAGS is int8; every other upper-case parameter is a tensor in the input dtype
_FP32_PTRS = {"BETA", "SCALE", "LAM", "RQ1", "RQ2", "RK1", "RK2", "R", "DTAU", "DLAM", "RSTD", "DW"}
_UNALIGNED = {"s_beta", "s_scale", "s_lam"}
_INTS = {"H", "H2", "G", "M", "N", "Hk"}  # upper-case sizes, not pointers (SCR: the backward's int32 scratch)


def compile_kernel(fn, consts: dict, num_warps: int, num_stages: int, dtype: str = "bf16", arch: int = 90,
                   types: dict | None = None):
    """triton.compile of @triton.jit `fn` with constexprs `consts`, for contiguous inputs: unit inner
    strides (s_*d) become the constant 1, pointers and the other strides 16-divisible, as the JIT
    specialises a call on contiguous, aligned tensors. consts may carry the launch option "maxnreg"; types
    overrides the signature type of the named parameters (e.g. {"T": "*i64"}) where the naming rules above
    do not fit a kernel."""
    names = list(fn.arg_names)
    consts = dict(consts)
    extra = {"maxnreg": consts.pop("maxnreg")} if consts.get("maxnreg") else {}
    consts.pop("maxnreg", None)
    sig = {}
    for n in names:
        if n in consts:
            sig[n] = "constexpr"
        elif n[:1].isupper() and n not in _INTS:
            sig[n] = ("*i8" if n == "FLAGS" else "*i32" if n in ("SCR", "DOCS") else "*i64" if n == "POS"
                      else "*fp32" if n in _FP32_PTRS else "*" + dtype)
        elif n == "p":
            sig[n] = "fp32"
        elif n.startswith("s_") and n.endswith("d") and n not in _UNALIGNED:
            sig[n], consts[n] = "constexpr", 1
        else:
            sig[n] = "i32"
    sig.update(types or {})
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


def varlen_variants():
    """table_variants' kernels for packed documents (VARLEN: the document table as the batch), at d 64 with
    4K keys and d 128 with 1K: training forward, inference forward and backward."""
    out = []
    for name, fn, consts, w, st in table_variants(full=True):
        if name.endswith(("d64-4k", "d128-1k")):
            out.append((name + "-varlen", fn, {**consts, "VARLEN": True}, w, st))
    return out


def table_variants(full: bool = True):
    """(name, kernel, constexprs, warps, stages) for the kernels of the GPU block table (config.block_config),
    with the constexprs the launcher (launch.forward_meta / backward_meta) passes for a bf16 TDA call, p = 2,
    fused normalisation, contiguous inputs: the training forward, the inference forward and the backward, at
    d 64 / 128 and key lengths 1K, 4K and 16K (full), or d 64 at 16K and d 128 at 1K (full=False)."""
    import torch

    from . import config, launch
    from .bwd import attention_bwd_kernel
    from .fwd import attention_fwd_kernel

    out = []
    cases = [(64, 1024), (64, 4096), (64, 16384), (128, 1024), (128, 4096), (128, 16384)] if full \
        else [(64, 16384), (128, 1024)]
    for D, N in cases:
        tag = f"d{D}-{N // 1024}k"
        for training in (True, False):
            cfg = config._table(D, torch.bfloat16, N, training)
            tma = 2 if cfg.tma else 0
            meta = launch.forward_meta(cfg, D, D, torch.bfloat16, True, True, 2.0, True, True, training, tma)
            w, st = meta.pop("num_warps"), meta.pop("num_stages")
            out.append((f"fwd-{'train' if training else 'infer'}-{tag}", attention_fwd_kernel, meta, w, st))
            if training:
                meta = launch.backward_meta(cfg, D, D, torch.bfloat16, True, True, 2.0, True, True)
                w, st = meta.pop("num_warps"), meta.pop("num_stages")
                out.append((f"bwd-{tag}", attention_bwd_kernel, meta, w, st))
    return out
