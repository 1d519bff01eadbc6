"""Training-step speed as a model trains on real text, TDA against softmax.

benchmarks/bench_train.py times steps of a freshly initialised model on random tokens. TDA's kernels skip
the block pairs where no score exceeds the threshold, so their cost depends on what the model has learned:
this script trains the same comparison model (bench_train's: 8 x 512, 8 heads of 64, MLP matched to
softmax's parameters, the GPT-2-sized vocabulary, so a step costs what bench_train's does) on the bundled
corpus (or --data), and every --every steps times --time-steps training steps. Both variants see the same
batches. Reported per checkpoint: tokens/s, the loss, and (at the first and the last one) one step's GPU
time in attention kernels (torch.profiler, bench_train's categories).

    PYTHONPATH=src python3 benchmarks/step_over_training.py --json over.json --plot over.png   (one H100: ~1 min)
    PYTHONPATH=src python3 benchmarks/step_over_training.py --device cpu --tiny               (smoke test)

The bundled corpus is small (770K training tokens): at context 8K and 32K tokens per step, 200 steps are
about 8 passes over it. It shows how the step's cost moves once attention has structure; it is not a
quality run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from bench_train import gpu_busy, kernel_categories, make_step, parse_ints, release, sdpa_context, sync
from tda.data import ensure_bundled_data
from tda.data.dataset import load_meta
from tda.models.config import GPTConfig
from tda.models.gpt import GPT
from tda.models.params import matched_config


@dataclasses.dataclass(frozen=True)
class Point:
    variant: str
    context: int
    step: int          # training steps taken before this checkpoint's timed steps (warm-up ones included)
    tok_s: float
    loss: float
    attention_ms: float | None = None  # one step's GPU time in attention kernels (profiled checkpoints only)
    gpu_ms: float | None = None        # and in all kernels


def load_tokens(data_dir: str | None, device: str) -> tuple[torch.Tensor, int]:
    """The training split as one int64 tensor on `device` (windows are cut there; a step copies only its
    window starts, drawn on the host), and the corpus's vocabulary size."""
    d = data_dir or ensure_bundled_data()
    meta = load_meta(d)
    arr = np.fromfile(f"{d}/train.bin", dtype=np.dtype(meta["dtype"]))
    return torch.from_numpy(arr.astype(np.int64)).to(device), int(meta["vocab_size"])


def batches(tokens: torch.Tensor, batch: int, context: int, seed: int):
    """Random windows of `context` + 1 tokens, the same sequence for every variant (seeded on the host)."""
    g = torch.Generator().manual_seed(seed)
    offs = torch.arange(context + 1, device=tokens.device)
    while True:
        starts = torch.randint(0, tokens.numel() - context - 1, (batch,), generator=g).to(tokens.device)
        w = tokens[starts[:, None] + offs]
        yield w[:, :-1], w[:, 1:]


def base_config(args, corpus_vocab: int) -> GPTConfig:
    if args.tiny:
        return GPTConfig(vocab_size=max(512, corpus_vocab), block_size=max(args.contexts), n_layer=2, n_head=2,
                         n_embd=64, attn_backend="auto")
    if corpus_vocab > args.vocab_size:
        raise ValueError(f"--vocab-size: {args.vocab_size} is smaller than the corpus's {corpus_vocab} tokens")
    return GPTConfig(vocab_size=args.vocab_size, block_size=max(args.contexts), n_layer=8, n_head=8, n_embd=512,
                     attn_backend="auto")


def profile_one(step, x, y, device: str) -> tuple[float | None, float | None]:
    """(attention GPU ms, all-kernel GPU ms) of one training step; (None, None) off CUDA."""
    if device != "cuda":
        return None, None
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(x, y)
        sync(device)
    cats = kernel_categories(prof)
    return cats.get("attention", 0.0), gpu_busy(prof)[0]


def run_variant(variant: str, context: int, tokens: torch.Tensor, base: GPTConfig, args) -> list[Point]:
    attention = "softmax" if variant.startswith("softmax") else variant
    cfg = dataclasses.replace(matched_config(base, attention, multiple_of=32), block_size=context)
    torch.manual_seed(args.seed)
    model = GPT(cfg).to(args.device)
    opt = model.configure_optimizer(0.1, args.lr, device_type=args.device)
    fwd = torch.compile(model) if args.compile else model
    train_step = make_step(fwd, opt, args.device)
    taken = 0

    def step(x, y):  # a linear learning-rate warm-up over --lr-warmup steps, as the trainer's schedule starts
        nonlocal taken
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (taken + 1) / max(1, args.lr_warmup))
        taken += 1
        return train_step(x, y)
    batch = max(1, args.tokens_per_step // context)
    data = batches(tokens, batch, context, args.seed)
    points, done = [], 0
    checkpoints = list(range(0, args.steps + 1, args.every))
    try:
        with sdpa_context(variant, args.device):
            for _ in range(args.warmup):  # compile / autotune (training steps too)
                x, y = next(data)
                step(x, y)
                done += 1
            for c in checkpoints:  # c counts from the end of the warm-up
                while done < args.warmup + c:
                    x, y = next(data)
                    step(x, y)
                    done += 1
                at = done  # training steps taken so far (earlier checkpoints' timed steps count too)
                sync(args.device)
                t0 = time.perf_counter()
                for _ in range(args.time_steps):
                    x, y = next(data)
                    loss = step(x, y)
                sync(args.device)
                dt = (time.perf_counter() - t0) / args.time_steps
                done += args.time_steps
                att = gpu = None
                if args.device == "cuda" and c in (checkpoints[0], checkpoints[-1]):
                    x, y = next(data)
                    att, gpu = profile_one(step, x, y, args.device)
                    done += 1
                points.append(Point(variant, context, at, batch * context / dt, float(loss.detach()), att, gpu))
                p = points[-1]
                extra = f", attention {att:.2f} of {gpu:.2f} GPU ms" if att is not None else ""
                print(f"{variant:>13} {context:>6} step {at:>5}: {p.tok_s:>11,.0f} tok/s, loss {p.loss:.3f}{extra}",
                      flush=True)
    finally:
        del step, train_step, model, opt, fwd
        release(args.device, args.compile)
    return points


def table(points: list[Point]) -> str:
    """One line per (context, checkpoint): each variant's tokens/s and loss, TDA over the faster softmax."""
    variants = list(dict.fromkeys(p.variant for p in points))
    out = ["| context | step | " + " | ".join(f"{v} tok/s (loss)" for v in variants) + " | TDA / softmax |",
           "|---:|---:|" + "---:|" * len(variants) + "---:|"]
    for ctx, step in sorted({(p.context, p.step) for p in points}):
        by = {p.variant: p for p in points if (p.context, p.step) == (ctx, step)}
        cells = [f"{by[v].tok_s:,.0f} ({by[v].loss:.2f})" if v in by else "-" for v in variants]
        soft = [by[v].tok_s for v in by if v.startswith("softmax")]
        ratio = f"{by['tda'].tok_s / max(soft):.2f}x" if "tda" in by and soft else "-"
        out.append(f"| {ctx} | {step} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(out)


def plot(points: list[Point], path: str, corpus: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    contexts = sorted({p.context for p in points})
    fig, axes = plt.subplots(1, len(contexts), figsize=(5.5 * len(contexts), 4), squeeze=False)
    for ax, ctx in zip(axes[0], contexts):
        for v in dict.fromkeys(p.variant for p in points):
            ps = [p for p in points if p.variant == v and p.context == ctx]
            ax.plot([p.step for p in ps], [p.tok_s / 1e3 for p in ps], marker="o", label=v)
        ax.set(title=f"context {ctx}", xlabel="training step", ylabel="thousand tokens/s")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"training-step speed as the model trains ({corpus})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="1024,8192", help="comma list; 4k style allowed")
    ap.add_argument("--tokens-per-step", type=int, default=32768, help="batch = this / context")
    ap.add_argument("--variants", default="tda,softmax", help="tda, softmax, softmax-flash")
    ap.add_argument("--steps", type=int, default=200, help="training steps between the first and last checkpoint")
    ap.add_argument("--every", type=int, default=50, help="steps between checkpoints")
    ap.add_argument("--time-steps", type=int, default=5, help="timed training steps per checkpoint")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before the first checkpoint")
    ap.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (configs/compare-gpu.yaml's)")
    ap.add_argument("--lr-warmup", type=int, default=20, help="steps of linear learning-rate warm-up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=50304, help="the model's vocabulary (bench_train's)")
    ap.add_argument("--data", default=None, help="a prepared data dir (default: the bundled corpus)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="a 2 x 64 model (smoke tests, CPU)")
    ap.add_argument("--json", default=None, help="write the points here as JSON")
    ap.add_argument("--plot", default=None, help="write tokens/s against step here (PNG)")
    args = ap.parse_args(argv)
    args.contexts = parse_ints(args.contexts)
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in ("tda", "softmax", "softmax-flash")]
    if bad:
        ap.error(f"--variants: unknown {bad}; choose from tda, softmax, softmax-flash")
    if args.steps < 0 or args.every < 1 or args.time_steps < 1:
        ap.error("--steps must be >= 0, --every and --time-steps >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device (use --device cpu --tiny for a smoke test)")
    tokens, corpus_vocab = load_tokens(args.data, args.device)
    base = base_config(args, corpus_vocab)
    points = []
    for ctx in args.contexts:
        if tokens.numel() < ctx + 2:
            ap.error(f"--contexts: {ctx} needs more than the corpus's {tokens.numel()} tokens")
        for v in variants:
            points += run_variant(v, ctx, tokens, base, args)
    print("\n" + table(points))
    if args.json:
        meta = dict(torch=torch.__version__, device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                    args={k: v for k, v in vars(args).items()})
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, points=[dataclasses.asdict(p) for p in points]), f, indent=1)
    if args.plot:
        plot(points, args.plot, args.data or "the bundled corpus")
    return points


if __name__ == "__main__":
    main()
