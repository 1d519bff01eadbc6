"""TDA against both of SDPA's fast softmax backends on the H200: flash (FlashAttention-2, the issue's baseline)
and cuDNN (the backend torch 2.11 picks for these shapes on sm_90 unless told otherwise: the compiled GPT
softmax model runs it). bf16, causal, beta = 1, lam = 0.5; the forward without gradients (do_bench medians) and
fwd+bwd replayed from a CUDA graph (GPU time alone), per bench_attention's shapes and input kinds.

    PYTHONPATH=src python3 benchmarks/bench_sdpa_backends.py [--kinds random,planted] [--dims 64,128]
"""
import argparse
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import tda.ops as ops
from bench_attention import SHAPES, bench, graphed_time, make_inputs

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def case(B, H, N, D, kind):
    xs = [t.requires_grad_(True) for t in make_inputs(B, H, N, D, kind)]
    beta = torch.ones(H, device="cuda", requires_grad=True)
    lam = torch.full((H,), 0.5, device="cuda", requires_grad=True)
    dout = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
    fns = {"tda": _tda, **{name: partial(_sdpa, be) for name, be in BACKENDS.items()}}
    res = {}
    for name, f in fns.items():
        with torch.no_grad():
            res[name + "_fwd"] = bench(lambda: f(xs, beta, lam))
        res[name + "_fb"], err = graphed_time(lambda: f(xs, beta, lam).backward(dout), xs + [beta, lam])
        if err:
            print(f"  {name} capture failed: {err}", flush=True)
    return res


def _tda(xs, beta, lam):
    return ops.threshold_differential_attention(*xs, beta, lam)


def _sdpa(be, xs, beta, lam):
    with sdpa_kernel(be):
        return F.scaled_dot_product_attention(xs[0], xs[1], xs[4], is_causal=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default="random,planted")
    ap.add_argument("--dims", default="64,128")
    a = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; ms; fwd: no grad, do_bench median; "
          "fb: fwd+bwd graphed", flush=True)
    print("| inputs | B x H x N | d | fwd TDA / flash / cuDNN | fwd TDA/flash | fwd TDA/cuDNN | "
          "fb TDA / flash / cuDNN | fb TDA/flash | fb TDA/cuDNN |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for kind in a.kinds.split(","):
        for D in (int(d) for d in a.dims.split(",")):
            for B, H, N in SHAPES:
                r = case(B, H, N, D, kind)
                f = [r[n + "_fwd"] for n in ("tda", "flash", "cudnn")]
                g = [r[n + "_fb"] for n in ("tda", "flash", "cudnn")]
                ratio = lambda x, y: f"{x / y:.2f}" if x and y else "-"  # noqa: E731
                fmt = lambda v: " / ".join(f"{x:.3f}" if x else "-" for x in v)  # noqa: E731
                print(f"| {kind} | {B} x {H} x {N} | {D} | {fmt(f)} | {ratio(f[0], f[1])} | {ratio(f[0], f[2])} | "
                      f"{fmt(g)} | **{ratio(g[0], g[1])}** | **{ratio(g[0], g[2])}** |", flush=True)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
