"""The inverse-norm pre-pass (common.inv_norm_kernel) at other row blocks and warp counts: its time (do_bench,
L2 flushed) and whether its outputs equal the default launch's bit for bit. At 1K keys it is ~3% of a TDA
fwd+bwd (docs/benchmarks.md), so a launch closer to the memory bandwidth counts there.

    PYTHONPATH=src python3 benchmarks/probe_inv_norm.py [--shapes 4,16,1024;2,16,4096;1,16,16384] [--dims 64,128]
"""
import argparse

import torch
from triton.testing import do_bench

from tda.ops.triton import attention as tk


def launch(x1, x2, BR, warps, hat):
    B, H, M, D = x1.shape
    rows = B * H * M
    r = torch.empty((2, B, H, M), device=x1.device, dtype=torch.float32)
    xh = torch.empty((2, B, H, M, D), device=x1.device, dtype=x1.dtype) if hat else r
    tk._inv_norm[(tk._cdiv(rows, BR), 2)](x1, x2, r, xh, *x1.stride(), *x2.stride(), H, M, rows, EPS2=tk._EPS2,
                                          TWO=True, HEAD_D=D, BLOCK_R=BR, WRITE_HAT=hat, num_warps=warps)
    return r, (xh if hat else None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4,16,1024;2,16,4096;1,16,16384")
    ap.add_argument("--dims", default="64,128")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), "; inverse-norm pre-pass of two key views, us (do_bench median)")
    for s in a.shapes.split(";"):
        B, H, N = (int(x) for x in s.split(","))
        for D in (int(d) for d in a.dims.split(",")):
            x1, x2 = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            mb = 2 * x1.numel() * 2 / 2**20
            for hat in (False, True):
                base = 64 if D <= 64 else 32
                ref = launch(x1, x2, base, 4, hat)
                cells = []
                for BR, warps in ((base, 4), (32, 4), (64, 4), (128, 4), (128, 8), (256, 8), (512, 8)):
                    out = launch(x1, x2, BR, warps, hat)
                    same = torch.equal(out[0], ref[0]) and (not hat or torch.equal(out[1], ref[1]))
                    t = do_bench(lambda: launch(x1, x2, BR, warps, hat), warmup=25, rep=200) * 1e3
                    cells.append(f"{BR}/{warps}w {t:6.1f}{'' if same else ' DIFF'}")
                print(f"B={B} H={H} N={N} d={D} hat={int(hat)} ({mb:.0f} MiB read): " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
