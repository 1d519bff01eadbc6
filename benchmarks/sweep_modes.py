"""Kernel-only sweep of the forward's block, flags grain and screen at one shape (default the 1K row of the
benchmark, where most pairs hold a survivor and the 4K-chosen defaults may not fit), for training
(forward with flags + backward) and for inference (forward without flags: FOR_BWD off).

    PYTHONPATH=src python3 benchmarks/sweep_modes.py --shape 4,16,1024 --dims 64,128 [--warm-only]

--warm-only compiles every variant once without timing (run one process per head dim side by side, so
compilations overlap and fill Triton's cache; then time in a single process).
"""
import argparse
import itertools
import time

import torch
import triton

from tda.ops.triton import attention as tk

import bench_attention as ba

FWD = {64: [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 3)],
       128: [(128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3)]}
GRAINS = {64: [None, (64, 64), (64, 32), (32, 32)], 128: [None, (64, 64), (64, 32), (32, 32)]}


def bench(fn):
    return triton.testing.do_bench(fn, warmup=20, rep=60, return_mode="median")


def variants(D, fwds=None, screens=(True, False)):
    seen = []
    for fwd, grain, screen in itertools.product(fwds or FWD[D], GRAINS[D], screens):
        g = grain or fwd[:2]
        if fwd[0] % g[0] or fwd[1] % g[1] or (fwd, g, screen) in seen:
            continue
        seen.append((fwd, g, screen))
    return seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4,16,1024")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--kind", default="random")
    ap.add_argument("--warm-only", action="store_true")
    ap.add_argument("--inference-only", action="store_true",
                    help="only the inference forward, for the table's block (or --fwds), with/without the screen")
    ap.add_argument("--shard", default="0/1", help="i/n: only every n-th variant (for parallel --warm-only)")
    ap.add_argument("--fwds", default=None, help="forward blocks to try, e.g. '128,64,8,3;64,32,4,3'")
    ap.add_argument("--screens", default="1,0", help="screen settings to try (1 on, 0 off)")
    ap.add_argument("--row-screen", default="table", choices=["table", "1", "0"],
                    help="the inference forward's screen from row maxima (attention.ROW_SCREEN)")
    args = ap.parse_args()
    tk.ROW_SCREEN = {"table": None, "1": True, "0": False}[args.row_screen]
    B, H, N = (int(x) for x in args.shape.split(","))
    print(f"{torch.cuda.get_device_name()}; shape B={B} H={H} N={N}, {args.kind} inputs, kernel-only ms", flush=True)
    for D in (int(x) for x in args.dims.split(",")):
        q1, k1, q2, k2, v = ba.make_inputs(B, H, N, D, args.kind, seed=1)
        beta, lam = torch.ones(H, device="cuda"), torch.full((H,), 0.5, device="cuda")
        prep = ba.prepare(q1, k1, q2, k2, v, beta, lam)
        dout = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
        rows = []
        i, n = (int(x) for x in args.shard.split("/"))
        fwds = [tuple(int(x) for x in f.split(",")) for f in args.fwds.split(";")] if args.fwds else None
        vs = variants(D, fwds, [bool(int(x)) for x in args.screens.split(",")])[i::n]
        if args.inference_only:  # the table's forward block (or --fwds), with and without the screen
            vs = [(f, None, s) for f in (fwds or [tk._configs(D, q1.dtype, True, N)["fwd"]])
                  for s in (bool(int(x)) for x in args.screens.split(","))][i::n]
        for fwd, g, screen in vs:
            tk.set_config(fwd=fwd, flags=g)
            tk.SCREEN = screen
            cfg = tk._configs(D, q1.dtype, True, N)
            MT, NT = cfg["flags"]
            t0 = time.time()
            try:
                def f_train():
                    return tk._launch_fwd(*prep, 2.0, True, cfg, True)

                def f_inf():
                    return tk._launch_fwd(*prep, 2.0, True, cfg, True, for_bwd=False)
                _, flags, rq, rk = f_train()
                f_inf()
                tk.SKIP_EMPTY = 3
                f_inf()
                tk.SKIP_EMPTY = 1

                def f_bwd():
                    return tk._launch_bwd(dout, *prep, flags, rq, rk, 2.0, True, MT, NT, cfg)
                if not args.inference_only:
                    f_bwd()
                torch.cuda.synchronize()
                if args.warm_only:
                    print(f"  d={D} fwd={fwd} flags={cfg['flags']} screen={screen}: compiled "
                          f"({time.time() - t0:.0f}s)", flush=True)
                    continue
                t_inf = bench(f_inf)
                tk.SKIP_EMPTY = 3  # inference without any survivor test: PV on every pair
                f_inf()
                t_inf3 = bench(f_inf)
                tk.SKIP_EMPTY = 1
                t_f = bench(f_train) if not args.inference_only else float("nan")
                t_b = bench(f_bwd) if not args.inference_only else float("nan")
            except Exception as e:  # noqa: BLE001 (out of resources: report, go on)
                print(f"  d={D} fwd={fwd} flags={cfg['flags']} screen={screen}: failed "
                      f"{type(e).__name__}: {str(e)[:150]}", flush=True)
                tk.SKIP_EMPTY = 1
                continue
            finally:
                tk.set_config()
                tk.SCREEN = True
            rows.append((fwd, cfg["flags"], screen, t_f, t_b, t_inf, t_inf3))
            print(f"  d={D} fwd={fwd} flags={cfg['flags']} screen={screen}: train fwd {t_f:.3f} bwd {t_b:.3f} "
                  f"sum {t_f + t_b:.3f} | inference fwd {t_inf:.3f}, no test {t_inf3:.3f}", flush=True)
        if rows and not args.inference_only:
            best = min(rows, key=lambda r: r[3] + r[4])
            print(f"d={D} best training: fwd={best[0]} flags={best[1]} screen={best[2]} "
                  f"({best[3] + best[4]:.3f} ms)")
        if rows:
            best = min(rows, key=lambda r: min(r[5], r[6]))
            print(f"d={D} best inference: fwd={best[0]} screen={best[2]} "
                  f"{'no test' if best[6] < best[5] else 'skip'} ({min(best[5], best[6]):.3f} ms)", flush=True)


if __name__ == "__main__":
    main()
