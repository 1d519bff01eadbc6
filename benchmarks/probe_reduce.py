import torch, triton
from triton.testing import do_bench
for n in (64, 256, 1024, 2048, 4096, 8192, 16384):
    g = torch.randn(2, 16, n, device="cuda")
    t = do_bench(lambda: g.sum(2), warmup=50, rep=300)
    t2 = do_bench(lambda: g.view(32, n).sum(1), warmup=50, rep=300)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            g.sum(2)
        torch.cuda.synchronize()
    k = [e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"(2,16,{n}) sum(2): do_bench {t*1e3:.1f} us, view {t2*1e3:.1f} us, profiler kernel {sum(k)/max(len(k),1):.1f} us x{len(k)}")
