"""Compile the forward kernel for sm_90 on a machine without a GPU (Triton's bundled ptxas) and report
what costs show in the IR: layout conversions through shared memory, shared memory size, registers and
spills. A cheap first look before spending device time; timings still need the H200.

    python benchmarks/compile_sm90.py --d 64 --block 128,64,8,3 --flags 64,64 [--screen 0] [--store 0]
"""
import argparse
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tda.ops.triton.fwd import tda_fwd_kernel


def compile_fwd(D, BM, BN, warps, stages, FM, FN, screen=True, skip=1, store=True, two=True):
    names = list(tda_fwd_kernel.arg_names)
    consts = dict(TWO_VIEWS=two, CAUSAL=True, P=2, BLOCK_M=BM, BLOCK_N=BN, HEAD_D=D, HEAD_DV=D, PREC="tf32",
                  SKIP_EMPTY=skip, NORMALIZE=True, HAS_BETA=True, TAU_F64=False, EPS2=1e-12, FLAG_M=FM,
                  FLAG_N=FN, SCREEN=screen)
    if "FOR_BWD" in names:
        consts["FOR_BWD"] = store
    ptrs = {"Q1": "bf16", "K1": "bf16", "Q2": "bf16", "K2": "bf16", "V": "bf16", "OUT": "bf16", "FLAGS": "i8"}
    sig = {}
    for n in names:
        if n in consts:
            sig[n] = "constexpr"
        elif n in ptrs:
            sig[n] = "*" + ptrs[n]
        elif n in ("BETA", "SCALE", "LAM", "RQ1", "RQ2", "RK1", "RK2"):
            sig[n] = "*fp32"
        elif n == "p_val":
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    # what the JIT specialises for contiguous inputs: unit inner strides become constants, pointers and
    # the other strides get 16-divisibility
    for n in ("s_q1d", "s_q2d", "s_k1d", "s_k2d", "s_vd", "s_od"):
        sig[n], consts[n] = "constexpr", 1
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n].startswith("*") or (sig[n] == "i32" and n.startswith("s_") and n not in
                                           ("s_beta", "s_scale", "s_lam"))}
    src = ASTSource(tda_fwd_kernel, sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def _res_usage(cubin):
    """(registers, spill stores + loads in bytes) from cuobjdump, bundled with Triton."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    spill = re.findall(r"(?:STACK|LOCAL):(\d+)", out)
    return (int(regs.group(1)) if regs else None), sum(int(x) for x in spill)


def report(k):
    regs, spills = _res_usage(k.asm["cubin"])
    ttgir = k.asm["ttgir"]
    ptx = k.asm["ptx"]
    conv = len(re.findall(r"ttg\.convert_layout", ttgir))
    lalloc = len(re.findall(r"ttg\.local_alloc", ttgir))
    bars = len(re.findall(r"bar\.sync|barrier\.sync", ptx))
    return dict(shared=k.metadata.shared, regs=regs, stack_local=spills,
                convert_layout=conv, local_alloc=lalloc, bar_sync=bars, wgmma=len(re.findall(r"wgmma\.mma_async", ptx)))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--block", default="128,64,8,3")
    ap.add_argument("--flags", default="64,64")
    ap.add_argument("--screen", type=int, default=1)
    ap.add_argument("--skip", type=int, default=1)
    ap.add_argument("--store", type=int, default=1)
    ap.add_argument("--dump", default=None, help="write the ttgir here")
    a = ap.parse_args()
    BM, BN, w, s = map(int, a.block.split(","))
    FM, FN = map(int, a.flags.split(","))
    k = compile_fwd(a.d, BM, BN, w, s, FM, FN, bool(a.screen), a.skip, bool(a.store))
    print(report(k))
    if a.dump:
        open(a.dump, "w").write(k.asm["ttgir"])
