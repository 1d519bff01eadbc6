"""Kernel-only sweep of the backward's blocks (dK/dV and dQ kernels) at one shape, the forward and the flags'
grain at their defaults for that key length. Each candidate is timed as the whole backward (both launches)
with one kernel's block changed, and listed with its sm_90 register/spill count (tda.ops.triton.sm90), since
the table's backward kernels spill when compiled with Triton 3.9 (docs/benchmarks.md).

    PYTHONPATH=src python3 benchmarks/sweep_bwd.py --shape 2,16,4096 --dims 64,128 [--kind planted] [--warm-only]
"""
import argparse
import time

import torch
import triton

from tda.ops.triton import attention as tk
from tda.ops.triton import sm90

import bench_attention as ba

# per head dim: candidate blocks per kernel; "both" sets dK/dV and dQ together (same warps and stages, so
# the one-launch backward runs them); the rest change one kernel (the two-launch backward where the warps or
# stages then differ from the other kernel's). num_stages 1-3 compile to the same backward code where its
# loops test flags (docs/benchmarks.md), so stages are not swept.
CANDS = {64: {"dkdv": [(64, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2), (64, 32, 8, 2), (64, 64, 8, 2)],
              "dq": [(64, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2), (64, 64, 8, 2)],
              "both": [((64, 64, 4, 2), (64, 64, 4, 2)), ((64, 64, 4, 2), (64, 32, 4, 2)),
                       ((128, 64, 8, 2), (64, 128, 8, 2))]},
         128: {"dkdv": [(64, 32, 4, 2), (64, 32, 8, 2), (32, 32, 4, 2), (32, 64, 4, 2)],
               "dq": [(64, 32, 4, 2), (32, 32, 4, 2), (32, 64, 4, 2), (64, 32, 8, 2)],
               "both": [((64, 32, 4, 2), (64, 32, 4, 2)), ((64, 64, 8, 2), (64, 64, 8, 2))]}}
# "lists": (dK/dV block, dQ block, (lists for dK/dV, lists for dQ)): which programs loop over live-block
# lists at d = 64, where lists on both were slower up to 4K keys (docs/benchmarks.md)
CANDS[64]["lists"] = [((64, 64, 4, 2), (64, 64, 4, 2), (False, False)),
                      ((64, 64, 4, 2), (64, 64, 4, 2), (True, True)),
                      ((64, 64, 4, 2), (64, 64, 4, 2), (False, True)),
                      ((64, 64, 4, 2), (64, 64, 4, 2), (True, False)),
                      ((64, 32, 4, 2), (64, 64, 4, 2), (True, True)),
                      ((64, 32, 4, 2), (64, 32, 4, 2), (True, True)),
                      ((64, 32, 4, 2), (64, 64, 4, 2), (False, True))]
# "grain": (the forward's flags grain, dK/dV block, dQ block, lists) at d = 64: finer flags with backward blocks
# to match, for dense rows (planted 4K), where 64 x 64 blocks hold a survivor about half the time. These time
# the training forward too (finer flags cost it a reduction and more stores) and print fwd + bwd.
_G = {(64, 64): [(64, 64, 4, 2)], (64, 32): [(64, 32, 4, 2), (32, 32, 4, 2)],
      (32, 64): [(32, 64, 4, 2), (32, 32, 4, 2)], (32, 32): [(64, 32, 4, 2), (32, 64, 4, 2), (32, 32, 4, 2)]}
CANDS[64]["grain"] = [(g, blk, blk, lists) for g, blks in _G.items() for blk in blks for lists in (False, True)]


def spills(D, N, kernel, block):
    """sm_90 registers and spill bytes of this kernel at this block (the table's constexprs otherwise)."""
    tag = f"d{D}-{'short' if N <= 1024 else 'long'}"
    for name, fn, consts, _, _ in sm90.table_variants(full=True):
        if name == f"{kernel}-{tag}":
            BM, BN, w, s = block
            c = dict(consts, BLOCK_M=BM, BLOCK_N=BN, R=max(BM // consts["MT"], 1), C=max(BN // consts["NT"], 1))
            try:
                r = sm90.resource_usage(sm90.compile_kernel(fn, c, w, s))
                return f"regs {r['regs']}, spill {r['stack_local']} B"
            except Exception as e:  # noqa: BLE001
                return f"sm90 compile failed ({type(e).__name__})"
    return "n/a"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="2,16,4096")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--kind", default="random")
    ap.add_argument("--warm-only", action="store_true")
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--kernels", default="dkdv,dq,both", help="which candidate lists to run")
    args = ap.parse_args()
    B, H, N = (int(x) for x in args.shape.split(","))
    i, n = (int(x) for x in args.shard.split("/"))
    print(f"{torch.cuda.get_device_name()}; B={B} H={H} N={N}, {args.kind} inputs; kernel-only backward ms",
          flush=True)
    for D in (int(x) for x in args.dims.split(",")):
        q1, k1, q2, k2, v = ba.make_inputs(B, H, N, D, args.kind, seed=1)
        beta, lam = torch.ones(H, device="cuda"), torch.full((H,), 0.5, device="cuda")
        prep = ba.prepare(q1, k1, q2, k2, v, beta, lam)
        dout = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
        base = tk._configs(D, q1.dtype, True, N)
        _, flags, rq, rk = tk._launch_fwd(*prep, 2.0, True, base, True)
        MT, NT = base["flags"]
        fwd_of = {}  # flags grain -> (training forward ms, flags, rq, rk) for the "grain" candidates
        jobs = [(k, c) for k in args.kernels.split(",") for c in CANDS[D].get(k, [])][i::n]
        for kernel, block in jobs:
            if kernel == "both":
                cfg = dict(base, dkdv=block[0], dq=block[1])
            elif kernel == "lists":
                cfg = dict(base, dkdv=block[0], dq=block[1], lists=block[2])
            elif kernel == "grain":
                if base["fwd"][0] % block[0][0] or base["fwd"][1] % block[0][1]:
                    continue  # the grain must divide this length's forward block
                cfg = dict(base, flags=block[0], dkdv=block[1], dq=block[2], lists=(block[3], block[3]))
            else:
                cfg = dict(base, **{kernel: block})
            try:
                fl, r_q, r_k, (mt, nt) = flags, rq, rk, (MT, NT)
                if kernel == "grain":
                    if block[0] not in fwd_of:
                        def f_fwd():
                            return tk._launch_fwd(*prep, 2.0, True, cfg, True)
                        _, gfl, grq, grk = f_fwd()
                        torch.cuda.synchronize()
                        tf = 0.0 if args.warm_only else triton.testing.do_bench(f_fwd, warmup=20, rep=80,
                                                                                return_mode="median")
                        fwd_of[block[0]] = (tf, gfl, grq, grk)
                    tf, fl, r_q, r_k = fwd_of[block[0]]
                    mt, nt = block[0]

                def f_bwd():
                    return tk._launch_bwd(dout, *prep, fl, r_q, r_k, 2.0, True, mt, nt, cfg)
                f_bwd()
                torch.cuda.synchronize()
                if args.warm_only:
                    continue
                t = triton.testing.do_bench(f_bwd, warmup=20, rep=80, return_mode="median")
            except Exception as e:  # noqa: BLE001 (out of resources: report, go on)
                print(f"  d={D} {kernel} {block}: failed {type(e).__name__}: {str(e)[:120]}", flush=True)
                continue
            if kernel == "grain":
                print(f"  d={D} flags {block[0]}, dkdv = dq {block[1]}, lists {block[3]}: fwd {tf:.3f} + "
                      f"bwd {t:.3f} = {tf + t:.3f} ms", flush=True)
                continue
            if kernel == "lists":
                print(f"  d={D} dkdv {block[0]} + dq {block[1]}, lists (dkdv, dq) {block[2]}: bwd {t:.3f} ms",
                      flush=True)
                continue
            if kernel == "both":
                mark = " (one launch)" if block[0][2:] == block[1][2:] else ""
                print(f"  d={D} dkdv {block[0]} + dq {block[1]}{mark}: bwd {t:.3f} ms", flush=True)
                continue
            mark = " (default)" if base[kernel] == block else ""
            print(f"  d={D} {kernel} {block}{mark}: bwd {t:.3f} ms | {spills(D, N, kernel, block)}", flush=True)


if __name__ == "__main__":
    main()
