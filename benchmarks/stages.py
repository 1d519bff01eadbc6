"""Where the time goes in the rows that miss issue 3's targets: each stage of the op timed alone, from CUDA
graphs (GPU time only, no host work), next to SDPA-flash in the same process.

Stages are left out by changing the inputs or the flags, not the kernels, so every variant runs the shipped
code:
  prepass          the inverse-norm pre-pass alone (keys' norms, and the unit keys where the forward scores them)
  fwd              the whole forward (pre-pass + forward kernel), training (flags, query norms) or inference
  fwd, none live   the same with beta = 100: tau above every score, so no pair is live -- the screen / survivor
                   test and the loop's control flow without the exact path (exceedances, V, PV) of live pairs
  fwd, all exact   SKIP_EMPTY = 3: no survivor test at all, every visited pair takes the exact path
  bwd              the backward kernels on the forward's flags
  bwd, none live   on all-zero flags: the launch and the programs with nothing to do (and the scalar sums)
  bwd, all pairs   on all-one flags: every visited pair recomputed
So "fwd - fwd, none live" is what the live pairs cost, "fwd, none live - prepass" the floor of the key loop,
and "bwd - bwd, none live" the backward's work on the live pairs.

    PYTHONPATH=src python3 benchmarks/stages.py [--cases 4,16,1024,64,random;...] [--prepass-sweep]
    PYTHONPATH=src python3 benchmarks/stages.py --ab 'default;skip=0;flag_bits=64' --cases ...   (A/B of switches)
"""
import argparse

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import bench_attention as ba
import tda.ops as ops
from tda.ops.triton import attention as tk
from tda.ops.triton.common import inv_norm_kernel

MISSED = ("4,16,1024,64,random;4,16,1024,64,planted;4,16,1024,128,random;4,16,1024,128,planted;"
          "1,16,8192,64,planted;1,16,16384,64,planted;1,16,8192,128,planted;1,16,16384,128,planted;"
          "1,16,8192,64,random;1,16,8192,128,random")


def graphed(fn):
    """Median ms of fn replayed from a CUDA graph (warm-up on a side stream first; Triton compiles there)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(g.replay, warmup=25, rep=150, return_mode="median")
    del g
    return ms


def case(B, H, N, D, kind, full):
    q1, k1, q2, k2, v = ba.make_inputs(B, H, N, D, kind, seed=1)
    lam = torch.full((H,), 0.5, device="cuda")
    one, high = torch.ones(H, device="cuda"), torch.full((H,), 100.0, device="cuda")
    prep = {b: ba.prepare(q1, k1, q2, k2, v, beta, lam) for b, beta in (("1", one), ("100", high))}
    cfg = tk._configs(D, q1.dtype, True, N)
    MT, NT = cfg["flags"]
    hat_t = bool(cfg.get("unit_keys", (False, False))[0])
    hat_i = bool(cfg.get("unit_keys", (False, False))[1]) and len(cfg["infer"]) == 5 and cfg["infer"][4]
    dout = torch.randn_like(q1)
    t = {}
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        qs, ks, vs = (x.detach().clone().requires_grad_() for x in (q1, k1, v))

        def sdpa_fb():
            F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).backward(dout)
        with torch.no_grad():
            t["SDPA fwd"] = graphed(lambda: F.scaled_dot_product_attention(q1, k1, v, is_causal=True))
        if full:
            t["SDPA fwd+bwd"] = graphed(sdpa_fb)
    t["prepass (inference)"] = graphed(lambda: tk._inv_norms(k1, k2, hat=hat_i))
    t["fwd inference"] = graphed(lambda: tk._launch_fwd(*prep["1"], 2.0, True, cfg, True, for_bwd=False))
    t["fwd inference, none live"] = graphed(lambda: tk._launch_fwd(*prep["100"], 2.0, True, cfg, True,
                                                                   for_bwd=False))
    saved = tk.SKIP_EMPTY
    tk.SKIP_EMPTY = 3
    try:
        t["fwd inference, all exact"] = graphed(lambda: tk._launch_fwd(*prep["1"], 2.0, True, cfg, True,
                                                                       for_bwd=False))
        if full:
            t["fwd training, all exact"] = graphed(lambda: tk._launch_fwd(*prep["1"], 2.0, True, cfg, True))
    finally:
        tk.SKIP_EMPTY = saved
    if full:
        t["prepass (training)"] = graphed(lambda: tk._inv_norms(k1, k2, hat=hat_t))
        t["fwd training"] = graphed(lambda: tk._launch_fwd(*prep["1"], 2.0, True, cfg, True))
        t["fwd training, none live"] = graphed(lambda: tk._launch_fwd(*prep["100"], 2.0, True, cfg, True))
        _, flags, rq, rk = tk._launch_fwd(*prep["1"], 2.0, True, cfg, True)
        live = flags.float().mean().item()
        t["bwd"] = graphed(lambda: tk._launch_bwd(dout, *prep["1"], flags, rq, rk, 2.0, True, MT, NT, cfg))
        zero, ones = torch.zeros_like(flags), torch.ones_like(flags)
        t["bwd, none live"] = graphed(lambda: tk._launch_bwd(dout, *prep["1"], zero, rq, rk, 2.0, True, MT, NT, cfg))
        t["bwd, all pairs"] = graphed(lambda: tk._launch_bwd(dout, *prep["1"], ones, rq, rk, 2.0, True, MT, NT, cfg))
        t["live flags"] = live
    return t


def parse_variants(text):
    """'default;skip=0;flag_bits=64,LISTS=0' -> [(), (("skip", 0),), ...]: lower-case names are block-table
    overrides (tk.set_config; ':'-separated tuples), upper-case ones module switches (ints; 1/0 for booleans)."""
    out = []
    for v in text.split(";"):
        items = []
        for kv in ([] if v == "default" else v.split(",")):
            name, val = kv.split("=")
            if name.islower():
                vals = tuple(int(x) for x in val.split(":"))
                items.append((name, vals[0] if len(vals) == 1 else vals))
            else:
                cur = getattr(tk, name)
                items.append((name, None if val == "none" else bool(int(val)) if isinstance(cur, bool) else int(val)))
        out.append(tuple(items))
    return out


def ab(cases, variants, rounds, log):
    """Each variant's graphed training forward and backward (on its own flags; launchers only), alternating
    the variants over rounds (best of each), against SDPA-flash's fwd+bwd in the same process; and whether the
    variant's output and gradients equal the first variant's bit for bit."""
    saved = {n: getattr(tk, n) for v in variants for n, _ in v if not n.islower()}

    def use(v):
        for n, x in saved.items():
            setattr(tk, n, x)
        for n, x in v:
            if not n.islower():
                setattr(tk, n, x)
        tk.set_config(**{n: x for n, x in v if n.islower()})
    label = lambda v: ",".join(f"{n}={x}" for n, x in v) or "default"  # noqa: E731
    log(f"\n## A/B, graphed us (best of {rounds} alternating rounds): variants {[label(v) for v in variants]}")
    for c in cases.split(";"):
        B, H, N, D, kind = c.split(",")
        B, H, N, D = int(B), int(H), int(N), int(D)
        q1, k1, q2, k2, v = ba.make_inputs(B, H, N, D, kind, seed=1)
        beta, lam = torch.ones(H, device="cuda"), torch.full((H,), 0.5, device="cuda")
        prep = ba.prepare(q1, k1, q2, k2, v, beta, lam)
        dout = torch.randn_like(q1)
        leaves = [t.detach().clone().requires_grad_() for t in (q1, k1, q2, k2, v, beta, lam)]

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            qs, ks, vs = (x.detach().clone().requires_grad_() for x in (q1, k1, v))
            t_sdpa, _ = ba.graphed_time(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
                                        .backward(dout), [qs, ks, vs])
        results, best = [], {}
        for var in variants:
            use(var)
            out = ops.threshold_differential_attention(*leaves)
            results.append([out.detach()] + list(torch.autograd.grad(out, leaves, dout)))
        same = ["same" if all(torch.equal(a, b) for a, b in zip(r, results[0])) else "DIFF" for r in results]
        del results
        for _ in range(rounds):
            for var in variants:
                use(var)
                cfg = tk._configs(D, q1.dtype, True, N)
                MT, NT = cfg["flags"]
                _, flags, rq, rk = tk._launch_fwd(*prep, 2.0, True, cfg, True)
                t_f = graphed(lambda: tk._launch_fwd(*prep, 2.0, True, cfg, True))
                t_b = graphed(lambda: tk._launch_bwd(dout, *prep, flags, rq, rk, 2.0, True, MT, NT, cfg))
                t_op = t_f + t_b  # (the public op's graphed fwd+bwd: bench_attention.py --graphs)
                o = best.get(var, (9e9, 9e9, 9e9))
                best[var] = (min(o[0], t_f), min(o[1], t_b), min(o[2], t_op))
        use(())
        log(f"{kind:7s} B={B} H={H} N={N} d={D}: SDPA fwd+bwd {t_sdpa * 1e3:.1f}")
        for (var, (f, b, o)), sm in zip(best.items(), same):
            log(f"    {label(var):36s} fwd {f * 1e3:7.1f}  bwd {b * 1e3:7.1f}  sum {(f + b) * 1e3:7.1f}  "
                f"({o / t_sdpa:.3f}x SDPA fwd+bwd)  [{sm}]")


def prepass_sweep(log):
    """The pre-pass's block of rows and warps, against the shipped choice (BLOCK_R 64 at d <= 64, else 32; 4
    warps): same output bit for bit, time from CUDA graphs."""
    log("\n## pre-pass sweep (us, graphed; * = shipped)")
    for B, H, N, D in ((4, 16, 1024, 64), (4, 16, 1024, 128), (1, 16, 8192, 64), (1, 16, 8192, 128)):
        k1, k2 = (torch.randn(B, H, N, D, device="cuda").bfloat16() for _ in range(2))
        rows = B * H * N
        for hat in (False, True):
            ref = tk._inv_norms(k1, k2, hat=hat)
            res = []
            for br in (16, 32, 64, 128, 256):
                for w in (1, 2, 4, 8):
                    r = torch.empty_like(ref[0] if hat else ref)
                    xh = torch.empty_like(ref[1]) if hat else r

                    def run():
                        inv_norm_kernel[(triton.cdiv(rows, br), 2)](
                            k1, k2, r, xh, *k1.stride(), *k2.stride(), H, N, rows, EPS2=tk._EPS2, TWO=True,
                            HEAD_D=D, BLOCK_R=br, WRITE_HAT=hat, num_warps=w)
                    try:
                        ms = graphed(run)
                    except Exception as e:  # noqa: BLE001 (a config that does not compile: say so)
                        res.append(f"{br}/{w}: {type(e).__name__}")
                        continue
                    same = torch.equal(r, ref[0] if hat else ref) and (not hat or torch.equal(xh, ref[1]))
                    star = "*" if (br == (64 if D <= 64 else 32) and w == 4) else ""
                    res.append(f"{br}/{w}{star}: {ms * 1e3:.1f}{'' if same else ' DIFF'}")
            log(f"B={B} H={H} N={N} d={D} hat={int(hat)}: " + "  ".join(res))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=MISSED, help="';'-separated B,H,N,d,kind")
    ap.add_argument("--prepass-sweep", action="store_true")
    ap.add_argument("--ab", default=None, metavar="VARIANTS",
                    help="instead of the stages: A/B of ';'-separated variants (see parse_variants) on --cases")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; ms from CUDA "
        "graphs (median of do_bench); ratios to SDPA-flash in the same process")
    if args.ab:
        ab(args.cases, parse_variants(args.ab), args.rounds, log)
        return
    for c in args.cases.split(";"):
        B, H, N, D, kind = c.split(",")
        B, H, N, D = int(B), int(H), int(N), int(D)
        full = N <= 4096  # the missed fwd+bwd rows are at 1K; past it only the forward misses
        t = case(B, H, N, D, kind, full)
        sf, sfb = t["SDPA fwd"], t.get("SDPA fwd+bwd")
        log(f"\n## {kind} B={B} H={H} N={N} d={D}" + (f" (live flags {t.pop('live flags'):.3f})" if full else ""))
        for name, ms in t.items():
            ref = sfb if (name.startswith("bwd") or name == "SDPA fwd+bwd") else sf
            extra = f"  ({ms / sf:.2f}x SDPA fwd)" if name.startswith("bwd") else ""
            if name.startswith("bwd") and sfb is not None:
                extra = f"  ({ms / (sfb - sf):.2f}x SDPA bwd = fwd+bwd - fwd)"
            elif ref is not None and not name.startswith("SDPA"):
                extra = f"  ({ms / ref:.2f}x SDPA fwd)"
            log(f"  {name:28s} {ms * 1e3:9.1f} us{extra}")
        if full:
            tot = t["fwd training"] + t["bwd"]
            log(f"  {'TDA fwd+bwd (sum of stages)':28s} {tot * 1e3:9.1f} us  ({tot / sfb:.2f}x SDPA fwd+bwd)")
    if args.prepass_sweep:
        prepass_sweep(log)


if __name__ == "__main__":
    main()
