"""Randomised correctness check of the fused Triton TDA/TRA kernels against the reference (GPU).

For each random configuration (dtype, B, H, GQA, M, N, d, offset, beta, lam, kappa, p, causal, TDA/TRA,
non-contiguous inputs) the output and every gradient must satisfy the FlashAttention criterion

    |kernel - ref64| <= 2 |ref_lowp - ref64| + atol        (Frobenius norms)

with ref64 the reference in float64 and ref_lowp the reference in the kernel's dtype. The output is
checked twice: from the training forward (with grad) and from the inference forward (no_grad, which
skips the survivor flags), as `out` and `out_nograd`. As in the
FlashAttention tests, inputs are drawn in the kernel's dtype and upcast for ref64, so that rounding them
is not an error shared by kernel and ref_lowp. With normalize_qk=True the kernels normalise inside
(fp32 inverse norms scaling fp32 dot products of the raw tiles): unlike ref_lowp they never round the
unit vectors to the low dtype, so every tensor, dbeta and dlam included, is measured against ref64 on the
same raw inputs.
Freed allocator memory is poisoned with NaN before each kernel call, so an unwritten element shows.

dbeta and dlam (per head, or 0-dim) are each one sum over every row of a head that cancels heavily, so
ref_lowp's error there is a single draw of its summation order's rounding: benchmarks/scalar_grad_stats.py
finds the fp32 reference failing the criterion against *itself* (another summation order) in 4.5% of dbeta
comparisons. For those two, |ref_lowp - ref64| is therefore the RMS over REORDERS evaluations of ref_lowp that
differ only in summation order (the plain one, and inputs with permuted feature dims). The single-draw
verdict is still logged ('~' after a tensor that fails only against the one draw) and counted in the summary.

    PYTHONPATH=src python3 benchmarks/check_kernels.py --n 240 [--seed 0] [--log check.log]
"""
import argparse
import math
import random
import sys
import time

import torch

DEV = "cuda"

import tda.ops as ops
from tda.ops.triton import attention as tk  # noqa: F401  (registers the torch.ops.tda custom ops)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (dtype, d, p, two_views): a fixed set of kernel variants keeps the number of compilations bounded
VARIANTS = ([("bf16", d, p, tv) for d in (64, 128) for p in (1.0, 2.0, 3.0) for tv in (True, False)]
            + [("fp16", d, 2.0, True) for d in (64, 128)] + [("fp16", 64, 3.0, False), ("fp16", 128, 1.0, True)]
            + [("fp32", d, p, True) for d in (64, 128) for p in (1.0, 2.0)] + [("fp32", 64, 3.0, False)])


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
    return dict(dtype=dt, D=d, p=p, two=two, B=rng.choice([1, 2]), H=hk * g, Hk=hk, M=M, N=M + extra,
                causal=rng.random() < 0.85, offset=extra if rng.random() < 0.8 else rng.choice([0, 5, 3000]),
                kappa=rng.choice([1.0, 1.0, 0.5, 2.0, 4.0]), beta_scale=rng.choice([0.5, 1.0, 1.0, 1.5]),
                noncontig=rng.random() < 0.25, scalar_params=rng.random() < 0.2,
                normalize=rng.random() < 0.6, fine_flags=rng.random() < 0.3, long_cfg=rng.random() < 0.5,
                two_launch_bwd=rng.random() < 0.25, list_row=rng.choice([None, None, None, 2, 5]),
                fwd_keys=rng.choice(["table", "table", "raw", "hat", "unit"]), row_screen=ROW_DRAW(rng.random()))


# row_screen (attention.ROW_SCREEN): the block table's choice for 70% of configurations, forced on or off for
# 15% each (one draw, so the other draws of a seed are unchanged)
ROW_DRAW = lambda r: "on" if r < 0.15 else ("off" if r < 0.3 else "table")  # noqa: E731
ROW_SCREEN = {"table": None, "on": True, "off": False}
# tma (attention.TMA: tensor-descriptor loads in the unit-key forward): the block table's choice for half of the
# configurations, forced to 0, 1 or 2 for a sixth each -- drawn from a stream of its own, so a seed's other draws
# are those of the code before it
TMA_DRAW = lambda r: "table" if r < 0.5 else str(min(int((r - 0.5) * 6), 2))  # noqa: E731
TMA = {"table": None, "0": 0, "1": 1, "2": 2}
# config_length (attention.CONFIG_LENGTH): 30% of the configurations that would take the configs of their own
# (short) length take 4K's instead -- d = 64 there: the register-capped backward of 64 x 32 blocks -- drawn from
# the TMA draw's stream
LEN_DRAW = lambda r: 4096 if r < 0.3 else None  # noqa: E731
# mask_screen (attention.MASK_SCREEN: the forward screens its masked stage too): the block table's choice (on)
# for 75% of the configurations, off for 25% -- from a third stream, so the other draws of a seed are unchanged
MASK_DRAW = lambda r: "off" if r < 0.25 else "table"  # noqa: E731
MASK_SCREEN = {"table": None, "on": True, "off": False}
# group (attention.FWD_GROUP, BWD_GROUP: the heads per section in which the forward's and the one-launch backward's
# programs start): the block table's for half of the configurations, else one of 1, 2, 3 and "all heads" (1000)
# for both -- from a fourth stream
GROUP_DRAW = lambda r: None if r < 0.5 else (1, 2, 3, 1000)[min(int((r - 0.5) * 8), 3)]  # noqa: E731
# --fwd-keys: (attention.SCREEN_HAT, attention.UNIT_KEYS)
FWD_KEYS = {"table": (None, None), "raw": (False, False), "hat": (True, False), "unit": (True, True)}


def grid_cap_config(two_launch_bwd):
    """A fixed configuration whose batch * heads exceeds CUDA's 65535 cap on a grid's second axis (tiny
    sequences, so it stays cheap); on the CPU smoke test, 12 heads under a cap lowered to 5."""
    big = DEV == "cuda"
    return dict(dtype="bf16" if big else "fp32", D=64, p=2.0, two=True, B=2100 if big else 3, H=32 if big else 4,
                Hk=32 if big else 2, M=8, N=8, causal=True, offset=0, kappa=1.0, beta_scale=1.0, noncontig=False,
                scalar_params=False, normalize=True, fine_flags=False, long_cfg=False,
                two_launch_bwd=two_launch_bwd, grid_cap=None if big else 5)


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


def run_inference(c, t, dtype, normalize=None):
    """The kernel's output with no gradient wanted (the forward without flags: FOR_BWD off)."""
    with torch.no_grad():
        inp = {k: x.to(dtype) if k not in ("beta", "lam") else x.float() for k, x in t.items()}
        kw = dict(kappa=c["kappa"], p=c["p"], causal=c["causal"], position_offset=c["offset"], backend="triton",
                  normalize_qk=c["normalize"] if normalize is None else normalize)
        if c["two"]:
            out = ops.threshold_differential_attention(inp["q1"], inp["k1"], inp["q2"], inp["k2"], inp["v"],
                                                       inp["beta"], inp["lam"], **kw)
        else:
            out = ops.threshold_rectified_attention(inp["q1"], inp["k1"], inp["v"], inp["beta"], **kw)
    return out.double()


def run(c, t, dout, dtype, backend, normalize=None):
    inp = {}
    for k, x in t.items():
        y = x.to(torch.float64 if dtype == "ref64" else dtype) if k not in ("beta", "lam") else (
            x.double() if dtype == "ref64" else x.float())
        inp[k] = y.detach().requires_grad_(True)
    kw = dict(kappa=c["kappa"], p=c["p"], causal=c["causal"], position_offset=c["offset"], backend=backend,
              normalize_qk=c["normalize"] if normalize is None else normalize)
    if c["two"]:
        out = ops.threshold_differential_attention(inp["q1"], inp["k1"], inp["q2"], inp["k2"], inp["v"],
                                                   inp["beta"], inp["lam"], **kw)
    else:
        out = ops.threshold_rectified_attention(inp["q1"], inp["k1"], inp["v"], inp["beta"], **kw)
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
    B, H, Hk, M, N, D = c["B"], c["H"], c["Hk"], c["M"], c["N"], c["D"]
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
    ap.add_argument("--fwd-keys", default="draw", choices=["draw"] + list(FWD_KEYS),
                    help="what the forward's screen and exact path score (attention.SCREEN_HAT, UNIT_KEYS): "
                         "table (the block table's choice), raw (raw keys and norms), hat (a unit-key screen, raw "
                         "exact path), unit (unit keys for both); drawn per configuration (table 40%%, each "
                         "other 20%%), or forced")
    ap.add_argument("--row-screen", default="draw", choices=["draw"] + list(ROW_SCREEN),
                    help="the inference forward's row-maximum screen (ROW_SCREEN): table (the block table's "
                         "choice: on at d = 128 in bf16/fp16), on, off; drawn per configuration (table 70%%, on "
                         "and off 15%% each), or forced")
    ap.add_argument("--tma", default="draw", choices=["draw"] + list(TMA),
                    help="tensor-descriptor loads in the unit-key forward (TMA): table, 0 (off), 1 (unit keys), "
                         "2 (and values); drawn per configuration (table 50%%, each other ~17%%), or forced")
    ap.add_argument("--mask-screen", default="draw", choices=["draw"] + list(MASK_SCREEN),
                    help="whether the forward screens its masked stage (MASK_SCREEN): table (on), on, off; drawn "
                         "per configuration (table 75%%, off 25%%), or forced")
    ap.add_argument("--config-length", type=int, default=None,
                    help="block configs as for this key length (attention.CONFIG_LENGTH) in every configuration "
                         "(0: each its own length); default: drawn (4K's for 30%% of those not drawing the "
                         "long-key configs)")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="stop drawing new configurations after this many seconds (0: no limit); the summary "
                    "then says how many ran")
    args = ap.parse_args()
    global DEV
    DEV = args.device
    rng = random.Random(args.seed)
    tma_rng = random.Random(args.seed * 1_000_003 + 17)
    mask_rng = random.Random(args.seed * 1_000_003 + 29)
    group_rng = random.Random(args.seed * 1_000_003 + 31)
    gen = torch.Generator(device=DEV).manual_seed(args.seed)
    log = open(args.log, "w") if args.log else None
    fails, worst, one_draw = [], {}, []
    t0 = time.time()
    shard, n_shards = (int(x) for x in args.shard.split("/"))
    n_run = 0

    def draws():
        # first, on one shard: batch * heads past the grid's second-axis cap (attention.MAX_GRID_Y), with the
        # one-launch and the two-launch backward (configurations -1 and -2)
        if shard == 1 % n_shards:
            for j, two_launch in ((-1, False), (-2, True)):
                yield j, grid_cap_config(two_launch)
        for i in range(args.n):
            c = dict(random_config(rng), tma=TMA_DRAW(tma_rng.random()), mask_screen=MASK_DRAW(mask_rng.random()),
                     group=GROUP_DRAW(group_rng.random()))
            if args.config_length is None:
                c["config_length"] = None if c["long_cfg"] else LEN_DRAW(tma_rng.random())
            else:
                c["config_length"] = args.config_length or None
            yield i, c

    for i, c in draws():
        if args.budget_s and time.time() - t0 > args.budget_s:
            print(f"time budget of {args.budget_s:.0f}s spent after {i} of {args.n} draws", flush=True)
            break
        vi = VARIANTS.index((c["dtype"], c["D"], c["p"], c["two"]))
        if i >= 0 and (2 * vi + c["causal"]) % n_shards != shard:
            continue
        n_run += 1
        cap, row, lists = tk.MAX_GRID_Y, tk.LIST_ROW, tk.LISTS
        hat, unit, rows, tma, mask = tk.SCREEN_HAT, tk.UNIT_KEYS, tk.ROW_SCREEN, tk.TMA, tk.MASK_SCREEN
        groups = tk.FWD_GROUP, tk.BWD_GROUP
        if c.get("grid_cap") is not None:  # the CPU smoke test lowers the cap instead of launching 65536 heads
            tk.MAX_GRID_Y = c["grid_cap"]
        t, dout, dt = make_inputs(c, gen)
        ref64 = run(c, t, dout, "ref64", "reference")
        low = run(c, t, dout, dt, "reference")
        reo = [reordered(c, t, dout, dt, args.seed * 1_000_003 + 7919 * i + j) for j in range(1, REORDERS)]
        poison()
        # long_cfg: the long-sequence configs (tk.BY_LENGTH off), which the check's short N would not reach;
        # fine_flags: survivor flags at 64 x 64 (at most), finer than the forward block where it is larger
        tk.BY_LENGTH = not c["long_cfg"]
        tk.CONFIG_LENGTH = c.get("config_length")
        # two_launch_bwd: the backward as two kernels (dK/dV, dQ) instead of the default one-launch kernel
        tk.MERGED_BWD = not c.get("two_launch_bwd", False)
        # list_row: scratch rows shorter than the candidate blocks (several compaction rounds per program,
        # which the check's short sequences would not reach at the default LIST_ROW), with the lists forced on
        if c.get("list_row"):
            tk.LIST_ROW, tk.LISTS = c["list_row"], True
        # fwd_keys: what the forward scores (FWD_KEYS: attention.SCREEN_HAT, UNIT_KEYS); --fwd-keys forces it.
        # row_screen: the inference forward's screen from row maxima (attention.ROW_SCREEN; --row-screen forces it)
        tk.ROW_SCREEN = ROW_SCREEN[c.get("row_screen", "table") if args.row_screen == "draw" else args.row_screen]
        tk.SCREEN_HAT, tk.UNIT_KEYS = FWD_KEYS[c.get("fwd_keys", "table") if args.fwd_keys == "draw"
                                               else args.fwd_keys]
        tk.TMA = TMA[c.get("tma", "table") if args.tma == "draw" else args.tma]
        tk.MASK_SCREEN = MASK_SCREEN[c.get("mask_screen", "table") if args.mask_screen == "draw"
                                     else args.mask_screen]
        tk.FWD_GROUP = tk.BWD_GROUP = c.get("group")  # None: the block table's
        BM, BN = tk._configs(c["D"], DTYPES[c["dtype"]], c["two"], c["N"])["fwd"][:2]
        tk.set_config(flags=(min(64, BM), min(64, BN)) if c.get("fine_flags") else None)
        try:
            # a first call goes through Triton's JIT (compiling, and filling the launch cache); the checked
            # call, on fresh poisoned memory, then takes the direct launches of tda.ops.triton.launch
            run(c, t, dout, dt, "triton")
            poison()
            ker = run(c, t, dout, dt, "triton")
            poison()
            ker["out_nograd"] = run_inference(c, t, dt)
        except Exception as e:  # noqa: BLE001 (a crash is a failure of this configuration)
            fails.append((i, "crash", c, str(e)[:300], None))
            print(f"[{i}] {c}\n    CRASH {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        finally:
            tk.set_config()
            tk.BY_LENGTH, tk.MERGED_BWD, tk.MAX_GRID_Y, tk.CONFIG_LENGTH = True, True, cap, None
            tk.LIST_ROW, tk.LISTS = row, lists
            tk.SCREEN_HAT, tk.UNIT_KEYS, tk.ROW_SCREEN, tk.TMA, tk.MASK_SCREEN = hat, unit, rows, tma, mask
            tk.FWD_GROUP, tk.BWD_GROUP = groups
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
        if any(f[0] == i for f in fails):
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
    direct = sum(k.direct_launches for k in (tk._inv_norm, tk._fwd, tk._dkdv, tk._dq, tk._bwd))
    summary = (f"check_kernels shard {args.shard}: {n_run} of {args.n} configs, {len(fails)} failures "
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
