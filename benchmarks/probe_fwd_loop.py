"""How fast can the forward's key loop run at all? A probe for the fwd <= 0.8x target (docs/benchmarks.md).

The forward visits every causal (query block, key block) pair with two QK products, screens the scores against
the row thresholds, and takes an exact path (exceedances, PV) on the rare live pairs. This times stripped
loops over the unmasked causal pairs, with no exact path at all, so their time is a floor for any forward of
this shape of work:
  rows    the two products and the screen (one FMA per score and view, a max), reduced per row only
          (within a warp: no cross-warp step), carried in registers to the end -- a GEMM-like loop;
  tile    the same, plus what the forward does per pair today: a whole-tile reduction (across warps) and
          a flag store;
  branch  tile, plus the forward's `if alive:` holding a V load and the PV product (never taken here:
          thresholds above every score), i.e. the loop's control flow with no work behind it;
  branch+rk  branch with the forward's screen: inverse key norms loaded in the loop, s * rk - thr;
  branch+rk prefetched  the same with the norms loaded one key block ahead.
Compared in one process against SDPA-flash's forward and the TDA inference forward at the same shape.

    PYTHONPATH=src python3 benchmarks/probe_fwd_loop.py [--shapes 1,16,8192;1,16,16384] [--dims 64,128]
"""
import argparse

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention import SDPBackend, sdpa_kernel

import bench_attention as ba
from tda.ops.triton import attention as tk


@triton.jit
def probe_kernel(Q1, K1, Q2, K2, V, THR, RK1, RK2, OUT, FLAGS, M, N, n_nt,
                 D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MODE: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heavy first, as the forward
    bh = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    base = bh * M * D
    q1 = tl.load(Q1 + base + offs_m[:, None] * D + offs_d[None, :])
    q2 = tl.load(Q2 + base + offs_m[:, None] * D + offs_d[None, :])
    thr = tl.load(THR + offs_m)
    kb = bh * N * D
    run = tl.full([BLOCK_M], -1.0, tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    hi = (pid_m * BLOCK_M // BLOCK_N) * BLOCK_N  # the unmasked causal key blocks
    rb = bh * N
    nk1 = tl.load(RK1 + rb + tl.arange(0, BLOCK_N))  # MODE 4: the first block's inverse norms, prefetched
    nk2 = tl.load(RK2 + rb + tl.arange(0, BLOCK_N))
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k1 = tl.load(K1 + kb + offs_n[:, None] * D + offs_d[None, :])
        k2 = tl.load(K2 + kb + offs_n[:, None] * D + offs_d[None, :])
        s1 = tl.dot(q1, tl.trans(k1))
        s2 = tl.dot(q2, tl.trans(k2))
        if MODE == 3:  # the forward's screen: inverse key norms loaded in the loop, one FMA per score
            rk1 = tl.load(RK1 + rb + offs_n)
            rk2 = tl.load(RK2 + rb + offs_n)
            c = tl.maximum(s1 * rk1[None, :] - thr[:, None], s2 * rk2[None, :] - thr[:, None])
        elif MODE == 4:  # the same with the norms prefetched one block ahead (registers)
            c = tl.maximum(s1 * nk1[None, :] - thr[:, None], s2 * nk2[None, :] - thr[:, None])
            nxt = offs_n + BLOCK_N
            nk1 = tl.load(RK1 + rb + nxt, mask=nxt < N, other=0.0)
            nk2 = tl.load(RK2 + rb + nxt, mask=nxt < N, other=0.0)
        else:
            c = tl.maximum(s1 - thr[:, None], s2 - thr[:, None])
        if MODE == 0:
            run = tl.maximum(run, tl.max(c, 1))
        else:
            alive = tl.max(tl.max(c, 1), 0) > 0
            tl.store(FLAGS + bh * (M // BLOCK_M) * n_nt + pid_m * n_nt + start_n // BLOCK_N, alive.to(tl.int8))
            if MODE >= 2:
                if alive:
                    v = tl.load(V + kb + offs_n[:, None] * D + offs_d[None, :])
                    acc += tl.dot(c.to(v.dtype), v)
    tl.store(OUT + bh * M + offs_m, run + tl.sum(acc, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1,16,8192;1,16,16384")
    ap.add_argument("--dims", default="64,128")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}; bf16, causal; ms "
          f"(do_bench medians)", flush=True)
    blocks = {64: [(64, 64, 4, 3), (128, 64, 8, 3)], 128: [(128, 64, 8, 3)]}
    for shape in args.shapes.split(";"):
        B, H, N = (int(x) for x in shape.split(","))
        for D in (int(x) for x in args.dims.split(",")):
            q1, k1, q2, k2, v = ba.make_inputs(B, H, N, D, "random", seed=1)
            nrm = lambda t: (t.float() / t.float().norm(dim=-1, keepdim=True)).to(t.dtype).contiguous()  # noqa: E731
            q1, k1, q2, k2 = map(nrm, (q1, k1, q2, k2))
            thr = torch.full((N,), 2.0, device="cuda")  # above any cosine: no pair is ever live
            rk = torch.rand(B * H * N, device="cuda") + 0.5  # stand-in inverse key norms
            beta, lam = torch.ones(H, device="cuda"), torch.full((H,), 0.5, device="cuda")
            prep = ba.prepare(q1, k1, q2, k2, v, beta, lam)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
                t_sdpa = ba.bench(lambda: F.scaled_dot_product_attention(q1, k1, v, is_causal=True))
            t_tda = ba.kernel_time_inference(prep)
            line = f"B={B} H={H} N={N} d={D}: SDPA fwd {t_sdpa:.3f} | TDA inference fwd {t_tda:.3f} ({t_tda / t_sdpa:.2f}x)"
            print(line, flush=True)
            for BM, BN, w, st in blocks[D]:
                out = torch.empty(B * H * N, device="cuda")
                flags = torch.empty(B * H * (N // BM) * (N // BN), device="cuda", dtype=torch.int8)
                for mode, name in ((0, "rows"), (1, "tile"), (2, "branch"), (3, "branch+rk"), (4, "branch+rk prefetched")):
                    def f():
                        probe_kernel[(N // BM, B * H)](q1, k1, q2, k2, v, thr, rk, rk, out, flags, N, N, N // BN, D=D,
                                                       BLOCK_M=BM, BLOCK_N=BN, MODE=mode, num_warps=w,
                                                       num_stages=st)
                    try:
                        f()
                        t = ba.bench(f)
                    except Exception as e:  # noqa: BLE001
                        print(f"  ({BM}, {BN}, {w}, {st}) {name}: failed {type(e).__name__}: {str(e)[:100]}")
                        continue
                    print(f"  ({BM}, {BN}, {w}, {st}) {name:20s}: {t:.3f} ms = {t / t_sdpa:.2f}x SDPA", flush=True)


if __name__ == "__main__":
    main()
