"""Host time of one eager decode step, TDA against softmax, with the attention kernels stubbed out (CPU).

An eager decode step of a small model is bound by the host: Python and PyTorch dispatch for every op of every
layer, while the GPU waits. This measures that part on a CPU: the same model code, the KV cache and its
writes, but the TDA decode and append kernels replaced by stubs that only allocate their output (SDPA's CPU
kernel, at these sizes, costs about as little). The Triton launches themselves are not in it.

    PYTHONPATH=src python3 benchmarks/host_decode_step.py        # 8 layers x 64 wide, batch 1, 200 steps

Prints microseconds per step and per layer for each variant.
"""
import argparse
import time

import torch

import tda.ops.kvcache as kvcache
from tda.models import GPT
from tda.models.config import GPTConfig
from tda.models.generate import decode_one, prefill


class _StubKernels:
    """Stands in for tda.ops.triton.decode: allocations only."""

    @staticmethod
    def append_kv(*args, **kwargs):
        return None

    @staticmethod
    def decode_attention(q1, q2, k1, k2, v, beta, lam, lengths, longest, **kwargs):
        B, H, M, _ = q1.shape
        return torch.empty(B, H, M, v.shape[3], dtype=q1.dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    kvcache._decode_kernel = lambda *args: _StubKernels
    res = {}
    for att in ("softmax", "tda"):
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=64, block_size=512, n_layer=a.layers, n_head=4, n_embd=64,
                          attention=att)).eval()
        cache = m.new_cache(a.batch, 512)
        tok = torch.ones(a.batch, dtype=torch.long)
        with torch.no_grad():
            prefill(m, cache, [torch.arange(5)] * a.batch)
            for _ in range(20):
                decode_one(m, cache, tok)
            prefill(m, cache, [torch.arange(5)] * a.batch)
            t = time.perf_counter()
            for _ in range(a.steps):
                decode_one(m, cache, tok)
            us = (time.perf_counter() - t) / a.steps * 1e6
        res[att] = us
        print(f"{att:8s} {us:8.0f} us per decode step, {us / a.layers:6.0f} per layer")
    print(f"tda / softmax host time: {res['tda'] / res['softmax']:.2f}x")
    return res


if __name__ == "__main__":
    main()
