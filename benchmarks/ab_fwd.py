"""A/B of forward switches of tda.ops.triton.attention (e.g. HEAVY_FIRST, SCREEN_HAT, UNIT_KEYS) in one
process: kernel-only inference and training forward (and with --bwd the backward on each variant's flags),
alternating the variants over rounds and keeping each one's best median, next to SDPA-flash's forward at the
same shape.

    PYTHONPATH=src python3 benchmarks/ab_fwd.py --flag HEAVY_FIRST --values 1,0 [--rounds 2]
    PYTHONPATH=src python3 benchmarks/ab_fwd.py --bwd \
        --variants 'SCREEN_HAT=0,UNIT_KEYS=0;SCREEN_HAT=1,UNIT_KEYS=0;SCREEN_HAT=1,UNIT_KEYS=1'

(values: integers, or none; 1/0 become True/False for boolean switches; lower-case names are block-table
overrides for tk.set_config, ':'-separated, e.g. 'infer=64:32:4:2,maxnreg=0:168,tma=0:2' -- the survivor test
is on for an infer of four numbers). Each row also says whether each variant's inference output equals the
first variant's bit for bit. Three switches were measured with
it and removed, each slower at every row: LOOP_STAGES (tl.range(num_stages=S) on the forward's key loop) and
RK_PREFETCH (the inverse key norms loaded one key block ahead in registers; docs/results/kernels/fwd-probe/),
and FWD_LISTS (a screen-only phase, then the exact path over compacted lists of the flagged blocks;
docs/results/kernels/unit-keys/).
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
    ap.add_argument("--variants", default=None,
                    help="instead of --flag/--values: ';'-separated variants, each 'default' or comma-separated "
                         "NAME=VALUE switch settings, e.g. 'default;SCREEN_HAT=0,UNIT_KEYS=0'")
    ap.add_argument("--bwd", action="store_true", help="also time the backward on each variant's flags")
    ap.add_argument("--warm-only", action="store_true", help="compile every variant (one call each), no timing")
    args = ap.parse_args()

    def parse(name, text):
        if name.islower():  # a set_config key: ':'-separated ints (infer=64:32:4:2 gets its survivor test)
            vals = tuple(int(x) for x in text.split(":"))
            return (*vals, True) if name == "infer" and len(vals) == 4 else (vals[0] if len(vals) == 1 else vals)
        cur = getattr(tk, name)
        return None if text == "none" else (bool(int(text)) if isinstance(cur, bool) else int(text))
    if args.variants:
        variants = [tuple((kv.split("=")[0], parse(*kv.split("="))) for kv in v.split(",")) if v != "default"
                    else () for v in args.variants.split(";")]
    else:
        variants = [((args.flag, parse(args.flag, x)),) for x in args.values.split(",")]
    saved = {n: getattr(tk, n) for v in variants for n, _ in v if not n.islower()}

    def use(v):
        """Module switches (upper case) and block-table overrides (lower case: tk.set_config)."""
        for n, x in saved.items():
            setattr(tk, n, x)
        for n, x in v:
            if not n.islower():
                setattr(tk, n, x)
        tk.set_config(**{n: x for n, x in v if n.islower()})
    label = lambda v: ",".join(f"{n}={x}" for n, x in v) or "default"  # noqa: E731
    print(f"{torch.cuda.get_device_name()}; kernel-only forward ms (best of {args.rounds} alternating rounds of "
          f"do_bench medians); variants {[label(v) for v in variants]}", flush=True)
    for shape in args.shapes.split(";"):
        B, H, N = (int(x) for x in shape.split(","))
        for D in (int(x) for x in args.dims.split(",")):
            for kind in args.kinds.split(","):
                q1, k1, q2, k2, v = ba.make_inputs(B, H, N, D, kind, seed=1)
                beta, lam = torch.ones(H, device="cuda"), torch.full((H,), 0.5, device="cuda")
                prep = ba.prepare(q1, k1, q2, k2, v, beta, lam)
                dout = torch.randn_like(q1)
                cf = lambda: tk._configs(D, q1.dtype, True, N)  # noqa: E731 (the current variant's)

                def bwd():
                    cfg = cf()
                    _, flags, rq, rk = tk._launch_fwd(*prep, 2.0, True, cfg, True)
                    MT, NT = cfg["flags"]
                    return lambda: tk._launch_bwd(dout, *prep, flags, rq, rk, 2.0, True, MT, NT, cfg)
                if args.warm_only:
                    for var in variants:
                        use(var)
                        tk._launch_fwd(*prep, 2.0, True, cf(), True, for_bwd=False)
                        f_bwd = bwd()  # (runs the training forward)
                        if args.bwd:
                            f_bwd()
                    torch.cuda.synchronize()
                    continue
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
                    t_sdpa = ba.bench(lambda: F.scaled_dot_product_attention(q1, k1, v, is_causal=True))
                # each variant's inference output against the first variant's: equal bit for bit, or the largest
                # difference (a variant that changes the arithmetic, e.g. UNIT_KEYS, shows here)
                outs = []
                for var in variants:
                    use(var)
                    outs.append(tk._launch_fwd(*prep, 2.0, True, cf(), True, for_bwd=False)[0])
                same = ["same" if torch.equal(o, outs[0]) else f"diff {(o - outs[0]).abs().max().item():.1e}"
                        for o in outs]
                del outs
                best = {}
                for _ in range(args.rounds):
                    for var in variants:
                        use(var)
                        t_inf = ba.bench(lambda: tk._launch_fwd(*prep, 2.0, True, cf(), True, for_bwd=False))
                        t_tr = ba.bench(lambda: tk._launch_fwd(*prep, 2.0, True, cf(), True))
                        t_b = ba.bench(bwd()) if args.bwd else float("nan")
                        o = best.get(var, (9e9, 9e9, 9e9))
                        best[var] = (min(o[0], t_inf), min(o[1], t_tr), min(o[2], t_b))
                use(())
                row = " | ".join(f"{label(var)}: inf {a:.3f} ({a / t_sdpa:.2f}x) train {b:.3f} ({b / t_sdpa:.2f}x)"
                                 + (f" bwd {c:.3f}" if args.bwd else "") + f" [{sm}]"
                                 for (var, (a, b, c)), sm in zip(best.items(), same))
                print(f"{kind:7s} B={B} H={H} N={N} d={D}: SDPA fwd {t_sdpa:.3f} | {row}", flush=True)


if __name__ == "__main__":
    main()
