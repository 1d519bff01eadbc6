"""Host cost of calling the torch custom ops tda::threshold_attention_fwd / _bwd, the kernels left out: the
launchers are replaced by stubs that return preallocated tensors, so what remains is torch's dispatch (the
dispatcher, the autograd kernel, the registration API's wrapper) and the op's own Python around the launch.
Runs on a CPU (any torch), so registration choices can be compared where no GPU is: a compiled model pays this
twice per layer and step (docs/benchmarks.md, "Training under torch.compile").

    PYTHONPATH=src python3 benchmarks/probe_dispatch.py
"""
import time

import torch

from tda.ops.triton import attention as tk


def per_call_us(fn, n=20000):
    for _ in range(200):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main():
    B, H, M, D = 1, 2, 64, 64
    g = torch.Generator().manual_seed(0)
    q1, k1, q2, k2, v, do = (torch.randn(B, H, M, D, generator=g) for _ in range(6))
    tau = torch.rand(H, M, generator=g)
    lam = torch.full((H,), 0.5)
    out = torch.randn(B, H, M, D)
    flags = torch.ones(B * H, 1, 1, dtype=torch.int8)
    rq, rk = torch.rand(2, B, H, M), torch.rand(2, B, H, M)
    grads = [torch.randn(B, H, M, D) for _ in range(5)]
    saved = tk._launch_fwd, tk._launch_bwd, tk._configs
    try:
        # fresh outputs per call, as the real launchers allocate them (the dispatcher may check aliasing)
        tk._launch_fwd = lambda *a, **k: (out.clone(), flags.clone(), rq.clone(), rk.clone())
        tk._launch_bwd = lambda *a, **k: (*[t.clone() for t in grads], torch.zeros(2, H, B, M))
        tk._configs = lambda *a, **k: {"flags": (64, 64)}
        fwd = torch.ops.tda.threshold_attention_fwd
        bwd = torch.ops.tda.threshold_attention_bwd
        rows = [
            ("fwd op", lambda: fwd(q1, k1, q2, k2, v, tau, lam, 2.0, True, True)),
            ("bwd op", lambda: bwd(do, q1, k1, q2, k2, v, tau, lam, flags, rq, rk, 2.0, True, 64, 64)),
            ("stub launcher alone (4 clones)", lambda: tk._launch_fwd()),
        ]
        print(f"torch {torch.__version__}; host us per call (kernels stubbed):")
        with torch.no_grad():  # as a compiled graph calls them
            for name, fn in rows:
                print(f"  {name:32s} {per_call_us(fn):7.1f}")
    finally:
        tk._launch_fwd, tk._launch_bwd, tk._configs = saved


if __name__ == "__main__":
    main()
