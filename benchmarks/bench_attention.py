"""Speed and memory of the fused TDA kernel vs the reference op and SDPA flash softmax (GPU, bf16, causal).

For each (B, H, N) and head dim d: median time of the forward and of forward+backward (triton's do_bench,
CUDA events), TFLOP/s (dense-equivalent: no credit for skipped blocks; causal halves the count) and peak
extra memory of forward+backward, on random inputs and on inputs with realistic sparsity ("planted": every
query copies one earlier key, 85% of them within the last 16 positions, the rest anywhere before it; and
"trained": q/k/v, beta and lam recorded from a trained TDA model's layers over real text, --trained, see
benchmarks/trained_inputs.py). Writes a Markdown table (--out) carrying the command line and the GPU name.

    PYTHONPATH=src python3 benchmarks/bench_attention.py --out docs/benchmarks.md [--sweep] [--quick] [--graphs]

--graphs adds the inference forward (no_grad) and fwd+bwd replayed from CUDA graphs (torch.cuda.graph, autograd
inside the capture) for TDA and SDPA alike: no host work per call, so at short lengths, where the host's
launches outlast the kernels, they are the GPU's time alone.
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import tda.ops as ops
import trained_inputs
from tda.ops.triton import attention as tk

SHAPES = [(4, 16, 1024), (2, 16, 4096), (1, 16, 8192), (1, 16, 16384)]
REF_MAX_N = 4096  # the chunked reference gets slow beyond this


def bench(fn, grad_to_none=None, rep=200):
    return triton.testing.do_bench(fn, warmup=50, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def make_inputs(B, H, N, D, kind, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda: torch.randn(B, H, N, D, generator=g, device="cuda")  # noqa: E731
    q1, k1, q2, k2, v = r(), r(), r(), r(), r()
    if kind == "planted":
        i = torch.arange(N, device="cuda")

        def sources():
            local = (i - torch.randint(0, 16, (N,), generator=g, device="cuda")).clamp_min(0)
            far = (torch.rand(N, generator=g, device="cuda") * (i + 1)).floor().long()
            return torch.where(torch.rand(N, generator=g, device="cuda") < 0.85, local, far)
        q1 = k1[:, :, sources()] + 0.5 * q1
        q2 = k2[:, :, sources()] + 0.5 * q2
    return [t.to(torch.bfloat16) for t in (q1, k1, q2, k2, v)]


def tile_density(q1, k1, q2, k2, v, beta, lam):
    """Fraction of the visited (query block, key block) pairs holding any survivor (kappa = 1, p = 2)."""
    return trained_inputs.tile_density(q1, k1, q2, k2, v, beta, lam)


def prepare(q1, k1, q2, k2, v, beta, lam):
    """What the public op hands the kernels: raw q/k (normalised inside), beta (H,), the cached beta-free
    tau row factor (M,) fp32 and lam (H,)."""
    M, D = q1.shape[2], q1.shape[3]
    return (q1, k1, q2, k2, v, beta, tk._tau_scale(M, 0, 1.0, D, q1.device, torch.float32), lam)


def kernel_times(prep, dout):
    """Kernel-only medians (ms): the forward launches (inverse-norm pre-pass + forward kernel, fused
    normalisation), and the backward (one launch by default: attention.MERGED_BWD), on prepared inputs."""
    D = prep[0].shape[-1]
    cfg = tk._configs(D, prep[0].dtype, True, prep[1].shape[2])
    MT, NT = cfg["flags"]
    _, flags, rq, rk = tk._launch_fwd(*prep, 2.0, True, cfg, True)
    t_f = bench(lambda: tk._launch_fwd(*prep, 2.0, True, cfg, True), rep=100)
    t_b = bench(lambda: tk._launch_bwd(dout, *prep, flags, rq, rk, 2.0, True, MT, NT, cfg), rep=100)
    return t_f, t_b


def kernel_time_inference(prep):
    """Kernel-only median (ms) of the inference forward (no flags: what a no_grad call launches)."""
    D = prep[0].shape[-1]
    cfg = tk._configs(D, prep[0].dtype, True, prep[1].shape[2])
    return bench(lambda: tk._launch_fwd(*prep, 2.0, True, cfg, True, for_bwd=False), rep=100)


def graphed_time(step, grads):
    """Median ms of step() (a forward and backward) replayed from a CUDA graph, or None (and why) when the
    capture fails. Warm-up on a side stream first, as torch.cuda.graph requires (Triton compiles there)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        for t in grads:
            t.grad = None  # the captured backward then writes fresh .grad tensors of the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graph.replay()
        torch.cuda.synchronize()
        ms = bench(graph.replay)
        del graph
        for t in grads:
            t.grad = None
        return ms, None
    except Exception as e:  # noqa: BLE001 (report it in the row, the eager timings stand)
        torch.cuda.synchronize()
        for t in grads:
            t.grad = None
        return None, f"{type(e).__name__}: {str(e)[:200]}"


def run_case(B, H, N, D, kind, with_ref=True, graphs=False, inputs=None):
    """One row. inputs: (q1, k1, q2, k2, v, beta, lam) to use (trained inputs) instead of make_inputs' with
    beta = 1, lam = 0.5."""
    if inputs is None:
        q1, k1, q2, k2, v = make_inputs(B, H, N, D, kind)
        beta = torch.ones(H, device="cuda")
        lam = torch.full((H,), 0.5, device="cuda")
    else:
        q1, k1, q2, k2, v, beta, lam = inputs
    res = {"B": B, "H": H, "N": N, "D": D, "kind": kind}
    res["density"] = tile_density(q1, k1, q2, k2, v, beta, lam)
    dout = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
    res["k_fwd"], res["k_bwd"] = kernel_times(prepare(q1, k1, q2, k2, v, beta, lam), dout)
    res["k_inf"] = kernel_time_inference(prepare(q1, k1, q2, k2, v, beta, lam))
    leaves = [t.detach().requires_grad_(True) for t in (q1, k1, q2, k2, v)]
    betal, laml = beta.clone().requires_grad_(True), lam.clone().requires_grad_(True)

    def tda_fwd(backend, grad):
        xs = leaves if grad else [t.detach() for t in leaves]
        return ops.threshold_differential_attention(*xs[:4], xs[4], betal if grad else beta, laml if grad else lam,
                                                    backend=backend)

    def sdpa_fwd(grad):
        xs = leaves if grad else [t.detach() for t in leaves]
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(xs[0], xs[1], xs[4], is_causal=True)

    impls = {"tda": lambda g: tda_fwd("triton", g), "sdpa": sdpa_fwd}
    if with_ref and N <= REF_MAX_N:
        impls["ref"] = lambda g: tda_fwd("reference", g)
    for name, f in impls.items():
        try:
            with torch.no_grad():
                res[f"{name}_fwd"] = bench(lambda: f(False))
            grads = leaves + [betal, laml]
            res[f"{name}_fb"] = bench(lambda: f(True).backward(dout), grad_to_none=grads)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            f(True).backward(dout)
            torch.cuda.synchronize()
            res[f"{name}_mem"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            for t in grads:
                t.grad = None
        except torch.OutOfMemoryError:
            res[f"{name}_fwd"] = res[f"{name}_fb"] = res[f"{name}_mem"] = None
            torch.cuda.empty_cache()
    if graphs:  # the inference forward and fwd+bwd replayed from CUDA graphs: the GPU's time alone (docstring)
        for name in ("tda", "sdpa"):
            f, grads = impls[name], leaves + [betal, laml]

            def infer(f=f):
                with torch.no_grad():
                    f(False)
            res[f"{name}_fwd_graph"], err_f = graphed_time(infer, [])
            res[f"{name}_fb_graph"], err = graphed_time(lambda: f(True).backward(dout), grads)
            if err or err_f:
                res[f"{name}_graph_error"] = err or err_f
    flop_sdpa = 4 * B * H * N * N * D / 2
    res["tda_fwd_tflops"] = 6 * B * H * N * N * D / 2 / (res["tda_fwd"] * 1e-3) / 1e12
    res["tda_fb_tflops"] = 28 * B * H * N * N * D / 2 / (res["tda_fb"] * 1e-3) / 1e12
    res["sdpa_fwd_tflops"] = flop_sdpa / (res["sdpa_fwd"] * 1e-3) / 1e12
    res["sdpa_fb_tflops"] = 3.5 * flop_sdpa / (res["sdpa_fb"] * 1e-3) / 1e12
    return res


FWD_CANDS = {64: [(128, 64, 4, 3), (128, 128, 8, 2), (128, 64, 8, 3)],
             128: [(128, 64, 8, 2), (64, 64, 4, 3), (128, 64, 8, 3)]}
# d = 128 backward: more small-tile candidates, since the fused normalisation's epilogue raised register
# pressure (spills) after the last sweep
DKDV_CANDS = {64: [(64, 64, 4, 2), (64, 128, 8, 2), (32, 128, 8, 3)],
              128: [(64, 64, 8, 2), (32, 64, 4, 3), (64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2)]}
DQ_CANDS = {64: [(64, 64, 4, 2), (128, 64, 8, 2)],
            128: [(64, 64, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)]}


def sweep(D, B=2, H=16, N=4096, log=print):
    """Pick block configs on one shape from kernel-only times: forward first, then dK/dV and dQ given the
    forward's flags; then the forward's survivor-skip mode and the backward's prefetch."""
    q1, k1, q2, k2, v = make_inputs(B, H, N, D, "random", seed=1)
    beta, lam = torch.ones(H, device="cuda"), torch.full((H,), 0.5, device="cuda")
    prep = prepare(q1, k1, q2, k2, v, beta, lam)
    dout = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
    best = {}
    for key, cands in (("fwd", FWD_CANDS[D]), ("dkdv", DKDV_CANDS[D]), ("dq", DQ_CANDS[D])):
        times = {}
        for c in cands:
            tk.set_config(**{**best, key: c})
            try:
                t_f, t_b = kernel_times(prep, dout)
            except Exception as e:  # noqa: BLE001 (out of shared memory / registers: skip the config)
                log(f"  d={D} {key} {c}: failed ({type(e).__name__}: {str(e)[:120]})")
                continue
            times[c] = t_f if key == "fwd" else t_b
            log(f"  d={D} {key} {c}: kernels fwd {t_f:.3f} ms, bwd {t_b:.3f} ms")
        best[key] = min(times, key=times.get)
    # the survivor flags' grain: the forward block (default) or finer, which lets the backward's smaller
    # blocks skip more pairs; chosen by total kernel time
    BM, BN = best["fwd"][:2]
    grains = {}
    for g in [(BM, BN), (64, 64), (32, 32)]:
        if BM % g[0] or BN % g[1] or g in grains:
            continue
        tk.set_config(**best, flags=g)
        try:
            grains[g] = sum(kernel_times(prep, dout))
        except Exception as e:  # noqa: BLE001
            log(f"  d={D} flags {g}: failed ({type(e).__name__}: {str(e)[:120]})")
            continue
        log(f"  d={D} flags {g}: kernels fwd+bwd {grains[g]:.3f} ms")
    best["flags"] = min(grains, key=grains.get)
    tk.set_config(**best)
    modes = {}
    for skip, prefetch, screen in ((1, False, True), (1, False, False), (0, False, False), (3, False, False),
                                   (1, True, True)):
        tk.SKIP_EMPTY, tk.PREFETCH, tk.SCREEN = skip, prefetch, screen
        modes[(skip, prefetch, screen)] = m = kernel_times(prep, dout)
        log(f"  d={D} {best}: kernels fwd {m[0]:.3f} ms, bwd {m[1]:.3f} ms "
            f"(SKIP_EMPTY={skip}, PREFETCH={prefetch}, SCREEN={screen})")
    # the forward mode (skip, screen) by total kernel time (mode 3 also makes the backward dense), prefetch
    # by bwd time
    best["skip"], _, best["screen"] = min((m for m in modes if not m[1]), key=lambda m: sum(modes[m]))
    best["prefetch"] = modes[(1, True, True)][1] < modes[(1, False, True)][1]
    log(f"  d={D} chosen: {best}")
    use_config(None)
    return best


def use_config(best):
    if best is None:
        tk.set_config()
        tk.SKIP_EMPTY, tk.PREFETCH, tk.SCREEN = 1, False, True
        return
    tk.set_config(**{k: v for k, v in best.items() if k in ("fwd", "dkdv", "dq", "flags")})
    tk.SKIP_EMPTY, tk.PREFETCH, tk.SCREEN = best["skip"], best["prefetch"], best["screen"]


def cases(kinds, trained_models, B, H, N, D, data_dir, log):
    """(kind label, inputs or None) for one shape: random and planted make their own inputs; trained yields
    one case per group of layers of the head dim's checkpoint (none when --trained has no model for D)."""
    for kind in kinds:
        if kind != "trained":
            yield kind, None
            continue
        if D not in trained_models:
            log(f"trained B={B} H={H} N={N} d={D}: no checkpoint for d={D} (--trained), skipped")
            continue
        path, model = trained_models[D]
        layers = trained_inputs.capture(model, trained_inputs.token_batch(data_dir, N, B))
        groups = trained_inputs.heads_for_bench(layers, H)
        del layers
        for L, inputs in groups:
            per = H // model.config.n_head
            yield f"trained L{L}-{L + per - 1}", inputs


def fmt(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--json", default=None)
    ap.add_argument("--sweep", action="store_true", help="tune block configs on (2, 16, 4K) first")
    ap.add_argument("--quick", action="store_true", help="only the first two shapes")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--kinds", default="random,planted", help="input kinds to run (random, planted, trained)")
    ap.add_argument("--trained", default="", metavar="D=CKPT,...",
                    help="trained inputs: a TDA checkpoint per head dim (e.g. 64=runs/a/last.pt,128=runs/b/last.pt); "
                         "each case stacks consecutive layers' heads to H (benchmarks/trained_inputs.py)")
    ap.add_argument("--data", default="data/gpt2", help="the corpus the trained inputs' text comes from")
    ap.add_argument("--no-ref", action="store_true", help="skip timing the reference op")
    ap.add_argument("--graphs", action="store_true",
                    help="also time the inference forward and fwd+bwd replayed from CUDA graphs (TDA and SDPA; the "
                         "GPU's time alone)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="set a switch of tda.ops.triton.attention first (repeatable), e.g. SCREEN_HAT=1: booleans "
                         "take 0/1, integer switches an integer")
    args = ap.parse_args()
    for kv in args.set:
        name, val = kv.split("=")
        if not hasattr(tk, name) or not name.isupper():
            raise SystemExit(f"--set: no switch {name!r} in tda.ops.triton.attention")
        cur = getattr(tk, name)
        setattr(tk, name, bool(int(val)) if isinstance(cur, bool) else int(val))
    gpu = torch.cuda.get_device_name()
    lines_log = []
    trained_models = {}
    if "trained" in args.kinds.split(","):
        from tda import load_checkpoint
        for item in filter(None, args.trained.split(",")):
            d, path = item.split("=", 1)
            trained_models[int(d)] = (path, load_checkpoint(path, device="cuda")[0])
        if not trained_models:
            raise SystemExit("--kinds trained needs --trained D=CKPT[,D=CKPT]")

    def log(s):
        print(s, flush=True)
        lines_log.append(s)
    rows = []
    for D in [int(x) for x in args.dims.split(",")]:
        try:
            best = sweep(D, log=log) if args.sweep else None
        except Exception as e:  # noqa: BLE001
            log(f"sweep d={D} FAILED {type(e).__name__}: {str(e)[:300]}")
            best = None
        for B, H, N in (SHAPES[:2] if args.quick else SHAPES):
            for kind, inputs in cases(args.kinds.split(","), trained_models, B, H, N, D, args.data, log):
                if best:
                    use_config(best)
                t0 = time.time()
                try:
                    r = run_case(B, H, N, D, kind, with_ref=(kind == "random" and not args.no_ref),
                                 graphs=args.graphs, inputs=inputs)
                except Exception as e:  # noqa: BLE001 (report and go on with the other shapes)
                    log(f"{kind} B={B} H={H} N={N} d={D}: FAILED {type(e).__name__}: {str(e)[:300]}")
                    continue
                finally:
                    use_config(None)
                r["config"] = best
                rows.append(r)
                log(f"{kind:8s} B={B} H={H} N={N} d={D}: tda fwd {r['tda_fwd']:.3f} fb {r['tda_fb']:.3f} | "
                    f"sdpa fwd {r['sdpa_fwd']:.3f} fb {r['sdpa_fb']:.3f} | ref fb {fmt(r.get('ref_fb'))} | "
                    f"fwd x{r['tda_fwd'] / r['sdpa_fwd']:.2f} fb x{r['tda_fb'] / r['sdpa_fb']:.2f} "
                    f"kernels {r['k_fwd']:.3f}+{r['k_bwd']:.3f} (inference fwd {r['k_inf']:.3f}) "
                    f"density {r['density']:.3f} ({time.time() - t0:.0f}s)")
                if args.graphs:
                    log(f"    graphed fwd: tda {fmt(r.get('tda_fwd_graph'), 3)} sdpa {fmt(r.get('sdpa_fwd_graph'), 3)}"
                        f" | graphed fb: tda {fmt(r.get('tda_fb_graph'), 3)} sdpa {fmt(r.get('sdpa_fb_graph'), 3)}"
                        + "".join(f" | {n} capture failed: {r[n + '_graph_error']}" for n in ("tda", "sdpa")
                                  if n + "_graph_error" in r))
    cmd = "PYTHONPATH=src python3 " + " ".join(sys.argv)
    out = [f"# TDA kernel benchmarks", "",
           f"GPU: {gpu}; torch {torch.__version__}, triton {triton.__version__}; bf16, causal, "
           f"beta = 1, lam = 0.5 (trained inputs: the layers' own, per head), kappa = 1, p = 2.", "",
           f"Command: `{cmd}`", "",
           "Times are medians in ms (triton.testing.do_bench). The l2 normalisation of q/k is fused in the "
           "kernels (keys: an inverse-norm pre-pass launch; queries: in the forward kernel; scaled scores, and the backward in the kernels' "
           "epilogues); TDA times include the PyTorch work around the kernels (argument checks, allocations, autograd). "
           "Ratios are TDA / SDPA-flash (lower is better; target fwd+bwd <= 1.0, "
           "fwd <= 0.8 at N >= 8K). 'kernels only': the Triton launches alone (inverse-norm pre-pass and "
           "forward; the backward) on raw q/k with tau prepared, i.e. without the PyTorch work around them "
           "(argument checks, allocations, autograd); 'inference' is the forward a no_grad call launches (no flags). TFLOP/s are dense-equivalent (TDA: 3 products forward, 11 backward; "
           "SDPA: 2 and 5), causal. Memory: peak extra MiB during fwd+bwd. density: fraction of visited "
           "(query block, key block) pairs with any survivor. ref: reference op (skipped, n/a, for "
           f"N > {REF_MAX_N} and for planted inputs).", "",
           "| inputs | B | H | N | d | density | TDA fwd | SDPA fwd | fwd ratio | TDA fwd+bwd | SDPA fwd+bwd | "
           "fwd+bwd ratio | TDA TFLOP/s fwd / fwd+bwd | SDPA TFLOP/s fwd / fwd+bwd | ref fwd / fwd+bwd | "
           "mem MiB TDA / SDPA / ref | TDA kernels only fwd / bwd / inference fwd | kernels-only ratio fwd / fwd+bwd / "
           "inference fwd |" + (" graphed fwd TDA / SDPA | graphed fwd ratio | graphed fwd+bwd TDA / SDPA | "
                                 "graphed fwd+bwd ratio |" if args.graphs else ""),
           "|---" * (22 if args.graphs else 18) + "|"]
    for r in rows:
        gr = ""
        if args.graphs:
            for key in ("fwd", "fb"):
                t, sd = r.get(f"tda_{key}_graph"), r.get(f"sdpa_{key}_graph")
                gr += f" {fmt(t, 3)} / {fmt(sd, 3)} | " + (f"**{t / sd:.2f}** |" if t and sd else "n/a |")
        out.append(
            f"| {r['kind']} | {r['B']} | {r['H']} | {r['N']} | {r['D']} | {r['density']:.3f} | "
            f"{fmt(r['tda_fwd'], 3)} | {fmt(r['sdpa_fwd'], 3)} | **{r['tda_fwd'] / r['sdpa_fwd']:.2f}** | "
            f"{fmt(r['tda_fb'], 3)} | {fmt(r['sdpa_fb'], 3)} | **{r['tda_fb'] / r['sdpa_fb']:.2f}** | "
            f"{r['tda_fwd_tflops']:.0f} / {r['tda_fb_tflops']:.0f} | {r['sdpa_fwd_tflops']:.0f} / "
            f"{r['sdpa_fb_tflops']:.0f} | {fmt(r.get('ref_fwd'), 1)} / {fmt(r.get('ref_fb'), 1)} | "
            f"{fmt(r['tda_mem'], 0)} / {fmt(r['sdpa_mem'], 0)} / {fmt(r.get('ref_mem'), 0)} | "
            f"{r['k_fwd']:.3f} / {r['k_bwd']:.3f} / {r['k_inf']:.3f} | {r['k_fwd'] / r['sdpa_fwd']:.2f} / "
            f"{(r['k_fwd'] + r['k_bwd']) / r['sdpa_fb']:.2f} / {r['k_inf'] / r['sdpa_fwd']:.2f} |" + gr)
    if args.sweep:
        out += ["", "Block-config sweep on (B, H, N) = (2, 16, 4096), random inputs, kernel-only times "
                "(BLOCK_M, BLOCK_N, num_warps, num_stages):", "", "```"] + \
               [s for s in lines_log if s.startswith("  d=")] + ["```"]
    with open(args.out, "w") as f:
        f.write("\n".join(out) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    print("\n".join(out))


if __name__ == "__main__":
    main()
