"""A/B in one process of a switch of tda.ops.triton.attention at the benchmark shapes:
MERGED_BWD (the backward as one launch, tda_bwd_kernel, against dK/dV then dQ), LISTS (live-block lists in the
backward) or HEAVY_FIRST (the forward
and dQ grids run query blocks last-to-first). Kernel-only times (the launchers on prepared inputs) and the
full op (public function, eager; fwd under no_grad, fwd+bwd with .backward() on autograd's device thread),
alternating on / off twice and keeping each one's best, so host drift hits both alike; SDPA-flash for the
ratios.

    PYTHONPATH=src:benchmarks python3 benchmarks/ab_bwd_launch.py [--flag MERGED_BWD] [--kinds random,planted]
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import tda.ops as ops
from tda.ops.triton import attention as tk

import bench_attention as ba


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flag", default="MERGED_BWD", choices=["MERGED_BWD", "HEAVY_FIRST", "LISTS"])
    ap.add_argument("--kinds", default="random,planted")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in ba.SHAPES))
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; ms (median, best of 2); "
          f"on / off = tda.ops.triton.attention.{args.flag} True / False", flush=True)
    print("| inputs | B | H | N | d | kernels fwd on / off | kernels bwd on / off | fwd on / off | fwd+bwd on / off "
          "| SDPA fwd / fwd+bwd | fwd ratio on / off | fwd+bwd ratio on / off |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        B, H, N = (int(x) for x in shape.split("x"))
        for D in (int(x) for x in args.dims.split(",")):
            for kind in args.kinds.split(","):
                q1, k1, q2, k2, v = ba.make_inputs(B, H, N, D, kind)
                beta, lam = torch.ones(H, device="cuda"), torch.full((H,), 0.5, device="cuda")
                prep = ba.prepare(q1, k1, q2, k2, v, beta, lam)
                dout = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
                leaves = [t.detach().requires_grad_(True) for t in (q1, k1, q2, k2, v)]
                bl, ll = beta.clone().requires_grad_(True), lam.clone().requires_grad_(True)

                def f():
                    with torch.no_grad():
                        ops.threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, backend="triton")

                def fb():
                    ops.threshold_differential_attention(*leaves[:4], leaves[4], bl, ll,
                                                         backend="triton").backward(dout)

                def sdpa_f():
                    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        F.scaled_dot_product_attention(q1, k1, v, is_causal=True)

                def sdpa_fb():
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        F.scaled_dot_product_attention(leaves[0], leaves[1], leaves[4], is_causal=True).backward(dout)

                res = {}
                for _ in range(2):  # alternate: on, off, on, off
                    for on in (True, False):
                        setattr(tk, args.flag, on)
                        kf, kb = ba.kernel_times(prep, dout)
                        t = (kf, kb, ba.bench(f, rep=100), ba.bench(fb, grad_to_none=leaves + [bl, ll], rep=100))
                        res[on] = tuple(min(a, b) for a, b in zip(res.get(on, (1e9,) * 4), t))
                setattr(tk, args.flag, True)
                sf, sfb = ba.bench(sdpa_f, rep=100), ba.bench(sdpa_fb, grad_to_none=leaves, rep=100)
                a, b = res[True], res[False]
                cols = " | ".join(f"{a[i]:.3f} / {b[i]:.3f}" for i in range(4))
                print(f"| {kind} | {B} | {H} | {N} | {D} | {cols} | {sf:.3f} / {sfb:.3f} | {a[2] / sf:.2f} / "
                      f"{b[2] / sf:.2f} | {a[3] / sfb:.2f} / {b[3] / sfb:.2f} |", flush=True)
                del q1, k1, q2, k2, v, leaves, prep
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
