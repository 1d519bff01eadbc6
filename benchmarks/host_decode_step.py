"""Host time of one eager decode step, TDA against softmax, with the Triton launches stubbed out (CPU).

An eager decode step of a small model is bound by the host: Python and PyTorch dispatch for every op of every
layer, while the GPU waits. This measures that part on a CPU: the same model code, the KV cache, the decode
entry and the decode kernels' Python wrappers, with every Triton launch replaced by the launch cache's own
work (its per-call key and lookup) and nothing launched. SDPA's CPU kernel, at these sizes, costs about as
little. Not in it: Triton's launcher and the CUDA launches themselves, which a GPU adds per kernel.

    PYTHONPATH=src python3 benchmarks/host_decode_step.py        # 8 layers x 64 wide (d = 64), batch 1

Prints microseconds per step and per layer for each variant (the best of --repeats runs of --steps steps).
"""
import argparse
import time

import torch

import tda.ops.kvcache as kvcache
from tda.models import GPT
from tda.models.config import GPTConfig
from tda.models.generate import decode_one, prefill
from tda.ops.triton import decode as decode_kernels
from tda.ops.triton import launch_cache


def _key_only(self, grid, args, kw):
    """FastKernel._launch's host work on a cached specialisation, without the launch."""
    if not hasattr(self.fn, "params"):  # under TRITON_INTERPRET=1 (tests): no signature to key on
        return None
    self.lookup(args, kw)
    return [kw[n] for n in self._sig[5]]  # the direct launch's constexpr list


def _stub_launches():
    launch_cache.FastKernel._launch = _key_only
    decode_kernels.unsupported_reason = lambda *args: None         # CPU tensors take the kernel path
    kvcache._decode_kernel = lambda backend, q, k, v, needs_grad: decode_kernels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    _stub_launches()
    res = {}
    for att in ("softmax", "tda"):
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=64, block_size=512, n_layer=a.layers, n_head=1, n_embd=64,
                          attention=att)).eval()
        cache = m.new_cache(a.batch, 512)
        tok = torch.ones(a.batch, dtype=torch.long)
        best = float("inf")
        with torch.no_grad():
            for _ in range(a.repeats):
                prefill(m, cache, [torch.arange(5)] * a.batch)
                for _ in range(10):
                    decode_one(m, cache, tok)
                t = time.perf_counter()
                for _ in range(a.steps):
                    decode_one(m, cache, tok)
                best = min(best, (time.perf_counter() - t) / a.steps * 1e6)
        res[att] = best
        print(f"{att:8s} {best:8.0f} us per decode step, {best / a.layers:6.1f} per layer")
    print(f"tda / softmax host time: {res['tda'] / res['softmax']:.2f}x "
          f"({(res['tda'] - res['softmax']) / a.layers:.1f} us more per layer)")
    return res


if __name__ == "__main__":
    main()
