"""Randomised correctness check of the fused Triton TDA/TRA kernels against the reference (GPU).

For each random configuration (dtype, B, H, GQA, M, N, d, offset, beta, lam, kappa, p, causal, TDA/TRA,
non-contiguous inputs, scalar or per-head beta/lam, fused normalisation or not, and the block table's row)
the output and every gradient must satisfy the FlashAttention criterion

    |kernel - ref64| <= 2 |ref_lowp - ref64| + atol        (Frobenius norms)

with ref64 the reference in float64 and ref_lowp the reference in the kernel's dtype. The output is
checked twice: from the training forward (with grad) and from the inference forward (no_grad, which
skips the survivor flags), as `out` and `out_nograd`. As in the FlashAttention tests, inputs are drawn in
the kernel's dtype and upcast for ref64, so that rounding them is not an error shared by kernel and
ref_lowp. With normalize_qk=True the kernels normalise inside (fp32 inverse norms scaling fp32 dot products
of the raw tiles): unlike ref_lowp they never round the unit vectors to the low dtype, so every tensor,
dbeta and dlam included, is measured against ref64 on the same raw inputs.
Freed allocator memory is poisoned with NaN before each kernel call, so an unwritten element shows.

Packed documents: a fifth of the configurations (causal, M = N) cut each row into documents of random
lengths (1-token ones included) and run the varlen ops (tda.ops.varlen) on them: the kernels over the
document table against the reference's length buckets, in float64 and in the kernel's dtype.

Table rows: the check's sequences are short (M <= 700), so most configurations take the block table's
rows of another key length (1K, 4K or 16K: config.block_config for training and for inference), passed
through the kernel entry's `config=`; the rest run the public op as is (their own length's rows).

dbeta and dlam (per head, or 0-dim) are each one sum over every row of a head that cancels heavily, so
ref_lowp's error there is a single draw of its summation order's rounding. For those two, |ref_lowp - ref64|
is therefore the RMS over REORDERS evaluations of ref_lowp that differ only in summation order (the plain
one, and inputs with permuted feature dims). The single-draw verdict is still logged ('~' after a tensor that
fails only against the one draw) and counted in the summary.

    PYTHONPATH=src python benchmarks/check_kernels.py --n 240 [--seed 0] [--log check.log] [--shard 0/8]
"""
import argparse
import math
import random
import sys
import time

import torch

DEV = "cuda"

import tda.ops as ops  # noqa: E402
from tda.ops.triton import attention as tk, config as kc, launch  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (dtype, d, p, two_views): a fixed set of kernel variants keeps the number of compilations bounded
VARIANTS = ([("bf16", d, p, tv) for d in (64, 128) for p in (1.0, 2.0, 3.0) for tv in (True, False)]
            + [("bf16", 64, 1.5, True)]
            + [("fp16", d, 2.0, True) for d in (64, 128)] + [("fp16", 64, 3.0, False), ("fp16", 128, 1.0, True)]
            + [("fp32", d, p, True) for d in (64, 128) for p in (1.0, 2.0)] + [("fp32", 64, 3.0, False)])
TABLE_LENGTHS = (None, 1024, 4096, 16384)  # None: the call's own length (the public op)


# ref_lowp evaluations per configuration behind dbeta's / dlam's error (the plain one + REORDERS - 1 permuted)
REORDERS = 4
SCALAR_GRADS = ("dbeta", "dlam")


def reordered(c, t, dout, dtype, seed):
    """ref_lowp on inputs whose feature dims are permuted (q, k by one permutation; v and dO by another):
    the same dbeta and dlam mathematically, every dot product summed in another order. Its own generator,
    so the configurations' inputs stay those of the seed."""
    g = torch.Generator().manual_seed(seed)
    pk, pv = (torch.randperm(n, generator=g).to(DEV) for n in (c["D"], t["v"].shape[-1]))
    tp = {k: x[..., pv] if k == "v" else (x[..., pk] if k[0] in "qk" else x) for k, x in t.items()}
    r = run(c, tp, dout[..., pv], dtype, "reference")
    return {k: r[k] for k in SCALAR_GRADS if k in r}


def poison():
    """Fill (then free) a large block with NaN so the next allocations start out as NaN."""
    if DEV != "cuda":
        return
    x = torch.full((64 * 1024 * 1024,), float("nan"), device=DEV)
    del x


def random_config(rng):
    # Triton's CPU interpreter computes in numpy, which has no bf16: Triton 3.9's gives garbage for bf16 dots
    # (attention.interpreter_dot_ok), so the CPU smoke mode draws fp32 and fp16 variants only
    dt, d, p, two = rng.choice(VARIANTS if DEV == "cuda" else [v for v in VARIANTS if v[0] != "bf16"])
    hk = rng.choice([1, 2, 4])
    g = rng.choice([1, 1, 2, 4])
    M = rng.choice([1, 7, 64, 100, 128, 129, 255, 333, 512, 700] if DEV == "cuda" else [1, 7, 20, 33])
    extra = rng.choice([0, 0, 0, 1, 37, 200])  # k/v longer than q: a KV cache of `extra` positions
    causal = rng.random() < 0.85
    # causal: position_offset >= N - M (a KV cache, or a window of the latest keys); non-causal: any
    offset = extra + (0 if rng.random() < 0.8 else rng.choice([5, 3000]))
    c = dict(dtype=dt, D=d, p=p, two=two, B=rng.choice([1, 2]), H=hk * g, Hk=hk, M=M, N=M + extra,
             causal=causal, offset=offset, kappa=rng.choice([1.0, 1.0, 0.5, 2.0, 4.0]),
             beta_scale=rng.choice([0.5, 1.0, 1.0, 1.5]), noncontig=rng.random() < 0.25,
             scalar_params=rng.random() < 0.2, normalize=rng.random() < 0.6,
             table_length=rng.choice(TABLE_LENGTHS), list_row=rng.choice([None, None, None, 2, 5]), docs=None)
    if rng.random() < 0.2:  # packed documents (the module's docstring)
        c.update(causal=True, offset=0, N=M, docs=[split_row(rng, M) for _ in range(c["B"])])
    return c


def split_row(rng, n):
    """Document lengths (>= 1) that fill a row of n tokens: exponential around n / 4, some of length 1."""
    out = []
    while sum(out) < n:
        out.append(min(n - sum(out), 1 if rng.random() < 0.15 else max(1, int(rng.expovariate(4.0 / n)))))
    return out


def many_heads_config():
    """batch * heads past 65535 (tiny sequences, so it stays cheap): the flat grids take any number of heads.
    On the CPU smoke test, 12 heads."""
    big = DEV == "cuda"
    return dict(dtype="bf16" if big else "fp32", D=64, p=2.0, two=True, B=2100 if big else 3, H=32 if big else 4,
                Hk=32 if big else 2, M=8, N=8, causal=True, offset=0, kappa=1.0, beta_scale=1.0, noncontig=False,
                scalar_params=False, normalize=True, table_length=None, list_row=None, docs=None)


def configs_for(c):
    """(training config, inference config) for the configuration: None (the table's, for the call's own
    length), else the table's rows for table_length, with shorter scratch rows where list_row is drawn."""
    if c["table_length"] is None and not c["list_row"]:
        return None, None
    dt, L = DTYPES[c["dtype"]], c["table_length"] or c["N"]
    train, infer = kc.block_config(c["D"], dt, L, True), kc.block_config(c["D"], dt, L, False)
    if c["list_row"]:  # several compaction rounds per program, which short sequences would not reach
        import dataclasses
        train = dataclasses.replace(train, list_row=c["list_row"], dkdv_lists=True, dq_lists=True)
    return train, infer


def make_inputs(c, gen):
    dt = DTYPES[c["dtype"]]
    B, H, Hk, M, N, D = c["B"], c["H"], c["Hk"], c["M"], c["N"], c["D"]

    def r(*s):
        if c["noncontig"]:
            return torch.randn(*s[:2], s[3], s[2], generator=gen, device=DEV).transpose(-1, -2)
        return torch.randn(*s, generator=gen, device=DEV)
    t = {"q1": r(B, H, M, D), "k1": r(B, Hk, N, D), "v": r(B, Hk, N, D)}
    if c["two"]:
        t["q2"], t["k2"] = r(B, H, M, D), r(B, Hk, N, D)
    for k in list(t):
        if k != "v" and not c["normalize"]:  # the op then takes q, k as given: hand it unit vectors
            t[k] = t[k] / t[k].norm(dim=-1, keepdim=True)
        t[k] = t[k].to(dt).to(torch.float32)  # exactly representable in the kernel's dtype
    if c["scalar_params"]:
        t["beta"] = torch.tensor(c["beta_scale"], device=DEV)
        if c["two"]:
            t["lam"] = torch.rand((), generator=gen, device=DEV) * 0.8 + 0.1
    else:
        t["beta"] = (torch.rand(H, generator=gen, device=DEV) * 0.5 + 0.75) * c["beta_scale"]
        if c["two"]:
            t["lam"] = torch.rand(H, generator=gen, device=DEV) * 0.8 + 0.1
    dout = torch.randn(B, H, M, D, generator=gen, device=DEV).to(dt).to(torch.float32)
    return t, dout, dt


def _packed_op(c, inp, backend, config):
    """The varlen ops over c["docs"] (backend), or with a config the kernels over the document table."""
    from tda.ops import varlen
    lengths = [n for row in c["docs"] for n in row]
    cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32)
    kw = dict(kappa=c["kappa"], p=c["p"], normalize_qk=c["normalize"])
    q2, k2, lam = (inp["q2"], inp["k2"], inp["lam"]) if c["two"] else (None, None, None)
    if config is not None:
        bounds = varlen.check_cu_seqlens(cu, max(lengths), c["B"] * c["M"], c["M"] if c["B"] > 1 else None)
        plan = varlen._plan(bounds, True, inp["v"].device, c["M"])
        return tk.packed_attention(inp["q1"], inp["k1"], q2, k2, inp["v"], inp["beta"], lam, docs=plan.docs,
                                   longest=plan.longest, config=config, **kw)
    if c["two"]:
        return varlen.threshold_differential_attention_varlen(
            inp["q1"], inp["k1"], q2, k2, inp["v"], inp["beta"], lam, cu_seqlens=cu, max_seqlen=max(lengths),
            backend=backend, **kw)
    return varlen.threshold_rectified_attention_varlen(inp["q1"], inp["k1"], inp["v"], inp["beta"], cu_seqlens=cu,
                                                       max_seqlen=max(lengths), backend=backend, **kw)


def _op(c, inp, backend, config):
    """The public op (backend), or with a config the kernel entry that takes one."""
    if c.get("docs"):
        return _packed_op(c, inp, backend, config)
    kw = dict(kappa=c["kappa"], p=c["p"], causal=c["causal"], position_offset=c["offset"],
              normalize_qk=c["normalize"])
    if config is not None:
        if c["two"]:
            return tk.threshold_differential_attention(inp["q1"], inp["k1"], inp["q2"], inp["k2"], inp["v"],
                                                       inp["beta"], inp["lam"], config=config, **kw)
        return tk.threshold_rectified_attention(inp["q1"], inp["k1"], inp["v"], inp["beta"], config=config, **kw)
    if c["two"]:
        return ops.threshold_differential_attention(inp["q1"], inp["k1"], inp["q2"], inp["k2"], inp["v"],
                                                    inp["beta"], inp["lam"], backend=backend, **kw)
    return ops.threshold_rectified_attention(inp["q1"], inp["k1"], inp["v"], inp["beta"], backend=backend, **kw)


def run_inference(c, t, dtype, config=None):
    """The kernel's output with no gradient wanted (the forward without flags: FOR_BWD off)."""
    with torch.no_grad():
        inp = {k: x.to(dtype) if k not in ("beta", "lam") else x.float() for k, x in t.items()}
        out = _op(c, inp, "triton", config)
    return out.double()


def run(c, t, dout, dtype, backend, config=None):
    inp = {}
    for k, x in t.items():
        y = x.to(torch.float64 if dtype == "ref64" else dtype) if k not in ("beta", "lam") else (
            x.double() if dtype == "ref64" else x.float())
        inp[k] = y.detach().requires_grad_(True)
    out = _op(c, inp, backend, config)
    names = list(inp)
    grads = torch.autograd.grad(out, [inp[n] for n in names], dout.to(out.dtype))
    res = {"out": out.detach()}
    res.update({"d" + n: g for n, g in zip(names, grads)})
    return {k: v.double() for k, v in res.items()}


def near_ties(c, t, rel=1e-6):
    """Per view, the number of visible (row, key) pairs whose exact (fp64) score lies within rel * tau of
    tau. At p = 1 the weight's slope jumps from 0 to 1 at tau, so a pair whose low-precision score lands on
    the other side of tau than the fp64 one (in the kernel or in ref_lowp) moves the q/k gradients by a
    whole term of order dO . v: a failure of this kind with such pairs present is a rounding tie."""
    from tda.ops import reference
    H, Hk, M, N, D = c["H"], c["Hk"], c["M"], c["N"], c["D"]
    beta = t["beta"].double().reshape(-1).expand(H)
    taus = reference.tau(torch.arange(c["offset"], c["offset"] + M, device=DEV), beta, c["kappa"], D)
    counts = []
    for qn, kn in (("q1", "k1"), ("q2", "k2")) if c["two"] else (("q1", "k1"),):
        q, k = t[qn].double(), t[kn].double().repeat_interleave(H // Hk, dim=1)
        if c["normalize"]:
            q, k = reference.l2_normalize(q), reference.l2_normalize(k)
        gap = (q @ k.transpose(-1, -2) - taus[None, :, :, None]).abs() <= rel * taus[None, :, :, None].abs()
        if c["causal"]:
            gap &= torch.ones(M, N, dtype=torch.bool, device=DEV).tril(N - M)
        counts.append(int(gap.sum()))
    return counts


def compile_check(gen):
    import torch._dynamo
    dt = torch.bfloat16 if DEV == "cuda" else torch.float16  # (the interpreter's bf16 dots: random_config)
    xs = [torch.randn(2, 4, 300, 64, generator=gen, device=DEV, dtype=dt, requires_grad=True)
          for _ in range(5)]
    beta = torch.ones(4, device=DEV, requires_grad=True)
    lam = torch.full((4,), 0.5, device=DEV, requires_grad=True)

    def f(q1, k1, q2, k2, v, beta, lam):
        return ops.threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, backend="triton")
    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    outs = []
    for fn in (cf, f):
        o = fn(*xs, beta, lam)
        outs.append([o] + list(torch.autograd.grad(o.float().square().sum(), xs + [beta, lam])))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", default=None)
    ap.add_argument("--shard", default="0/1", help="i/n: run only the configs of every n-th kernel variant "
                    "(run n processes side by side so that their compilations overlap)")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test under TRITON_INTERPRET=1")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="stop drawing new configurations after this many seconds (0: no limit); the summary "
                    "then says how many ran")
    args = ap.parse_args()
    global DEV
    DEV = args.device
    rng = random.Random(args.seed)
    gen = torch.Generator(device=DEV).manual_seed(args.seed)
    log = open(args.log, "w") if args.log else None
    fails, worst, one_draw = [], {}, []
    t0 = time.time()
    shard, n_shards = (int(x) for x in args.shard.split("/"))
    n_run = n_packed = 0

    def draws():
        if shard == 1 % n_shards:  # first, on one shard: more than 65535 batch * heads (configuration -1)
            yield -1, many_heads_config()
        for i in range(args.n):
            yield i, random_config(rng)

    for i, c in draws():
        if args.budget_s and time.time() - t0 > args.budget_s:
            print(f"time budget of {args.budget_s:.0f}s spent after {i} of {args.n} draws", flush=True)
            break
        vi = VARIANTS.index((c["dtype"], c["D"], c["p"], c["two"]))
        if i >= 0 and (2 * vi + c["causal"]) % n_shards != shard:
            continue
        n_run += 1
        n_packed += bool(c.get("docs"))
        t, dout, dt = make_inputs(c, gen)
        ref64 = run(c, t, dout, "ref64", "reference")
        low = run(c, t, dout, dt, "reference")
        reo = [reordered(c, t, dout, dt, args.seed * 1_000_003 + 7919 * i + j) for j in range(1, REORDERS)]
        train_cfg, infer_cfg = configs_for(c)
        poison()
        try:
            # a first call goes through Triton's JIT (compiling, and filling the launch cache); the checked
            # call, on fresh poisoned memory, then takes the direct launches of launch_cache.FastKernel
            run(c, t, dout, dt, "triton", train_cfg)
            poison()
            ker = run(c, t, dout, dt, "triton", train_cfg)
            poison()
            ker["out_nograd"] = run_inference(c, t, dt, infer_cfg)
        except Exception as e:  # noqa: BLE001 (a crash is a failure of this configuration)
            fails.append((i, "crash", c, str(e)[:300], None))
            print(f"[{i}] {c}\n    CRASH {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        if DEV == "cuda":
            torch.cuda.synchronize()
        line = []
        for k in ker:
            r64 = ref64[k.replace("_nograd", "")]  # the inference output against the same references
            e_ker = (ker[k] - r64).norm().item()
            e_low = e_one = (low[k.replace("_nograd", "")] - r64).norm().item()
            if k in SCALAR_GRADS:  # the RMS over summation orders (the module's docstring)
                e_low = math.sqrt((e_one ** 2 + sum((r[k] - r64).norm().item() ** 2 for r in reo)) / REORDERS)
            atol = 1e-6 * r64.norm().item() + 1e-6 * math.sqrt(r64.numel())
            finite = math.isfinite(e_ker) and bool(torch.isfinite(ker[k]).all())
            ok = finite and e_ker <= 2 * e_low + atol
            one = finite and e_ker <= 2 * e_one + atol
            ratio = e_ker / max(e_low, 1e-30)
            worst[k] = max(worst.get(k, 0.0), ratio if math.isfinite(ratio) else float("inf"))
            line.append(f"{k}:{e_ker:.2e}/{e_low:.2e}{'' if ok else '!'}{'~' if ok and not one else ''}")
            if not ok:
                fails.append((i, k, c, e_ker, e_low))
            elif not one:
                one_draw.append((i, k))
        msg = f"[{i}] {c}\n    " + " ".join(line)
        if log:
            log.write(msg + "\n")
            log.flush()
        if any(f[0] == i for f in fails) and not c.get("docs"):
            msg += f"\n    near-tie pairs per view (|s64 - tau| <= 1e-6 tau): {near_ties(c, t)}"
            if log:
                log.write(msg.splitlines()[-1] + "\n")
            print(msg, flush=True)
    if shard == 0:  # torch.compile(fullgraph=True) through the custom ops: same output and gradients
        try:
            compile_check(gen)
            print("compile check (fullgraph, aot_eager): ok")
            if log:
                log.write("compile check (fullgraph, aot_eager): ok\n")
        except Exception as e:  # noqa: BLE001
            fails.append((-1, "compile", None, str(e)[:300], None))
            print(f"compile check FAILED: {type(e).__name__}: {str(e)[:300]}")
            if log:
                log.write(f"compile check FAILED: {type(e).__name__}: {str(e)[:300]}\n")
    dt_s = time.time() - t0
    direct = sum(k.direct_launches for k in (launch._inv_norm, launch._fwd, launch._bwd))
    summary = (f"check_kernels shard {args.shard}: {n_run} of {args.n} configs ({n_packed} packed), "
               f"{len(fails)} failures "
               f"({len(one_draw)} more against a single ref_lowp draw of dbeta/dlam), {dt_s:.0f}s, "
               f"{direct} direct (cached) kernel launches; "
               f"worst |ker-ref64|/|lowp-ref64| per tensor: "
               + ", ".join(f"{k}={v:.2f}" for k, v in sorted(worst.items())))
    print(summary)
    if log:
        log.write(summary + "\n")
        log.close()
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
