"""Short sequences are host-bound in eager mode (one TDA call costs the host ~0.8-1 ms of Python around its
Triton launches). CUDA graphs remove that: this measures fwd+bwd of the TDA op and of SDPA-flash, eager and
under torch.compile(backend="cudagraphs") (dynamo + AOT autograd, forward and backward replayed as CUDA
graphs; the TDA kernels enter through the tda::threshold_attention_fwd/_bwd custom ops), on the benchmark's
short shapes, and checks that the graphed TDA gives the eager output and gradients. The inputs are marked
static (as a model's parameters would be), so a replay copies nothing in.

    PYTHONPATH=src python3 benchmarks/bench_cudagraphs.py [--shapes 4,16,1024;2,16,4096] [--dims 64,128]
"""
import argparse

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import tda.ops as ops


def bench(fn, grads):
    return triton.testing.do_bench(fn, warmup=30, rep=200, grad_to_none=grads, return_mode="median")


def tda_op(q1, k1, q2, k2, v, beta, lam):
    return ops.threshold_differential_attention(q1, k1, q2, k2, v, beta, lam, backend="triton")


def sdpa_op(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4,16,1024;2,16,4096")
    ap.add_argument("--dims", default="64,128")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; bf16, causal, "
          f"random inputs; fwd+bwd medians in ms (do_bench)", flush=True)
    print("| B | H | N | d | TDA eager | TDA graphs | SDPA eager | SDPA graphs | ratio eager | ratio graphs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(";"):
        B, H, N = (int(x) for x in shape.split(","))
        for D in (int(x) for x in args.dims.split(",")):
            g = torch.Generator(device="cuda").manual_seed(0)
            xs = [torch.randn(B, H, N, D, generator=g, device="cuda").to(torch.bfloat16).requires_grad_(True)
                  for _ in range(5)]
            beta = torch.ones(H, device="cuda", requires_grad=True)
            lam = torch.full((H,), 0.5, device="cuda", requires_grad=True)
            dout = torch.randn(B, H, N, D, generator=g, device="cuda").to(torch.bfloat16)
            grads = xs + [beta, lam]
            torch._dynamo.reset()
            for t in grads:  # fixed addresses, as parameters would be: no copy into the graph's inputs per call
                torch._dynamo.mark_static_address(t)
            tda_g = torch.compile(tda_op, backend="cudagraphs", fullgraph=True)
            sdpa_g = torch.compile(sdpa_op, backend="cudagraphs", fullgraph=True)
            # the graphed op must reproduce the eager one (same kernels, so equal up to launch order)
            res = []
            for fn in (tda_op, tda_g, tda_g):  # the second graphed call replays the recorded graph
                out = fn(*xs, beta, lam)
                res.append([out.detach().clone()] + [t.clone() for t in torch.autograd.grad(out, grads, dout)])
            for a, b in zip(res[0], res[2]):
                torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)
            t = {}
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                t["tda_e"] = bench(lambda: tda_op(*xs, beta, lam).backward(dout), grads)
                t["tda_g"] = bench(lambda: tda_g(*xs, beta, lam).backward(dout), grads)
                t["sdpa_e"] = bench(lambda: sdpa_op(xs[0], xs[1], xs[4]).backward(dout), grads)
                t["sdpa_g"] = bench(lambda: sdpa_g(xs[0], xs[1], xs[4]).backward(dout), grads)
            print(f"| {B} | {H} | {N} | {D} | {t['tda_e']:.3f} | {t['tda_g']:.3f} | {t['sdpa_e']:.3f} | "
                  f"{t['sdpa_g']:.3f} | **{t['tda_e'] / t['sdpa_e']:.2f}** | **{t['tda_g'] / t['sdpa_g']:.2f}** |",
                  flush=True)


if __name__ == "__main__":
    main()
