"""Speed of TDA (the public op, fused kernels) against softmax attention on one GPU: bf16, causal.

For each head dim d and key length N (batch B = max(1, 8192 // N), 16 heads), the median time of the
forward (no_grad) and of forward + backward, timed by benchmarks/timing.py (CUDA events, L2 flushed before
each call), for
  - tda-random / tda-planted: `tda.threshold_differential_attention` (beta = 1, lam = 0.5, kappa = 1, p = 2)
    on random inputs, and on inputs with realistic sparsity (every query copies one earlier key, 85% of them
    within the last 16 positions);
  - sdpa: torch's scaled_dot_product_attention with its default backend (cuDNN on Hopper where available);
  - sdpa-flash: its flash backend; flash-attn: flash_attn_func, where the flash-attn package is installed.
Only the public API is timed, so the script runs against any source tree of the package (PYTHONPATH), e.g.
an older commit for a before/after comparison (benchmarks/gpu_kernels.sh). --config tries a KernelConfig
other than the block table's (fields overridden on the table's row; the tree must have
tda.ops.triton.config).

    PYTHONPATH=src python benchmarks/bench_attention.py --out new.json
    PYTHONPATH=src python benchmarks/bench_attention.py --out exp.json --config num_stages=4,group=2
    python benchmarks/bench_attention.py --compare old.json new.json --table table.md
    python benchmarks/bench_attention.py --compare old1.json,old2.json new1.json,new2.json   (best of runs)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import device_line, gpu_time  # noqa: E402

H = 16


def make_inputs(B, N, D, kind, seed=0):
    """q1, k1, q2, k2, v (B, H, N, D) bf16; kind 'planted': each query row a noisy copy of one earlier key."""
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


def tda_op(overrides):
    """The op to time: the public function, or with config overrides the kernel entry with a KernelConfig
    (the block table's row for the call, with `overrides` replaced)."""
    import tda
    if not overrides:
        return lambda *a, **kw: tda.threshold_differential_attention(*a, **kw)
    from tda.ops.triton import attention, config

    def op(q1, k1, q2, k2, v, beta, lam, **kw):
        training = torch.is_grad_enabled() and q1.requires_grad
        cfg = dataclasses.replace(config.block_config(q1.shape[-1], q1.dtype, k1.shape[2], training), **overrides)
        return attention.threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, config=cfg, **kw)
    return op


def time_tda(op, B, N, D, kind, mode, reps):
    xs = make_inputs(B, N, D, kind)
    beta = torch.ones(H, device="cuda")
    lam = torch.full((H,), 0.5, device="cuda")
    kw = dict(causal=True, check_finite=False)  # check_finite=False: no host sync, as the layers call it
    if mode == "fwd":
        with torch.no_grad():
            return gpu_time(lambda: op(*xs, beta, lam, **kw), reps=reps)
    leaves = [x.requires_grad_(True) for x in xs] + [beta.requires_grad_(True), lam.requires_grad_(True)]
    dout = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
    return gpu_time(lambda: op(*leaves, **kw).backward(dout), reps=reps, grad_to_none=leaves)


def time_softmax(name, B, N, D, mode, reps):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if name == "flash-attn":
        from flash_attn import flash_attn_func
        shape = (B, N, H, D)  # flash-attn's layout
        fn = lambda q, k, v: flash_attn_func(q, k, v, causal=True)  # noqa: E731
    else:
        shape = (B, H, N, D)
        fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    q, k, v = (torch.randn(*shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def call(*a):
        if name == "sdpa-flash":
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return fn(*a)
        return fn(*a)
    if mode == "fwd":
        with torch.no_grad():
            return gpu_time(lambda: call(q, k, v), reps=reps)
    leaves = [x.requires_grad_(True) for x in (q, k, v)]
    dout = torch.randn_like(q)
    return gpu_time(lambda: call(*leaves).backward(dout), reps=reps, grad_to_none=leaves)


def parse_overrides(text):
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, value = item.split("=")
        out[key] = {"true": True, "false": False}.get(value.lower(), None)
        if out[key] is None:
            out[key] = tuple(int(x) for x in value.split("x")) if "x" in value else int(value)
    return out


def run(args):
    overrides = parse_overrides(args.config)
    op = tda_op(overrides)
    ops = ["tda-random", "tda-planted"] + ([] if args.tda_only else ["sdpa", "sdpa-flash"])
    if not args.tda_only:
        try:
            import flash_attn  # noqa: F401
            ops.append("flash-attn")
        except ImportError:
            pass
    rows = []
    for D in args.d:
        for N in args.n:
            B = max(1, 8192 // N)
            for mode in ("fwd", "fwd+bwd"):
                for name in ops:
                    if name.startswith("tda"):
                        ms = time_tda(op, B, N, D, name.split("-")[1], mode, args.reps)
                    else:
                        ms = time_softmax(name, B, N, D, mode, args.reps)
                    rows.append(dict(op=name, mode=mode, d=D, N=N, B=B, H=H, ms=ms))
                    print(f"{name:12s} {mode:8s} d={D:<4d} N={N:<6d} B={B:<3d} {ms:8.3f} ms", flush=True)
    result = dict(device=device_line(), tda=os.path.dirname(__import__("tda").__file__), config=args.config,
                  rows=rows)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


def load_runs(paths):
    """One or more --out files of the same tree (comma-separated), merged: each row's fastest median. Runs of
    the old and new trees taken in turn on one machine, each side keeping its best, cancel slow drifts of the
    GPU (clocks, other tenants) that a single pass would charge to whichever tree ran then."""
    runs = [json.load(open(p)) for p in paths.split(",")]
    best = {}
    for run in runs:
        for r in run["rows"]:
            k = (r["op"], r["mode"], r["d"], r["N"])
            if k not in best or r["ms"] < best[k]["ms"]:
                best[k] = r
    return dict(runs[0], rows=list(best.values()), runs=len(runs))


def compare(old_path, new_path, table_path=None):
    """A Markdown table: each row's old and new median (the fastest over the runs given), new / old; and the
    new TDA against softmax."""
    old, new = load_runs(old_path), load_runs(new_path)
    key = lambda r: (r["op"], r["mode"], r["d"], r["N"])  # noqa: E731
    before = {key(r): r["ms"] for r in old["rows"]}
    lines = [f"device: {new['device']}", f"old: {old['tda']} ({old['runs']} runs)",
             f"new: {new['tda']} ({new['runs']} runs)", "",
             "| op | mode | d | N | B | old ms | new ms | new/old |", "|---|---|---|---|---|---|---|---|"]
    worst, slower = 0.0, 0
    for r in new["rows"]:
        o = before.get(key(r))
        ratio = r["ms"] / o if o else float("nan")
        if r["op"].startswith("tda") and o:
            worst = max(worst, ratio)
            slower += ratio > 1.03
        lines.append(f"| {r['op']} | {r['mode']} | {r['d']} | {r['N']} | {r['B']} | "
                     f"{o if o is None else f'{o:.3f}'} | {r['ms']:.3f} | {ratio:.3f} |")
    lines += ["", f"worst TDA new/old: {worst:.3f}; TDA rows more than 3% slower: {slower}", "",
              "| mode | d | N | tda-random ms | tda-planted ms | fastest softmax | its ms | planted / fastest |",
              "|---|---|---|---|---|---|---|---|"]
    now = {key(r): r["ms"] for r in new["rows"]}
    for mode in ("fwd", "fwd+bwd"):
        for d, n in sorted({(r["d"], r["N"]) for r in new["rows"]}):
            soft = {op: now[(op, mode, d, n)] for op in ("sdpa", "sdpa-flash", "flash-attn") if (op, mode, d, n) in now}
            if not soft:
                continue
            best = min(soft, key=soft.get)
            tr, tp = now[("tda-random", mode, d, n)], now[("tda-planted", mode, d, n)]
            lines.append(f"| {mode} | {d} | {n} | {tr:.3f} | {tp:.3f} | {best} | {soft[best]:.3f} | "
                         f"{tp / soft[best]:.2f} |")
    text = "\n".join(lines)
    print(text)
    if table_path:
        with open(table_path, "w") as f:
            f.write(text + "\n")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the rows (JSON) here")
    ap.add_argument("--d", type=lambda s: [int(x) for x in s.split(",")], default=[64, 128])
    ap.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--tda-only", action="store_true", help="time TDA only (no softmax rows)")
    ap.add_argument("--config", default="", help="KernelConfig fields to override on the table's row, e.g. "
                    "num_stages=4,unit_keys=false,dkdv_block=64x32")
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare --out files instead (each side "
                    "one file or a comma-separated list of runs of one tree: the fastest per row)")
    ap.add_argument("--table", help="with --compare: write the Markdown table here")
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare, args.table)
    else:
        if not args.out:
            ap.error("--out is required (or --compare)")
        run(args)


if __name__ == "__main__":
    main()
