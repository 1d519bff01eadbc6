"""Randomised correctness check of the split-KV decode kernel (tda.ops.triton.decode) against the reference (GPU).

Each random configuration (dtype bf16/fp16/fp32, TDA or TRA, batch, kv heads, grouped-query factor, query rows
M, cache capacity, per-sequence lengths, head dims, beta, lam, kappa, p, planted or random queries,
normalised or unit queries, split count: automatic, one, or forced) calls
tda.ops.kvcache's cached attention with backend="triton" and must satisfy the FlashAttention criterion

    |kernel - ref64| <= 2 |ref_lowp - ref64| + atol        (Frobenius norms)

with ref64 the torch path in float64 and ref_lowp the torch path in the kernel's dtype, both over the same
cache contents (unit keys stored in the kernel's dtype, upcast for ref64). The cache past each sequence's
length and freed allocator memory hold NaN, so a key or value read past the end, or an unwritten output
element, shows.

    PYTHONPATH=src python3 benchmarks/check_decode.py --n 200 [--seed 0] [--log decode.log]

From another script: `from check_decode import check_decode; summary = check_decode(n_configs, seed)`
(benchmarks/ on sys.path); summary["fails"] lists the failing configurations. --device cpu runs a smoke test
under TRITON_INTERPRET=1 (fp32 / fp16, tiny shapes).
"""
import argparse
import math
import os
import random
import sys
import time

import torch


def _draw(rng, dev):
    gpu = dev == "cuda"
    dtype = rng.choice(["bf16", "bf16", "fp16", "fp32"] if gpu else ["fp32", "fp16"])
    D = rng.choice([64, 64, 128, 128, 32, 16] if gpu else [16, 32])
    Dv = D if rng.random() < 0.8 else rng.choice([16, 32, 64, 128] if gpu else [16, 32])
    Hk = rng.choice([1, 2, 4, 8] if gpu else [1, 2])
    G = rng.choice([1, 1, 2, 4, 8] if gpu else [1, 2, 3])
    M = rng.choice([1, 1, 1, 2, 4, 7, 16] if gpu else [1, 1, 3])
    B = rng.choice([1, 2, 3, 5] if gpu else [1, 2])
    S = rng.choice([64, 300, 1000, 4096, 9000, 20000] if gpu else [20, 70, 130])
    lens = [rng.randint(M, S) if rng.random() < 0.7 else S for _ in range(B)]
    splits = rng.choice([None, None, None, 1, rng.randint(2, 40)])
    return dict(dtype=dtype, D=D, Dv=Dv, Hk=Hk, H=Hk * G, M=M, B=B, S=S, lens=lens, two=rng.random() < 0.7,
                p=rng.choice([2.0, 2.0, 1.0, 3.0, 1.5]), kappa=rng.choice([1.0, 1.0, 0.5, 3.0]),
                beta=rng.choice([1.0, 1.0, 0.5, 0.2, 1.5]), planted=rng.random() < 0.6,
                normalize=rng.random() < 0.8, splits=splits, new=rng.random() < 0.5)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _inputs(c, gen, dev):
    """fp32 tensors exactly representable in the kernel's dtype; the caches hold unit keys (rounded to the
    dtype) up to each length, NaN past it."""
    dt = DTYPES[c["dtype"]]
    B, H, Hk, M, S, D, Dv = c["B"], c["H"], c["Hk"], c["M"], c["S"], c["D"], c["Dv"]
    nan = float("nan")
    caches = [torch.full((B, Hk, S, d), nan, device=dev) for d in (D, D, Dv)]
    for b, L in enumerate(c["lens"]):
        for i, d in enumerate((D, D, Dv)):
            x = torch.randn(Hk, L, d, generator=gen, device=dev)
            if i < 2:
                x = x / x.norm(dim=-1, keepdim=True)
            caches[i][b, :, :L] = x.to(dt).float()
    # new tokens: the last M positions of each sequence arrive as raw keys and values, written by the call
    new = None
    if c["new"]:
        new = [caches[i][:, :, :M].clone() for i in range(3)]
        for b, L in enumerate(c["lens"]):
            for i in range(3):
                raw = torch.randn(Hk, M, caches[i].shape[-1], generator=gen, device=dev)
                new[i][b] = raw.to(dt).float()
                caches[i][b, :, L - M:L] = nan  # the call writes them
    qs = []
    for view in range(2):
        q = torch.randn(B, H, M, D, generator=gen, device=dev)
        if c["planted"]:  # each row aims at a random visible key of its view (an earlier cache position)
            G = H // Hk
            for b, L in enumerate(c["lens"]):
                if L <= M:
                    continue
                j = torch.randint(0, L - M, (H, M), generator=gen, device=dev)
                k = caches[view][b][torch.arange(H, device=dev)[:, None] // G, j]
                q[b] = k + 0.4 * q[b] / math.sqrt(D)
        if not c["normalize"]:
            q = q / q.norm(dim=-1, keepdim=True)
        qs.append(q.to(dt).float())
    beta = (torch.rand(H, generator=gen, device=dev) * 0.5 + 0.75) * c["beta"]
    lam = torch.rand(H, generator=gen, device=dev) * 0.8 + 0.1
    return qs, caches, new, beta, lam


def _call(c, qs, caches, new, beta, lam, dtype, backend, splits=None):
    """The cached op on copies of the caches (the call writes the new tokens in place)."""
    from tda.ops import kvcache
    from tda.ops.triton import decode
    cs = [x.to(dtype) for x in caches]
    q1, q2 = (x.to(dtype) for x in qs)
    nw = [x.to(dtype) for x in new] if new is not None else [None] * 3
    b32 = beta.double() if dtype == torch.float64 else beta
    l32 = lam.double() if dtype == torch.float64 else lam
    M = c["M"]
    seqlens = torch.tensor([L - (M if new is not None else 0) for L in c["lens"]], dtype=torch.int32,
                           device=q1.device)
    kw = dict(cache_seqlens=seqlens, kappa=c["kappa"], p=c["p"], normalize_q=c["normalize"], backend=backend)
    if backend == "triton" and splits is not None:
        # forced split count: the launcher directly, after the op's own append
        from tda.ops.kvcache import _append, _check_cache
        names = [("k1", nw[0]), ("k2", nw[1]), ("v", nw[2])]
        _, _, _, _, _, _, lengths, longest = _check_cache(
            [("q1", q1), ("q2", q2)], [("k1_cache", cs[0]), ("k2_cache", cs[1]), ("v_cache", cs[2])],
            names, seqlens)
        if new is not None:
            _append(cs, names, lengths - M, M)
        H = q1.shape[1]
        return decode.decode_attention(q1, q2 if c["two"] else None, cs[0], cs[1] if c["two"] else None, cs[2],
                                       beta.reshape(-1).expand(H), lam if c["two"] else None, lengths, longest,
                                       kappa=c["kappa"], p=c["p"], normalize_q=c["normalize"], splits=splits)
    if c["two"]:
        return kvcache.threshold_differential_attention_with_kvcache(
            q1, q2, *cs, b32, l32, k1=nw[0], k2=nw[1], v=nw[2], **kw)
    return kvcache.threshold_rectified_attention_with_kvcache(q1, cs[0], cs[2], b32, k=nw[0], v=nw[2], **kw)


def _poison(dev):
    """Fill (then free) a large block with NaN so the next allocations start out as NaN."""
    if dev == "cuda":
        torch.full((64 * 1024 * 1024,), float("nan"), device=dev)   # unbound: freed at once


def check_decode(n_configs: int = 200, seed: int = 0, device: str = "cuda", log=print) -> dict:
    """Run n_configs random configurations; returns {"n", "fails": [config dicts], "worst": max ratio of the
    kernel's error to the bound}. `log` gets one line per configuration."""
    rng = random.Random(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    fails, worst = [], 0.0
    with torch.no_grad():
        for i in range(n_configs):
            c = _draw(rng, device)
            qs, caches, new, beta, lam = _inputs(c, gen, device)
            dt = DTYPES[c["dtype"]]
            ref64 = _call(c, qs, caches, new, beta, lam, torch.float64, "reference").double()
            low = _call(c, qs, caches, new, beta, lam, dt, "reference").double()
            _poison(device)
            ker = _call(c, qs, caches, new, beta, lam, dt, "triton", c["splits"]).double()
            e_ker = (ker - ref64).norm().item() if torch.isfinite(ker).all() else math.inf
            e_low = (low - ref64).norm().item()
            atol = 1e-6 * ref64.norm().item() + 1e-6 * math.sqrt(ref64.numel())
            bound = 2 * e_low + atol
            ok = e_ker <= bound
            worst = max(worst, e_ker / bound)
            if not ok:
                fails.append(c)
            log(f"{'ok  ' if ok else 'FAIL'} {i:4d} err {e_ker:.3e} bound {bound:.3e} |ref| {ref64.norm().item():.3e} "
                f"{c}")
    return {"n": n_configs, "fails": fails, "worst": worst}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test under TRITON_INTERPRET=1")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    out = open(args.log, "w") if args.log else None

    def log(line):
        print(line, flush=True)
        if out:
            print(line, file=out, flush=True)
    t0 = time.time()
    s = check_decode(args.n, args.seed, args.device, log)
    log(f"decode check: {s['n']} configurations, {len(s['fails'])} failures, worst error / bound "
        f"{s['worst']:.3f}, {time.time() - t0:.0f} s")
    sys.exit(1 if s["fails"] else 0)


if __name__ == "__main__":
    main()
