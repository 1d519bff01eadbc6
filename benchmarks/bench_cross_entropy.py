"""The chunked cross-entropy's row kernel (tda.ops.triton.cross_entropy) over launch configs, on a GPU.

One chunk of the GPU comparison model's loss: 8,192 rows of bf16 logits over the GPT-2 vocabulary (50,304),
loss and in-place gradient, as the training step runs it. Each config's time is the median of CUDA-event
timings (the logits refilled from a saved copy before each run, outside the timed region); GB/s counts one
read and one write of the logits, the least any row pass moves. Every config's losses and gradients are
checked against torch's row pass first.

    PYTHONPATH=src python3 benchmarks/bench_cross_entropy.py
"""
from __future__ import annotations

import argparse
import statistics

import torch

from tda.ops import cross_entropy as lce
from tda.ops.triton.cross_entropy import DEFAULT, RowPassConfig, row_pass

CONFIGS = [DEFAULT] + [RowPassConfig(b, w) for b, w in ((4096, 8), (2048, 8), (512, 4), (512, 8), (1024, 16))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_cross_entropy needs a CUDA device")
    g = torch.Generator(device="cuda").manual_seed(0)
    x0 = (torch.randn(args.rows, args.vocab, device="cuda", generator=g) * 3).to(torch.bfloat16)
    t = torch.randint(0, args.vocab, (args.rows,), device="cuda", generator=g)
    t[::7] = -1
    n = (t != -1).sum()
    ref = x0.clone()
    ref_loss = lce._row_pass_torch(ref, t, n, -1, True)
    x = torch.empty_like(x0)
    gb = 2 * x0.numel() * x0.element_size() / 1e9
    print(f"{torch.cuda.get_device_name()}; rows {args.rows}, V {args.vocab}, bf16; {gb:.2f} GB read + written")
    print("| block_v | warps | ms | GB/s | vs default |")
    print("|---:|---:|---:|---:|---:|")
    base = None
    for cfg in CONFIGS:
        x.copy_(x0)
        loss = row_pass(x, t, n, -1, True, cfg)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x.float(), ref.float(), rtol=2e-2, atol=1e-5)
        times = []
        for _ in range(args.reps):
            x.copy_(x0)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            row_pass(x, t, n, -1, True, cfg)
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        ms = statistics.median(times)
        base = base or ms
        print(f"| {cfg.block_v} | {cfg.num_warps} | {ms:.3f} | "
              f"{gb / ms * 1e3:,.0f} | {base / ms:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
