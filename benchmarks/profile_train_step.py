"""Where one training step of the GPU comparison model goes (configs/compare-gpu.yaml's model: 8 x 512,
8 heads of 64, context 1024, batch 16, bf16 autocast, fused AdamW), per attention variant: wall time per
step, the GPU's busy time per step (sum of kernel times from torch.profiler) and the top kernels and CPU
ops. A step whose wall time exceeds its GPU time by far is host-bound.

    PYTHONPATH=src python3 benchmarks/profile_train_step.py [--variants softmax,tda] [--steps 10]
        [--compile [--mode reduce-overhead]]
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tda.models.config import GPTConfig
from tda.models.params import matched_config
from tda.models.gpt import GPT


def one_step(model, opt, x):
    torch.compiler.cudagraph_mark_step_begin()  # as the trainer does (compile_mode: reduce-overhead)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        _, loss = model(x, x)
    with torch.autograd.set_multithreading_enabled(False):  # as the trainer does (backward_threads: false)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="softmax,tda")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    ap.add_argument("--mode", default="default",
                    help="torch.compile mode with --compile: default, reduce-overhead (CUDA graphs), max-autotune...")
    ap.add_argument("--tables", type=int, default=18, help="rows of the profiler tables (0: summary only)")
    args = ap.parse_args()
    base = GPTConfig(vocab_size=50304, block_size=1024, n_layer=8, n_head=8, n_embd=512, attn_backend="auto")
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; batch {args.batch} x 1024", flush=True)
    for variant in args.variants.split(","):
        cfg = matched_config(base, variant, multiple_of=32)
        torch.manual_seed(0)
        model = GPT(cfg).cuda()
        opt = model.configure_optimizer(0.1, 1e-3, device_type="cuda")
        if args.compile:
            t0 = time.perf_counter()
            model = torch.compile(model, mode=None if args.mode == "default" else args.mode)
            print(f"{variant}: compiling (mode {args.mode})", flush=True)
        x = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size), device="cuda")
        for _ in range(5):
            one_step(model, opt, x)
        torch.cuda.synchronize()
        if args.compile:
            print(f"{variant}: compiled and warm after {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            one_step(model, opt, x)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / args.steps * 1e3
        # host time alone: the same steps with the GPU kept busy first would hide nothing, so time the
        # Python side of a step as the time until its last launch returns (no sync inside the step)
        t0 = time.perf_counter()
        one_step(model, opt, x)
        host = (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                one_step(model, opt, x)
            torch.cuda.synchronize()
        ev = prof.key_averages()
        # device time of the kernels alone (op rows would count it again)
        gpu = sum(e.self_device_time_total for e in ev if e.device_type == torch.autograd.DeviceType.CUDA) / 3 / 1e3
        print(f"\n== {variant}: wall {wall:.1f} ms/step ({args.batch * 1024 / wall * 1e3:,.0f} tok/s), "
              f"GPU busy {gpu:.1f} ms/step, host enqueue of one step {host:.1f} ms", flush=True)
        if args.tables:
            print(ev.table(sort_by="self_device_time_total", row_limit=args.tables, max_name_column_width=60))
            print(ev.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
        del model, opt
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
