"""Decode-step time of the split-KV TDA/TRA kernel against softmax over the same cache (GPU, bf16).

One query row per sequence (a decode step) over a cache of S positions, S = 1K..64K, batch 1..64, head dims 64
and 128, 16 query heads (16 kv heads; GQA rows with 4 kv heads). Each over the same cache tensors, median of
CUDA-event timings with L2 flushed between calls. The kernel columns replay the call from a CUDA graph
(timing.graph_time: GPU time alone, what a decode loop under a CUDA graph pays); where capture fails they fall
back to eager timing (timing.gpu_time) and the row says so ("timing": "eager"). Eager timing lets the host's
launch work show wherever it outlasts the flush before the call, so small calls read as a flat host cost:

- tda_decode: tda.ops.triton.decode.decode_attention, the split and reduce kernels (two unit-key views; a V
  block is read only where some row survives);
- tra_decode: the same kernel with one view;
- sdpa: torch.nn.functional.scaled_dot_product_attention over (k1, v) with one query row, default backend
  (softmax reads all of K and V);
- tda_op: tda.ops.kvcache.threshold_differential_attention_with_kvcache (backend auto) timed eagerly, argument
  checks and their one host sync included; sdpa_eager: SDPA timed the same way;
- tda_fwd: tda.threshold_differential_attention (the training/prefill forward kernel) with one query row and
  position_offset = S - 1: no split over the keys, key norms recomputed every call.

Inputs: "random" (unit keys and queries at random: beta = 1 lets about kappa spurious survivors per row through)
and "planted" (each query head copies one cache key per view, 85% of them among the last 16 positions, the rest
anywhere, plus noise of half the key's norm -- as in bench_attention.py -- so survivors exist). "vblk" is the
share of (sequence, kv head, key block) V blocks the kernel loads. KV-cache bytes per token and layer: TDA
2 key views + v, softmax k + v.

    PYTHONPATH=src python3 benchmarks/bench_decode.py --out decode.md --json decode.json [--quick]

Writes a Markdown table (with the GPU's name and the command line) and the rows as JSON. Under 4 minutes on one
H100 (--quick: a few shapes, seconds).
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton

import tda
from tda.ops import kvcache
from tda.ops.triton import decode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import gpu_time, graph_time  # noqa: E402

LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
BATCHES = [1, 8, 32, 64]
DIMS = [64, 128]
H = 16
GQA = [(4, 1, 4096), (4, 1, 16384), (4, 1, 65536), (4, 32, 16384)]  # (kv heads, batch, length), H = 16


def bench(fn, rep=40):
    return gpu_time(fn, reps=rep, warmup=5) * 1e3  # microseconds, host launch work included where it shows


def bench_kernel(fn, rep=40):
    """(microseconds of GPU time alone from a CUDA-graph replay, "graph"), or eager timing and "eager" where
    the call cannot be captured."""
    try:
        return graph_time(fn, reps=rep, warmup=5) * 1e3, "graph"
    except RuntimeError as e:  # capture refused: keep the row, say how it was timed
        print(f"  graph capture failed ({str(e).splitlines()[0][:120]}); timing eagerly", flush=True)
        torch.cuda.synchronize()
        return bench(fn, rep), "eager"


def make_inputs(B, Hq, Hk, S, D, kind, seed=0):
    """Caches of unit keys (two views) and values, bf16 (B, Hk, S, .); queries (B, Hq, 1, D) for position S-1."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    caches = []
    for i in range(3):
        x = torch.randn(B, Hk, S, D, generator=g, device="cuda", dtype=torch.bfloat16)
        if i < 2:
            x = x / x.float().norm(dim=-1, keepdim=True).to(x.dtype)
        caches.append(x)
    qs = []
    for view in range(2):
        q = torch.randn(B, Hq, 1, D, generator=g, device="cuda")
        if kind == "planted":
            local = S - 1 - torch.randint(0, 16, (B, Hq), generator=g, device="cuda")
            far = (torch.rand(B, Hq, generator=g, device="cuda") * S).long().clamp_max(S - 1)
            src = torch.where(torch.rand(B, Hq, generator=g, device="cuda") < 0.85, local, far)
            kv = torch.arange(Hq, device="cuda") // (Hq // Hk)
            k = caches[view][torch.arange(B, device="cuda")[:, None], kv[None, :], src]  # (B, Hq, D)
            q = (k.float() * math.sqrt(D))[:, :, None] + 0.5 * q
        qs.append(q.to(torch.bfloat16))
    return qs, caches


def v_block_share(qs, caches, beta, lam, block_n, kappa=1.0):
    """Share of (sequence, kv head, key block) V blocks holding a survivor of either view (what the kernel loads)."""
    q1, q2 = qs
    B, Hq, _, D = q1.shape
    Hk, S = caches[0].shape[1], caches[0].shape[2]
    G = Hq // Hk
    tau = float(beta) * math.sqrt(2 * max(math.log(S / kappa), 0.0) / D)
    live = torch.zeros(B, Hk, S, dtype=torch.bool, device="cuda")
    for q, k in ((q1, caches[0]), (q2, caches[1])):
        qn = (q.float() / q.float().norm(dim=-1, keepdim=True)).reshape(B, Hk, G, D).to(k.dtype)
        s = torch.matmul(k, qn.transpose(-1, -2)).float()  # (B, Hk, S, G), no fp32 copy of the cache
        live |= (s > tau).any(-1)
    n_blk = -(-S // block_n)
    pad = n_blk * block_n - S
    live = F.pad(live, (0, pad)).reshape(B, Hk, n_blk, block_n).any(-1)
    return live.float().mean().item()


def run_one(B, Hq, Hk, S, D, kind, skip_fwd=False):
    qs, caches = make_inputs(B, Hq, Hk, S, D, kind)
    q1, q2 = qs
    k1, k2, v = caches
    beta = torch.ones(Hq, device="cuda")
    lam = torch.full((Hq,), 0.5, device="cuda")
    lengths = torch.full((B,), S, dtype=torch.int64, device="cuda")
    seqlens = lengths.to(torch.int32)
    cfg = decode.decode_config(D, torch.bfloat16, Hq // Hk)
    plan = decode.plan(Hq // Hk, 1, B, Hk, S, cfg, decode.sm_count(q1.device))
    row = dict(D=D, B=B, H=Hq, Hk=Hk, S=S, kind=kind, splits=plan.splits, block_n=cfg.block_n,
               kv_bytes_per_token_tda=Hk * (2 * D + D) * 2, kv_bytes_per_token_softmax=Hk * (D + D) * 2)
    with torch.no_grad():
        def tda_dec():
            return decode.decode_attention(q1, q2, k1, k2, v, beta, lam, lengths, S, kappa=1.0, p=2.0)

        def tra_dec():
            return decode.decode_attention(q1, None, k1, None, v, beta, None, lengths, S, kappa=1.0, p=2.0)
        op = lambda: kvcache.threshold_differential_attention_with_kvcache(  # noqa: E731
            q1, q2, k1, k2, v, beta, lam, cache_seqlens=seqlens, check_finite=False)
        sdpa = lambda: F.scaled_dot_product_attention(q1, k1, v, enable_gqa=Hk != Hq)  # noqa: E731
        fwd = lambda: tda.threshold_differential_attention(  # noqa: E731
            q1, k1, q2, k2, v, beta, lam, position_offset=S - 1, check_finite=False)
        # the kernel against the op's torch path on the first sequence (a sanity check, not the GPU check)
        ref = kvcache.threshold_differential_attention_with_kvcache(
            q1[:1], q2[:1], k1[:1], k2[:1], v[:1], beta, lam, cache_seqlens=seqlens[:1], backend="reference")
        got = tda_dec()[:1]
        err = (got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)
        row["rel_err_vs_reference"] = err.item()
        row["vblk"] = v_block_share(qs, caches, 1.0, 0.5, cfg.block_n)
        modes = set()
        for name, fn in (("tda_decode", tda_dec), ("tra_decode", tra_dec), ("sdpa", sdpa)):
            row[name + "_us"], mode = bench_kernel(fn)
            modes.add(mode)
        row["timing"] = "graph" if modes == {"graph"} else "eager"
        row["tda_op_us"] = bench(op)
        row["sdpa_eager_us"] = bench(sdpa)
        row["tda_fwd_us"] = None if skip_fwd else bench(fwd, rep=20)
    row["tda_vs_sdpa"] = row["tda_decode_us"] / row["sdpa_us"]
    row["fwd_vs_sdpa"] = None if row["tda_fwd_us"] is None else row["tda_fwd_us"] / row["sdpa_us"]
    del qs, caches, q1, q2, k1, k2, v
    return row


SWEEP_SHAPES = [(64, 1, 16, 16, 4096), (128, 1, 16, 16, 16384), (64, 32, 16, 16, 16384), (128, 8, 16, 16, 65536),
                (128, 1, 16, 4, 65536)]


def sweep():
    """GPU time (planted inputs, CUDA-graph replays) of the decode kernel over block configs, then over the split policy
    at the best block config per head dim: what decode.decode_config's table is chosen from."""
    import dataclasses
    import itertools
    results = []
    for D, B, Hq, Hk, S in SWEEP_SHAPES:
        qs, caches = make_inputs(B, Hq, Hk, S, D, "planted")
        beta = torch.ones(Hq, device="cuda")
        lam = torch.full((Hq,), 0.5, device="cuda")
        lengths = torch.full((B,), S, dtype=torch.int64, device="cuda")
        sd = bench_kernel(lambda: F.scaled_dot_product_attention(qs[0], caches[0], caches[2],
                                                                 enable_gqa=Hk != Hq))[0]
        base = decode.decode_config(D, torch.bfloat16, Hq // Hk)
        times = {}
        for bn, nw, ns in itertools.product((32, 64, 128), (2, 4, 8), (2, 3, 4)):
            cfg = dataclasses.replace(base, block_n=bn, num_warps=nw, num_stages=ns)
            with torch.no_grad():
                times[cfg] = bench_kernel(lambda: decode.decode_attention(qs[0], qs[1], *caches, beta, lam, lengths,
                                                                          S, kappa=1.0, p=2.0, cfg=cfg))[0]
        best = min(times, key=times.get)
        for pps, msb in itertools.product((1, 2, 4, 8, 16), (2, 4, 8)):
            cfg = dataclasses.replace(best, programs_per_sm=pps, min_split_blocks=msb)
            with torch.no_grad():
                times[cfg] = bench_kernel(lambda: decode.decode_attention(qs[0], qs[1], *caches, beta, lam, lengths,
                                                                          S, kappa=1.0, p=2.0, cfg=cfg))[0]
        ranked = sorted(times.items(), key=lambda kv: kv[1])
        print(f"d {D} B {B} H/Hk {Hq}/{Hk} S {S}: sdpa {sd:.1f} us; table {times.get(base, float('nan')):.1f} us; "
              f"best:", flush=True)
        for cfg, t in ranked[:6]:
            print(f"   {t:8.1f} us  {cfg}", flush=True)
        results.append(dict(D=D, B=B, H=Hq, Hk=Hk, S=S, sdpa_us=sd,
                            ranked=[(dataclasses.asdict(c), t) for c, t in ranked]))
        del qs, caches
        torch.cuda.empty_cache()
    return results


def shapes(quick, lengths=None, batches=None):
    if quick:
        return [(D, B, H, H, S) for D in DIMS for B in (1, 32) for S in (4096, 16384)] + \
               [(128, 1, H, 4, 16384)]
    out = [(D, B, H, H, S) for D in DIMS for B in (batches or BATCHES) for S in (lengths or LENGTHS)]
    out += [(D, B, H, hk, S) for D in DIMS for hk, B, S in GQA]
    return out


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def table(rows, gpu, argv):
    lines = [f"Decode step, bf16, one query row; {gpu}; `{' '.join(argv)}`", "",
             "Kernel columns (TDA decode, TRA decode, SDPA, TDA/SDPA): GPU time alone, replayed from a CUDA graph "
             "(a row marked * was timed eagerly). TDA op and SDPA eager: timed eagerly, host work included where it "
             "outlasts the GPU's.", "",
             "| d | B | H/Hk | S | input | splits | vblk % | TDA decode µs | TRA decode µs | SDPA µs | TDA/SDPA "
             "| TDA op µs | SDPA eager µs | fwd kernel µs | fwd/SDPA | KV B/token TDA : softmax |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['D']} | {r['B']} | {r['H']}/{r['Hk']} | {r['S'] // 1024}K | {r['kind']} | {r['splits']} "
            f"| {100 * r['vblk']:.2f} | {fmt(r['tda_decode_us'])} | {fmt(r['tra_decode_us'])} | {fmt(r['sdpa_us'])} "
            f"| {fmt(r['tda_vs_sdpa'], 2)}x{'' if r.get('timing') == 'graph' else '*'} | {fmt(r['tda_op_us'])} "
            f"| {fmt(r.get('sdpa_eager_us'))} | {fmt(r['tda_fwd_us'])} | {fmt(r['fwd_vs_sdpa'], 2)}x "
            f"| {r['kv_bytes_per_token_tda']} : {r['kv_bytes_per_token_softmax']} |")
    return "\n".join(lines) + "\n"


def write(rows, gpu, args):
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            f.write(table(rows, gpu, ["python3", *sys.argv]))
        os.replace(args.out + ".tmp", args.out)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"gpu": gpu, "argv": sys.argv, "rows": rows}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="Markdown table")
    ap.add_argument("--json", default=None, help="rows as JSON")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kinds", default="random,planted")
    ap.add_argument("--lengths", default=None, help="comma list of cache lengths (default: 1K..64K)")
    ap.add_argument("--batches", default=None, help="comma list of batch sizes (default: 1,8,32,64)")
    ap.add_argument("--mem-frac", type=float, default=0.55, help="skip shapes whose caches exceed this share of "
                    "the GPU's memory")
    ap.add_argument("--fwd-max-bytes", type=float, default=20e9,
                    help="skip the forward kernel above this cache size (it is an order of magnitude slower)")
    ap.add_argument("--sweep", action="store_true", help="time block configs and split policies instead")
    args = ap.parse_args()
    if args.sweep:
        res = sweep()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return
    props = torch.cuda.get_device_properties(0)
    gpu = f"{props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, triton {triton.__version__}"
    rows, t0 = [], time.time()
    run_one(1, H, H, 1024, 64, "random", skip_fwd=False)  # warm-up: the first timed shape pays no first-use costs
    ints = lambda s: [int(x) for x in s.split(",")] if s else None  # noqa: E731
    for D, B, Hq, Hk, S in shapes(args.quick, ints(args.lengths), ints(args.batches)):
        cache_bytes = B * Hk * S * 3 * D * 2
        if cache_bytes > args.mem_frac * props.total_memory:
            print(f"skip d {D} B {B} S {S}: caches of {cache_bytes / 1e9:.1f} GB", flush=True)
            continue
        for kind in args.kinds.split(","):
            r = run_one(B, Hq, Hk, S, D, kind, skip_fwd=cache_bytes > args.fwd_max_bytes)
            rows.append(r)
            print(f"[{time.time() - t0:6.1f}s] d {D} B {B:2d} H/Hk {Hq}/{Hk} S {S:6d} {kind:8s} "
                  f"splits {r['splits']:3d} "
                  f"vblk {100 * r['vblk']:6.2f}% tda {r['tda_decode_us']:8.1f} tra {r['tra_decode_us']:8.1f} "
                  f"op {r['tda_op_us']:8.1f} sdpa {r['sdpa_us']:8.1f} fwd {fmt(r['tda_fwd_us']):>8} us "
                  f"tda/sdpa {r['tda_vs_sdpa']:.2f} err {r['rel_err_vs_reference']:.1e}", flush=True)
            torch.cuda.empty_cache()
            write(rows, gpu, args)  # after every row: a run cut short still leaves its table
    print(table(rows, gpu, ["python3", *sys.argv]))
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
