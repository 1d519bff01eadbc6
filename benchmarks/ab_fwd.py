"""A/B of a forward switch of tda.ops.triton.attention (e.g. HEAVY_FIRST, SCREEN) in one process: kernel-only
inference and training forward, alternating the switch's values over rounds and keeping each one's best
median, next to SDPA-flash's forward at the same shape.

    PYTHONPATH=src python3 benchmarks/ab_fwd.py --flag HEAVY_FIRST --values 1,0 [--rounds 2]

(values: integers, or none; 1/0 become True/False for boolean switches). Two switches were measured with it
and removed, both slower at every row (docs/results/kernels/fwd-probe/): LOOP_STAGES (tl.range(num_stages=S)
on the forward's key loop) and RK_PREFETCH (the inverse key norms loaded one key block ahead in registers).
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import bench_attention as ba
from tda.ops.triton import attention as tk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="2,16,4096;1,16,8192;1,16,16384")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--kinds", default="random,planted")
    ap.add_argument("--flag", default="HEAVY_FIRST", help="the attention module switch to vary")
    ap.add_argument("--values", default="1,0")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warm-only", action="store_true", help="compile every variant (one call each), no timing")
    args = ap.parse_args()
    cur = getattr(tk, args.flag)
    variants = [None if s == "none" else (bool(int(s)) if isinstance(cur, bool) else int(s))
                for s in args.values.split(",")]
    print(f"{torch.cuda.get_device_name()}; kernel-only forward ms (best of {args.rounds} alternating rounds of "
          f"do_bench medians); {args.flag} values {variants}", flush=True)
    for shape in args.shapes.split(";"):
        B, H, N = (int(x) for x in shape.split(","))
        for D in (int(x) for x in args.dims.split(",")):
            for kind in args.kinds.split(","):
                q1, k1, q2, k2, v = ba.make_inputs(B, H, N, D, kind, seed=1)
                beta, lam = torch.ones(H, device="cuda"), torch.full((H,), 0.5, device="cuda")
                prep = ba.prepare(q1, k1, q2, k2, v, beta, lam)
                cfg = tk._configs(D, q1.dtype, True, N)
                if args.warm_only:
                    for ls in variants:
                        setattr(tk, args.flag, ls)
                        tk._launch_fwd(*prep, 2.0, True, cfg, True, for_bwd=False)
                        tk._launch_fwd(*prep, 2.0, True, cfg, True)
                    torch.cuda.synchronize()
                    continue
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
                    t_sdpa = ba.bench(lambda: F.scaled_dot_product_attention(q1, k1, v, is_causal=True))
                best = {}
                for _ in range(args.rounds):
                    for ls in variants:
                        setattr(tk, args.flag, ls)
                        t_inf = ba.bench(lambda: tk._launch_fwd(*prep, 2.0, True, cfg, True, for_bwd=False))
                        t_tr = ba.bench(lambda: tk._launch_fwd(*prep, 2.0, True, cfg, True))
                        o = best.get(ls, (9e9, 9e9))
                        best[ls] = (min(o[0], t_inf), min(o[1], t_tr))
                setattr(tk, args.flag, cur)
                row = " | ".join(f"{ls}: inf {a:.3f} ({a / t_sdpa:.2f}x) train {b:.3f} ({b / t_sdpa:.2f}x)"
                                 for ls, (a, b) in best.items())
                print(f"{kind:7s} B={B} H={H} N={N} d={D}: SDPA fwd {t_sdpa:.3f} | {row}", flush=True)


if __name__ == "__main__":
    main()
