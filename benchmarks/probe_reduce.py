"""torch's reduction of a (2, 16, n) fp32 buffer over its last dim: the shape of the backward's dbeta / dlam
partials (n = B * M per-row values before 381f305, B * cdiv(M, 64) per-program sums now). do_bench (L2 flushed)
and the profiler's kernel time. On the H200 n = 4096 took 7.3 us of kernel time and n = 64 1.9 us
(docs/results/kernels/bwd-sums/probe-reduce.log).

    python3 benchmarks/probe_reduce.py
"""
import torch
from triton.testing import do_bench


def main():
    for n in (64, 256, 1024, 2048, 4096, 8192, 16384):
        g = torch.randn(2, 16, n, device="cuda")
        t = do_bench(lambda: g.sum(2), warmup=50, rep=300)
        t2 = do_bench(lambda: g.view(32, n).sum(1), warmup=50, rep=300)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                g.sum(2)
            torch.cuda.synchronize()
        k = [e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        print(f"(2,16,{n}) sum(2): do_bench {t * 1e3:.1f} us, view {t2 * 1e3:.1f} us, "
              f"profiler kernel {sum(k) / max(len(k), 1):.1f} us x{len(k)}")


if __name__ == "__main__":
    main()
