"""Where the time of one TDA call goes (GPU): host work per call vs GPU kernel time.

1. Host cost per call: a tiny shape (GPU work negligible), N calls back to back, wall time / N -- the
   Python + dispatch + launch work the CPU does for one call (TDA op, SDPA, a bare Triton launch, an empty
   allocation), forward alone (no grad) and forward + backward.
2. GPU time per kernel (torch.profiler, CUDA activity) for one forward + backward of TDA and of SDPA-flash
   at the benchmark shapes: the sum of the kernel durations, i.e. the time with no host overhead at all.

    PYTHONPATH=src python3 benchmarks/profile_op.py [--shapes 4x16x1024,2x16x4096] [--dims 64,128]
"""
import argparse
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import tda.ops as ops
from tda.ops.triton import attention as tk


def _inputs(B, H, N, D, grad):
    g = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(B, H, N, D, generator=g, device="cuda").bfloat16().requires_grad_(grad) for _ in range(5)]
    beta = torch.ones(H, device="cuda", requires_grad=grad)
    lam = torch.full((H,), 0.5, device="cuda", requires_grad=grad)
    return xs, beta, lam


def host_cost(fn, n=300):
    for _ in range(30):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def host_table(log):
    xs, beta, lam = _inputs(1, 1, 64, 64, True)
    dout = torch.randn_like(xs[0])
    xd = [x.detach() for x in xs]

    def tda_f():
        with torch.no_grad():
            ops.threshold_differential_attention(*xd[:4], xd[4], beta, lam)

    def tda_fb():
        ops.threshold_differential_attention(*xs[:4], xs[4], beta, lam).backward(dout)

    def sdpa_f():
        with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(xd[0], xd[1], xd[4], is_causal=True)

    def sdpa_fb():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(xs[0], xs[1], xs[4], is_causal=True).backward(dout)

    k1, k2 = xd[1], xd[3]

    def tda_f_grad():
        ops.threshold_differential_attention(*xs[:4], xs[4], beta, lam)

    cfg = tk._configs(64, torch.bfloat16, True, 64)
    scale = tk._tau_scale(64, 0, 1.0, 64, xd[0].device, torch.float32)
    _, flags, rq, rk = tk._launch_fwd(*xd[:4], xd[4], beta, scale, lam, 2.0, True, cfg, True)

    def launch_fwd():
        tk._launch_fwd(*xd[:4], xd[4], beta, scale, lam, 2.0, True, cfg, True)

    def launch_bwd():
        tk._launch_bwd(dout, *xd[:4], xd[4], beta, scale, lam, flags, rq, rk, 2.0, True, *cfg["flags"], cfg)

    def grad_only():
        torch.autograd.grad(ops.threshold_differential_attention(*xs[:4], xs[4], beta, lam), xs + [beta, lam], dout)

    def one_launch():
        tk._inv_norms(k1, k2)

    def empty():
        torch.empty(64, 64, device="cuda")

    class Ident(torch.autograd.Function):  # the floor: a Python autograd.Function with no work at all
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return g

    def ident_fb():
        Ident.apply(xs[0]).backward(dout)

    def tda_fb_1thread():
        with torch.autograd.set_multithreading_enabled(False):
            ops.threshold_differential_attention(*xs[:4], xs[4], beta, lam).backward(dout)

    from tda.ops.triton import launch

    def jit_launches(fn):  # the same call with every launch through Triton's JIT dispatch
        def run():
            launch.ENABLED = False
            try:
                fn()
            finally:
                launch.ENABLED = True
        return run

    def two_launch(fn):  # the same call with the backward as two kernels (dK/dV, dQ)
        def run():
            tk.MERGED_BWD = False
            try:
                fn()
            finally:
                tk.MERGED_BWD = True
        return run

    log("host cost per call (us), B=1 H=1 N=64 d=64 bf16 (GPU work negligible):")
    for name, fn in (("TDA fwd+bwd, two-launch backward", two_launch(tda_fb)),
                     ("TDA fwd+bwd, two-launch bwd, calling thread", two_launch(tda_fb_1thread))):
        log(f"  {name:40s} {host_cost(fn):8.1f}")
    for name, fn in (("TDA fwd+bwd, Triton JIT launches", jit_launches(tda_fb)),
                     ("TDA fwd (no grad), Triton JIT launches", jit_launches(tda_f))):
        log(f"  {name:40s} {host_cost(fn):8.1f}")
    for name, fn in (("empty autograd.Function fwd+bwd", ident_fb),
                     ("TDA fwd+bwd, backward on the calling thread", tda_fb_1thread)):
        log(f"  {name:40s} {host_cost(fn):8.1f}")
    for name, fn in (("TDA fwd (no grad)", tda_f), ("TDA fwd+bwd", tda_fb), ("TDA fwd (grad enabled)", tda_f_grad),
                     ("TDA fwd + autograd.grad", grad_only), ("TDA forward launchers only", launch_fwd),
                     ("TDA backward launchers only", launch_bwd), ("SDPA fwd (no grad)", sdpa_f),
                     ("SDPA fwd+bwd", sdpa_fb), ("one Triton launch (inv-norm pre-pass)", one_launch),
                     ("torch.empty", empty)):
        log(f"  {name:40s} {host_cost(fn):8.1f}")
    log(f"  (direct launches {'on' if launch.ENABLED else 'OFF: the launcher refused them'})")
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        tda_fb_1thread()
    torch.cuda.synchronize()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    log("cProfile of 200 TDA fwd+bwd (backward on the calling thread), by own time:\n" + buf.getvalue())


def thread_experiments(log):
    """Which part of a backward costs more on the autograd engine's device thread than on the calling
    thread: a probe autograd.Function whose backward does one kind of work, timed both ways."""
    xs, beta, lam = _inputs(1, 1, 64, 64, True)
    xd = [x.detach() for x in xs]
    dout = torch.randn_like(xs[0])
    cfg = tk._configs(64, torch.bfloat16, True, 64)
    scale = tk._tau_scale(64, 0, 1.0, 64, xd[0].device, torch.float32)
    _, flags, rq, rk = tk._launch_fwd(*xd[:4], xd[4], beta, scale, lam, 2.0, True, cfg, True)
    work = {
        "nothing": lambda: None,
        "6 x torch.empty": lambda: [torch.empty(64, 64, device="cuda") for _ in range(6)],
        "1 small Triton launch": lambda: tk._inv_norms(xd[1], xd[3]),
        "backward launcher (1 launch)": lambda: tk._launch_bwd(dout, *xd[:4], xd[4], beta, scale, lam, flags,
                                                                  rq, rk, 2.0, True, *cfg["flags"], cfg),
        "torch.cuda.current_device x10": lambda: [torch.cuda.current_device() for _ in range(10)],
    }
    log("\nbackward-thread experiments (us per fwd+bwd of a probe Function; device thread / calling thread):")
    for name, fn in work.items():
        class Probe(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.view_as(x)

            @staticmethod
            def backward(ctx, g):
                fn()
                return g

        def dev_thread():
            Probe.apply(xs[0]).backward(dout)

        def calling_thread():
            with torch.autograd.set_multithreading_enabled(False):
                Probe.apply(xs[0]).backward(dout)
        log(f"  {name:36s} {host_cost(dev_thread):8.1f} / {host_cost(calling_thread):8.1f}")


class _Timed:
    """Stands in for a module attribute (a function or a Triton kernel) and sums the host time of its calls
    (for a kernel: of its launches, kernel[grid](...)) into acc[name]."""

    def __init__(self, obj, name, acc):
        self.obj, self.name, self.acc = obj, name, acc

    def _time(self, fn, *a, **k):
        t = time.perf_counter()
        r = fn(*a, **k)
        self.acc[self.name] += time.perf_counter() - t
        return r

    def __call__(self, *a, **k):
        return self._time(self.obj, *a, **k)

    def __getitem__(self, grid):
        return lambda *a, **k: self._time(self.obj[grid], *a, **k)


def section_experiments(log, n=300):
    """Where the backward's host time goes, inside the real op, with the backward on the engine's device
    thread, on the calling thread, and the same launcher called outside autograd: host us per call of the
    backward node (PyNode body), of _launch_bwd, of each kernel launch, and of the whole fwd+bwd."""
    xs, beta, lam = _inputs(1, 1, 64, 64, True)
    dout = torch.randn_like(xs[0])
    acc = defaultdict(float)
    saved = {n_: getattr(tk, n_) for n_ in ("_launch_bwd", "_dkdv", "_dq", "_bwd")}
    orig_backward = tk._EagerTDA.backward
    try:
        tk._launch_bwd = _Timed(saved["_launch_bwd"], "_launch_bwd", acc)
        tk._dkdv = _Timed(saved["_dkdv"], "dkdv launch", acc)
        tk._dq = _Timed(saved["_dq"], "dq launch", acc)
        tk._bwd = _Timed(saved["_bwd"], "one-launch bwd", acc)
        timed_bwd = _Timed(orig_backward, "backward node body", acc)
        tk._EagerTDA.backward = staticmethod(lambda ctx, g: timed_bwd(ctx, g))

        def fb():
            ops.threshold_differential_attention(*xs[:4], xs[4], beta, lam).backward(dout)

        def fb_1thread():
            with torch.autograd.set_multithreading_enabled(False):
                fb()

        xd = [x.detach() for x in xs]
        cfg = tk._configs(64, torch.bfloat16, True, 64)
        scale = tk._tau_scale(64, 0, 1.0, 64, xd[0].device, torch.float32)
        _, flags, rq, rk = tk._launch_fwd(*xd[:4], xd[4], beta, scale, lam, 2.0, True, cfg, True)

        def direct():
            tk._launch_bwd(dout, *xd[:4], xd[4], beta, scale, lam, flags, rq, rk, 2.0, True, *cfg["flags"], cfg)

        log("\nbackward host time by section (us per call; B=1 H=1 N=64 d=64):")
        for name, fn in (("device thread", fb), ("calling thread", fb_1thread), ("outside autograd", direct)):
            for _ in range(30):
                fn()
            acc.clear()
            total = host_cost(fn, n)
            parts = ", ".join(f"{k} {v / (n + 30) * 1e6:.1f}" for k, v in acc.items())
            log(f"  {name:18s} whole call {total:7.1f}: {parts}")
    finally:
        for n_, v in saved.items():
            setattr(tk, n_, v)
        tk._EagerTDA.backward = staticmethod(orig_backward)


def compiled_host(log, n=300):
    """Host cost of one fwd+bwd under torch.compile (inductor; the custom ops tda::threshold_attention_fwd /
    _bwd, as a compiled model calls them), TDA against SDPA, and a cProfile of the TDA call by own time."""
    xs, beta, lam = _inputs(1, 1, 64, 64, True)
    dout = torch.randn_like(xs[0])
    tda_c = torch.compile(lambda *a: ops.threshold_differential_attention(*a), fullgraph=True)
    sdpa_c = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), fullgraph=True)

    def tda_fb():
        with torch.autograd.set_multithreading_enabled(False):
            tda_c(*xs[:4], xs[4], beta, lam).backward(dout)

    def sdpa_fb():
        with torch.autograd.set_multithreading_enabled(False), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            sdpa_c(xs[0], xs[1], xs[4]).backward(dout)

    xd = [x.detach() for x in xs]
    tau = torch.ones(1, 64, device="cuda")
    lam32 = lam.detach().float()
    out = torch.ops.tda.threshold_attention_fwd(*xd[:4], xd[4], tau, lam32, 2.0, True, True)
    MT, NT = tk._configs(64, torch.bfloat16, True, 64)["flags"]

    def op_fwd():
        torch.ops.tda.threshold_attention_fwd(*xd[:4], xd[4], tau, lam32, 2.0, True, True)

    def op_bwd():
        torch.ops.tda.threshold_attention_bwd(dout, *xd[:4], xd[4], tau, lam32, out[1], out[2], out[3], 2.0, True,
                                              MT, NT)

    log("\nhost cost per call under torch.compile (us), B=1 H=1 N=64 d=64 bf16, backward on the calling thread:")
    for name, fn in (("TDA fwd+bwd, compiled", tda_fb), ("SDPA fwd+bwd, compiled", sdpa_fb),
                     ("custom op tda::threshold_attention_fwd", op_fwd),
                     ("custom op tda::threshold_attention_bwd", op_bwd)):
        log(f"  {name:40s} {host_cost(fn, n):8.1f}")
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        tda_fb()
    torch.cuda.synchronize()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    log("cProfile of 200 compiled TDA fwd+bwd, by own time:\n" + buf.getvalue())


def gpu_kernels(fn, reps=5):
    """{kernel name: mean CUDA time per call (us)} over `reps` profiled calls."""
    fn()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    tot = defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            tot[e.name] += e.device_time / reps
    return dict(tot)


def gpu_table(shapes, dims, log):
    log("\nGPU kernel time per fwd+bwd (us, torch.profiler, sum of kernel durations):")
    for (B, H, N) in shapes:
        for D in dims:
            xs, beta, lam = _inputs(B, H, N, D, True)
            dout = torch.randn_like(xs[0])

            def tda_fb():
                ops.threshold_differential_attention(*xs[:4], xs[4], beta, lam).backward(dout)
                for t in (*xs, beta, lam):
                    t.grad = None

            def sdpa_fb():
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    F.scaled_dot_product_attention(xs[0], xs[1], xs[4], is_causal=True).backward(dout)
                for t in xs:
                    t.grad = None

            t = gpu_kernels(tda_fb)
            s = gpu_kernels(sdpa_fb)
            tt, st = sum(t.values()), sum(s.values())
            log(f"  B={B} H={H} N={N} d={D}: TDA {tt:8.1f}  SDPA {st:8.1f}  ratio {tt / st:5.2f}")
            for name, us in sorted(t.items(), key=lambda kv: -kv[1]):
                log(f"      {us:8.1f}  {name[:90]}")
            del xs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4x16x1024,2x16x4096,1x16x8192,1x16x16384")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--host-only", action="store_true")
    ap.add_argument("--threads", action="store_true", help="also the backward-thread experiments")
    ap.add_argument("--compiled", action="store_true", help="also the host cost under torch.compile")
    a = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")]
    dims = [int(d) for d in a.dims.split(",")]
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    host_table(log)
    if a.compiled:
        compiled_host(log)
    if a.threads:
        thread_experiments(log)
        section_experiments(log)
    if not a.host_only:
        gpu_table(shapes, dims, log)


if __name__ == "__main__":
    main()
