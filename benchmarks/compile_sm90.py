"""Compile the kernels of the GPU block table for sm_90 on a machine without a GPU (Triton's bundled
ptxas, through tda.ops.triton.sm90) and report what shows in the compiled code: registers, spill bytes
(stack/local), shared memory, layout conversions and barriers. A cheap first look before spending device
time on a sweep; timings still need the H200. Run with TRITON_INTERPRET unset.

    PYTHONPATH=src python benchmarks/compile_sm90.py [--only fwd-train-d64-long,dkdv-d128-short]
        [--block dkdv=64,32,4,2]     (override one kernel's BLOCK_M, BLOCK_N, warps, stages)
"""
import argparse

from tda.ops.triton import sm90


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--block", action="append", default=[],
                    help="KERNEL=BM,BN,WARPS,STAGES for fwd-train / fwd-infer / dkdv / dq (repeatable; not bwd)")
    args = ap.parse_args()
    over = {}
    for b in args.block:
        k, v = b.split("=")
        over[k] = tuple(int(x) for x in v.split(","))
    only = set(args.only.split(",")) if args.only else None
    for name, fn, consts, warps, stages in sm90.table_variants(full=True):
        if only and name not in only:
            continue
        kind = name.rsplit("-", 2)[0]
        if kind in over:
            BM, BN, warps, stages = over[kind]
            consts = dict(consts, BLOCK_M=BM, BLOCK_N=BN)
            if "MT" in consts:
                consts.update(R=max(BM // consts["MT"], 1), C=max(BN // consts["NT"], 1))
            else:
                consts.update(FLAG_M=min(consts["FLAG_M"], BM), FLAG_N=min(consts["FLAG_N"], BN))
        try:
            r = sm90.resource_usage(sm90.compile_kernel(fn, consts, warps, stages))
        except Exception as e:  # noqa: BLE001 (report and go on)
            r = f"failed: {type(e).__name__}: {str(e)[:200]}"
        if "BLOCK_M" in consts:
            blocks = f"{consts['BLOCK_M']}x{consts['BLOCK_N']}"
        else:  # the one-launch backward: dK/dV blocks + dQ blocks
            blocks = (f"{consts['KV_BLOCK_M']}x{consts['KV_BLOCK_N']}+"
                      f"{consts['Q_BLOCK_M']}x{consts['Q_BLOCK_N']}")
        print(f"{name:22s} {blocks} w{warps} s{stages}: {r}", flush=True)


if __name__ == "__main__":
    main()
