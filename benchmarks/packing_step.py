"""Training-step throughput with packed documents: forward + backward of the A/B model
(configs/packing-ab-*.yaml, bf16 autocast) on 16 x 1024 windows, plain vs packed with documents of
exponentially distributed length (mean L tokens; eager TDA layers run the fused kernels over the document table).

    python benchmarks/packing_step.py                       # softmax and tda, L = 4096, 1024, 256
    python benchmarks/packing_step.py --attentions tda --mean-lengths 1024 --iters 20
    python benchmarks/packing_step.py --profile 1024      # + top kernels of one packed step (mean doc 1024)
    python benchmarks/packing_step.py --compile           # the models under torch.compile

Prints one JSON line per case: tokens/s, documents per batch. Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from tda.models.gpt import GPT
from tda.ops.varlen import PackedDocuments
from tda.train.config import load_config


def cu_seqlens_for(B: int, N: int, mean: float, rng) -> tuple[torch.Tensor, int]:
    """Rows of N tokens cut into documents of exponential length (>= 1), every row start a boundary."""
    bounds = [0]
    for b in range(B):
        t = 0
        while t < N:
            t = min(N, t + max(1, int(rng.exponential(mean))))
            bounds.append(b * N + t)
    lengths = np.diff(bounds)
    return torch.tensor(bounds, dtype=torch.int32), int(lengths.max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attentions", nargs="+", default=["softmax", "tda"])
    ap.add_argument("--mean-lengths", nargs="+", type=float, default=[4096, 1024, 256])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--profile", type=float, default=0, metavar="MEAN",
                    help="also print the top CUDA kernels of one step packed at this mean document length, "
                         "per attention (where the packed step's extra time goes)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the models (the documents prebuilt on the host, as the trainer does)")
    args = ap.parse_args()
    dev = "cuda"
    rng = np.random.default_rng(0)
    for att in args.attentions:
        cfg = load_config(f"configs/packing-ab-{att}.yaml")
        torch.manual_seed(0)
        model = GPT(cfg.model).to(dev)
        run = torch.compile(model) if args.compile else model
        B, N = args.batch_size, cfg.model.block_size
        x = torch.randint(0, cfg.model.vocab_size, (B, N), device=dev)
        for mean in [None] + args.mean_lengths:
            kw, docs = {}, B
            if mean is not None:  # the batch's documents, built on the host as the trainer does
                cus, longest = cu_seqlens_for(B, N, mean, rng)
                kw = {"docs": PackedDocuments.build(cus, longest, B, N, dev)}
                docs = len(cus) - 1

            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    _, loss = run(x, x, return_logits=False, **kw)
                loss.backward()

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.iters):
                step()
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / args.iters
            print(json.dumps(dict(attention=att, compiled=args.compile, mean_doc_len=mean, docs_per_batch=docs,
                                  tokens_per_s=round(B * N / dt), step_ms=round(1e3 * dt, 2),
                                  device=torch.cuda.get_device_name())), flush=True)
            if args.profile and mean == args.profile:
                profile_step(step, f"{att}, packed, mean document {mean:g}")


def profile_step(step, title: str, rows: int = 25):
    """Top CUDA kernels (and their CPU-side callers) of one warmed-up step."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(f"\n== one step: {title}", flush=True)
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=70),
          flush=True)


if __name__ == "__main__":
    main()
