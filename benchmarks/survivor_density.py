"""Survivor density of TDA on random inputs at several block grains (CPU, the reference's maths).

rho = the fraction of (query block, key block) pairs meeting the causal region that hold any exceedance of
either view: what the fused backward cannot skip. The cost model in docs/benchmarks.md turns rho into a
predicted time ratio against flash attention; finer survivor flags (`set_config(flags=...)`) are worth
trying where rho falls quickly with the grain.

    PYTHONPATH=src python3 benchmarks/survivor_density.py [--ns 1024,4096,8192] [--dims 64,128] [--heads 2]
"""
import argparse

import torch

from tda.ops import reference


def density(N, D, heads=2, beta=1.0, kappa=1.0, grains=(128, 64, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    tau = reference.tau(torch.arange(N), torch.full((heads,), beta), kappa, D)  # (H, N)
    live = torch.zeros(heads, N, N, dtype=torch.bool)
    for _ in range(2):  # the two views
        q = reference.l2_normalize(torch.randn(heads, N, D, generator=g))
        k = reference.l2_normalize(torch.randn(heads, N, D, generator=g))
        for i0 in range(0, N, 1024):  # row chunks keep the score block at 1024 x N
            live[:, i0:i0 + 1024] |= (q[:, i0:i0 + 1024] @ k.transpose(-1, -2)) > tau[:, i0:i0 + 1024, None]
    live &= torch.ones(N, N, dtype=torch.bool).tril()
    out = {"survivors_per_row": live.sum().item() / (heads * N)}
    for gr in grains:
        n = N // gr
        occupied = live.view(heads, n, gr, n, gr).any(4).any(2)
        r, c = torch.arange(n)[:, None] * gr, torch.arange(n)[None, :] * gr
        meets_causal = c <= r + gr - 1
        out[gr] = (occupied & meets_causal).sum().item() / (meets_causal.sum().item() * heads)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default="1024,4096,8192")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--heads", type=int, default=2)
    a = ap.parse_args()
    print("| N | d | survivors / row | rho 128 x 128 | rho 64 x 64 | rho 32 x 32 |")
    print("|---|---|---|---|---|---|")
    for N in (int(x) for x in a.ns.split(",")):
        for D in (int(x) for x in a.dims.split(",")):
            r = density(N, D, a.heads)
            print(f"| {N} | {D} | {r['survivors_per_row']:.3f} | {r[128]:.3f} | {r[64]:.3f} | {r[32]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
