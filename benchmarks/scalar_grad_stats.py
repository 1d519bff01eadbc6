"""How often does the GPU check's criterion fail for a scalar gradient when both sides are equally accurate?
(CPU, reference op only; docs/benchmarks.md, "Correctness on the GPU".)

The check (benchmarks/check_kernels.py) requires |kernel - ref64| <= 2 |ref_fp32 - ref64| + atol for every
gradient. For a 0-dim beta or lam the gradient is one number, a sum over every row of every head that
cancels heavily, so its fp32 error is one random draw. Here two fp32 evaluations of the *reference itself*
stand in for kernel and ref_fp32, on the check's fp32 configurations with scalar beta/lam. They differ only in
the order of their sums: the second runs on inputs whose feature dims are permuted (q, k by one permutation,
v and dO by another), which changes no value mathematically but every dot product's summation order, and on
query chunks of 48 rows instead of 256. A failure of A against B is then no bug
in either, only the statistics of comparing two draws: the rate measured here is what an fp32 kernel as
accurate as the reference should expect.

Second, the estimator the check now uses for dbeta/dlam: A against the RMS error of REORDERS evaluations
(the plain one and REORDERS - 1 with other feature permutations, chunks of 256 rows) -- the rate an
fp32 kernel as accurate as the reference should expect under it.

    PYTHONPATH=src:benchmarks python3 benchmarks/scalar_grad_stats.py [--n 200] [--seed 0]
"""
import argparse
import math
import random

import torch

from tda.ops import reference


REORDERS = 4  # as benchmarks/check_kernels.py


def draw(rng):
    d = rng.choice([64, 128])
    two = rng.random() < 0.8
    hk, g = rng.choice([1, 2, 4]), rng.choice([1, 1, 2, 4])
    M = rng.choice([64, 100, 128, 129, 255, 333, 512])
    extra = rng.choice([0, 0, 0, 1, 37, 200])
    return dict(D=d, p=rng.choice([1.0, 2.0, 3.0]), two=two, B=rng.choice([1, 2]), H=hk * g, Hk=hk, M=M,
                N=M + extra, causal=rng.random() < 0.85, offset=extra if rng.random() < 0.8 else rng.choice([0, 5]),
                kappa=rng.choice([1.0, 1.0, 0.5, 2.0, 4.0]), beta=rng.choice([0.5, 1.0, 1.0, 1.5]),
                normalize=rng.random() < 0.6)


def scalar_grads(c, t, dtype, chunk):
    inp = {k: x.to(dtype).detach().requires_grad_(True) for k, x in t.items()}
    kw = dict(kappa=c["kappa"], p=c["p"], causal=c["causal"], position_offset=c["offset"],
              normalize_qk=c["normalize"], chunk_size=chunk)
    if c["two"]:
        out = reference.threshold_differential_attention(inp["q1"], inp["k1"], inp["q2"], inp["k2"], inp["v"],
                                                         inp["beta"], inp["lam"], **kw)
        names = ["beta", "lam"]
    else:
        out = reference.threshold_rectified_attention(inp["q1"], inp["k1"], inp["v"], inp["beta"], **kw)
        names = ["beta"]
    grads = torch.autograd.grad(out, [inp[n] for n in names], t["dout"].to(dtype).expand_as(out))
    return {n: g.double().item() for n, g in zip(names, grads)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    fails = {"beta": [0, 0], "lam": [0, 0]}  # name -> [failures, trials]
    fails_rms = {"beta": [0, 0], "lam": [0, 0]}  # against the RMS of REORDERS evaluations
    ratios = {"beta": [], "lam": []}
    for i in range(args.n):
        c = draw(rng)
        B, H, Hk, M, N, D = c["B"], c["H"], c["Hk"], c["M"], c["N"], c["D"]
        r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
        t = {"q1": r(B, H, M, D), "k1": r(B, Hk, N, D), "v": r(B, Hk, N, D), "beta": torch.tensor(c["beta"])}
        if c["two"]:
            t.update(q2=r(B, H, M, D), k2=r(B, Hk, N, D), lam=torch.rand((), generator=gen) * 0.8 + 0.1)
        for k in ("q1", "k1", "q2", "k2"):
            if k in t and not c["normalize"]:
                t[k] = t[k] / t[k].norm(dim=-1, keepdim=True)
        t = {k: x.float() for k, x in t.items()}  # inputs exactly representable in fp32
        t["dout"] = r(B, H, M, D).float()
        g64 = scalar_grads(c, t, torch.float64, 256)
        ga = scalar_grads(c, t, torch.float32, 256)
        pk, pv = torch.randperm(D, generator=gen), torch.randperm(D, generator=gen)
        tp = {k: (x[..., pv] if k in ("v", "dout") else x[..., pk]) if x.dim() else x for k, x in t.items()}
        gb = scalar_grads(c, tp, torch.float32, 48)
        gr = [ga]  # the check's estimator: the plain evaluation and REORDERS - 1 permuted ones
        for _ in range(REORDERS - 1):
            qk, vo = torch.randperm(D, generator=gen), torch.randperm(D, generator=gen)
            gr.append(scalar_grads(c, {k: (x[..., vo] if k in ("v", "dout") else x[..., qk]) if x.dim() else x
                                       for k, x in t.items()}, torch.float32, 256))
        for n, ref in g64.items():
            ea, eb = abs(ga[n] - ref), abs(gb[n] - ref)
            atol = 1e-6 * abs(ref) + 1e-6  # the check's atol for a one-element tensor
            for e_ker, e_low in ((ea, eb), (eb, ea)):  # each evaluation in the kernel's seat, in turn
                fails[n][1] += 1
                if not e_ker <= 2 * e_low + atol:
                    fails[n][0] += 1
            rms = math.sqrt(sum((g[n] - ref) ** 2 for g in gr) / len(gr))
            fails_rms[n][1] += 1
            fails_rms[n][0] += not eb <= 2 * rms + atol  # B (its own summation order) in the kernel's seat
            if ea > 0 and eb > 0:
                ratios[n].append(max(ea, eb) / min(ea, eb))
        if (i + 1) % 25 == 0:
            print(f"{i + 1} draws: " + ", ".join(f"d{n} fails {f}/{t_}" for n, (f, t_) in fails.items()), flush=True)
    print(f"criterion |A - ref64| <= 2 |B - ref64| + atol between two fp32 reference evaluations (feature dims "
          f"permuted, query chunks 256 and 48), scalar beta/lam, {args.n} configurations (seed {args.seed}):")
    for n, (f, t_) in fails.items():
        rs = sorted(ratios[n])
        med = rs[len(rs) // 2] if rs else math.nan
        print(f"  d{n}: {f} failures in {t_} comparisons ({100 * f / max(t_, 1):.1f}%); error ratio between the "
              f"two evaluations: median {med:.2f}, max {max(rs) if rs else math.nan:.1f}")
    print(f"criterion |B - ref64| <= 2 RMS(|A_r - ref64|) + atol, the RMS over {REORDERS} evaluations A_r "
          f"(check_kernels.py's estimator for dbeta/dlam):")
    for n, (f, t_) in fails_rms.items():
        print(f"  d{n}: {f} failures in {t_} comparisons ({100 * f / max(t_, 1):.1f}%)")


if __name__ == "__main__":
    main()
