"""End-to-end generation speed: `GPT.generate` with the KV cache, TDA against softmax, and KV-cache bytes per
token of every attention variant.

The models are the GPU comparison's (configs/compare-gpu.yaml: 8 x 512, 8 heads of 64, GPT-2 vocabulary,
MLP widths matched to softmax's parameter count), in bf16 on CUDA, with random weights unless a trained
checkpoint is given per variant (--checkpoint tda=runs/compare-gpu/tda/last.pt ...). Each row: a prompt of
--prompt random tokens per sequence, --new greedy tokens (no eos, so every row decodes them all), batch B;
time to the first token (prefill) and generated tokens/s over the whole call (B * new / seconds) and over
decoding alone. Median of --repeats timed calls after one warm-up call.

    PYTHONPATH=src python3 benchmarks/bench_generate.py --device cuda --cuda-graph --out generate.json
    PYTHONPATH=src python3 benchmarks/bench_generate.py --device cpu --smoke        (tiny model, seconds)

`end_to_end(model, batch, prompt_len, new_tokens)` is the measurement, importable by other benchmarks
(e.g. the decode-kernel benchmark).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from tda.models.config import GPTConfig
from tda.layers import ATTENTION
from tda.models import GPT, KVCache
from tda.models.generate import GraphedDecodeStep, decode_one, prefill, sample

ROOT = Path(__file__).resolve().parents[1]
COMPARE_CONFIG = ROOT / "configs" / "compare-gpu.yaml"
SMOKE = dict(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=32)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def end_to_end(model, batch: int, prompt_len: int, new_tokens: int, *, repeats: int = 3, seed: int = 0,
               cuda_graph: bool = False) -> dict:
    """Greedy generation of `new_tokens` after random prompts of `prompt_len` tokens, `batch` sequences, over
    one preallocated KV cache: median prefill seconds, decode seconds and tokens/s (all B rows counted).
    cuda_graph: decode steps replay a CUDA graph captured once beforehand (as a server captures at start-up;
    the capture is not timed)."""
    device = next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(seed)
    prompts = list(torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g).to(device))
    cache = KVCache.for_model(model, batch, prompt_len + new_tokens)
    step = lambda t: decode_one(model, cache, t)  # noqa: E731
    if cuda_graph:
        prefill(model, cache, prompts)
        step = GraphedDecodeStep(model, cache)

    def once():
        _sync(device)
        t0 = time.perf_counter()
        tok = sample(prefill(model, cache, prompts), temperature=0)
        _sync(device)
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            tok = sample(step(tok), temperature=0)
        _sync(device)
        return t1 - t0, time.perf_counter() - t1

    once()  # warm-up: kernels compiled / autotuned, allocator primed
    runs = [once() for _ in range(repeats)]
    pre = statistics.median(r[0] for r in runs)
    dec = statistics.median(r[1] for r in runs)
    return {"batch": batch, "prompt": prompt_len, "new": new_tokens, "prefill_s": pre, "decode_s": dec,
            "tokens_per_s": batch * new_tokens / (pre + dec),
            "decode_tokens_per_s": batch * (new_tokens - 1) / dec if new_tokens > 1 else None,
            "cache_bytes_per_token": cache.bytes_per_token(), "cuda_graph": cuda_graph}


@torch.no_grad()
def profile_steps(model, name: str, batch: int, prompt_len: int, steps: int, top: int = 25):
    """Print where the host time of `steps` eager greedy decode steps goes: Python functions by own time
    (cProfile), then ops by self CPU time (torch.profiler)."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    device = next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(0)
    prompts = list(torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g).to(device))
    cache = KVCache.for_model(model, batch, prompt_len + 2 * steps + 1)
    # a warm-up over every cache length the profiled steps see: kernels compiled, and SDPA's per-shape plans
    # (cuDNN builds one per new key length) made, so neither lands in the profile
    tok = sample(prefill(model, cache, prompts), temperature=0)
    for _ in range(2 * steps):
        tok = sample(decode_one(model, cache, tok), temperature=0)
    cache.reset()
    tok = sample(prefill(model, cache, prompts), temperature=0)
    _sync(device)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        tok = sample(decode_one(model, cache, tok), temperature=0)
    _sync(device)
    prof.disable()
    per_step = (time.perf_counter() - t0) / steps
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    print(f"\n== {name}, batch {batch}: {steps} eager decode steps, {per_step * 1e3:.2f} ms each under cProfile; "
          f"Python functions by own time")
    print(out.getvalue())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as p:
        for _ in range(steps):
            tok = sample(decode_one(model, cache, tok), temperature=0)
        _sync(device)
    print(f"== {name}, batch {batch}: ops by self CPU time over {steps} steps")
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=60))


def compare_configs(path=COMPARE_CONFIG) -> dict:
    """attention name -> the GPTConfig that variant trains with in the GPU comparison (parameter-matched).
    A variant whose optional package is missing (entmax) is left out: matching its parameters builds it."""
    from tda.train.compare import load_compare_config, variant_config

    base, cmp, variants = load_compare_config(path)
    out = {}
    for v in variants:
        try:
            out[v.attention] = variant_config(base, cmp, v).model
        except ImportError as e:
            print(f"# {v.attention}: skipped ({e})")
    return out


def cache_bytes_table(configs: dict, dtype) -> dict:
    """attention -> KV-cache bytes one token of one sequence takes (all layers), without allocating weights."""
    out = {}
    for att, cfg in configs.items():
        try:
            with torch.device("meta"):
                model = GPT(cfg)
        except ImportError as e:  # an optional baseline's package (entmax) is not installed
            print(f"# {att}: skipped ({e})")
            continue
        shapes = [b.attn.cache_shapes() for b in model.blocks]
        item = torch.empty((), dtype=dtype).element_size()
        out[att] = sum(h * d * item for layer in shapes for h, d in layer.values())
    return out


def load_model(cfg: GPTConfig, checkpoint, device, dtype):
    if checkpoint:
        from tda.models.checkpoint import load_checkpoint
        model, _ = load_checkpoint(checkpoint, device="cpu")
    else:
        torch.manual_seed(0)
        model = GPT(cfg)
    return model.to(device=device, dtype=dtype).eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny model, short prompt: checks the script runs")
    ap.add_argument("--variants", default="softmax,tda", help="comma-separated attention variants to time")
    ap.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="VARIANT=PATH",
                    help="trained weights for a variant (repeatable)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also time every row with decode steps replayed from a CUDA graph (CUDA only)")
    ap.add_argument("--profile-steps", type=int, default=0, metavar="N",
                    help="after timing, profile N eager decode steps per variant at the first batch size: host time "
                         "by Python function (cProfile) and by op (torch.profiler); the eager step is host-bound")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if args.device != "cpu" else "fp32")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    batches = [int(b) for b in args.batch.split(",")]
    ckpts = dict(c.split("=", 1) for c in args.checkpoint)
    if args.smoke:
        configs = {att: GPTConfig(attention=att, **SMOKE) for att in sorted(ATTENTION)}
        prompt, new, batches = min(args.prompt, 24), min(args.new, 8), [min(b, 4) for b in batches]
    else:
        configs = compare_configs()
        prompt, new = args.prompt, args.new
    unknown = set(variants) - set(configs)
    if unknown:
        ap.error(f"--variants: {sorted(unknown)} not among {sorted(configs)}")

    device_name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "device": device_name, "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
              "cache_bytes_per_token": cache_bytes_table(configs, dtype), "rows": []}
    print(f"# {result['device']}, {result['dtype']}, prompt {prompt}, {new} new tokens")
    print(f"{'variant':<14}{'batch':>6}{'prefill ms':>12}{'tok/s':>10}{'decode tok/s':>14}{'cache B/token':>15}")
    for att in variants:
        model = load_model(configs[att], ckpts.get(att), args.device, dtype)
        for b in batches:
            for graph in (False, True) if args.cuda_graph else (False,):
                row = {"variant": att, **end_to_end(model, b, prompt, new, repeats=args.repeats, cuda_graph=graph)}
                result["rows"].append(row)
                name = att + ("+graph" if graph else "")
                print(f"{name:<14}{b:>6}{row['prefill_s'] * 1e3:>12.1f}{row['tokens_per_s']:>10.1f}"
                      f"{row['decode_tokens_per_s'] or 0:>14.1f}{row['cache_bytes_per_token']:>15,}", flush=True)
        if args.profile_steps:
            profile_steps(model, att, batches[0], prompt, args.profile_steps)
        del model
    print("\nKV-cache bytes per token (all layers):")
    for att, n in sorted(result["cache_bytes_per_token"].items()):
        print(f"  {att:<14}{n:>10,}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)
    return result


if __name__ == "__main__":
    main()
