"""GPU timing shared by the benchmark scripts (imported, not run).

`gpu_time(fn)`: the median time of one call of `fn` in milliseconds, measured with CUDA events: a few
warm-up calls, then `reps` timed calls, each after the L2 cache is flushed (a write over a buffer larger than
L2) so that no call reads what the previous one left in cache. Each call is timed alone, so the host's launch
work shows only where it outlasts the GPU work before it (the flush).
`graph_time(fn)`: the same for `fn` captured once into a CUDA graph and replayed (no host work per call);
fn must be capturable (no host syncs, no allocations that outlive the capture).
`device_line()`: the GPU, torch and Triton versions, for a table's header.

    from timing import gpu_time           # with benchmarks/ on sys.path (the scripts' own folder)
    ms = gpu_time(lambda: model(x), reps=30)
"""
from __future__ import annotations

import statistics

import torch

_FLUSH: dict = {}


def _flush_buffer(device) -> torch.Tensor:
    buf = _FLUSH.get(device)
    if buf is None:
        buf = _FLUSH[device] = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
    return buf


def gpu_time(fn, reps: int = 30, warmup: int = 3, grad_to_none=None) -> float:
    """Median milliseconds of one call of fn (CUDA events around each call, L2 flushed before each).
    grad_to_none: tensors whose .grad is reset before each call (a backward would accumulate into it)."""
    flush = _flush_buffer(torch.cuda.current_device())
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        if grad_to_none is not None:
            for t in grad_to_none:
                t.grad = None
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def graph_time(fn, reps: int = 30, warmup: int = 3) -> float:
    """Median milliseconds of one replay of fn captured into a CUDA graph (GPU time alone, no host work)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as graph capture requires
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return gpu_time(graph.replay, reps=reps, warmup=1)


def device_line() -> str:
    import triton
    return (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
            f"CUDA {torch.version.cuda}")
