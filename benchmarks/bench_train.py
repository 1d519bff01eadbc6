"""Training-step speed and memory at long context, TDA against softmax, end to end.

One full training step (forward, backward, gradient clipping, fused AdamW; bf16 autocast) of the GPU
comparison model (configs/compare-gpu.yaml: 8 layers x 512, 8 heads of 64, GPT-2 vocabulary; MLP widths
matched to softmax's parameter count) at contexts 1K..32K with the same tokens per step (batch =
tokens_per_step / context). Softmax runs on SDPA's default backend choice (cuDNN on Hopper) and forced
onto flash (torch.nn.attention.sdpa_kernel); TDA on its fused Triton kernels. Every context runs eager;
--compile-contexts also run under torch.compile (TDA and default-backend softmax only: each compile
costs tens of seconds). Reported: tokens/s (wall clock over the timed steps, host included, as a trainer
sees it) and peak allocated memory; TDA / softmax is against the faster softmax of the same row. The
step calls the model as `tda train` does (return_logits=False: the chunked linear cross-entropy, eager).
--without takes parts of the step back to their plain torch form, for an A/B of what each is worth:
"chunked-loss" (full logits and F.cross_entropy), "fused-norm" (RMSNorm as torch ops, not the Triton kernel),
"fused-projection" (a layer's q, k and v as separate nn.Linear calls and a RoPE launch, not one GEMM with RoPE
fused; TDA's and the softmax family's).

    PYTHONPATH=src python3 benchmarks/bench_train.py --json bench_train.json   (one H100: ~6 minutes)
    PYTHONPATH=src python3 benchmarks/bench_train.py --profile 8192             (+ top CUDA kernels of a TDA step)
    PYTHONPATH=src python3 benchmarks/bench_train.py --profile 8192 --profile-compile   (the same, compiled)
    PYTHONPATH=src python3 benchmarks/bench_train.py --without chunked-loss,fused-norm   (the plain step)
    PYTHONPATH=src python3 benchmarks/bench_train.py --activation-checkpoint 1   (every block recomputed)
    PYTHONPATH=src python3 benchmarks/bench_train.py --device cpu --tiny        (smoke test: seconds)

Timing is done here with synchronize + perf_counter around whole steps (a step is milliseconds to
seconds, so event resolution does not matter).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import time

import torch

from tda.models.config import GPTConfig
from tda.models.params import matched_config
from tda.models.gpt import GPT

VARIANTS = ("tda", "softmax", "softmax-flash")
PARTS = ("chunked-loss", "fused-norm", "fused-projection")  # what --without can take back


@dataclasses.dataclass(frozen=True)
class Row:
    context: int
    batch: int
    mode: str          # "eager" | "compile"
    variant: str
    tok_s: float | None
    step_ms: float | None
    peak_gb: float | None
    note: str = ""
    host_ms: float | None = None  # host time to enqueue one step (no sync): near step_ms means launch-bound


def base_config(args) -> GPTConfig:
    if args.tiny:
        return GPTConfig(vocab_size=512, block_size=max(args.all_contexts), n_layer=2, n_head=2, n_embd=64,
                         attn_backend="auto")
    return GPTConfig(vocab_size=50304, block_size=max(args.all_contexts), n_layer=8, n_head=8, n_embd=512,
                     attn_backend="auto")


def sdpa_context(variant: str, device: str):
    if variant == "softmax-flash" and device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    return contextlib.nullcontext()


def make_step(model, opt, device: str, chunked_loss: bool = True):
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    def step(x, y=None):  # targets y (random-token timing runs pass none: x stands in)
        with amp:
            _, loss = model(x, x if y is None else y, return_logits=not chunked_loss)
        with torch.autograd.set_multithreading_enabled(False):  # as the trainer does (backward_threads: false)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def host_time(step, x, device: str, reps: int = 3) -> float:
    """The fastest of a few host-side enqueues of one step, each started on an idle GPU and not waited for:
    when it is close to the step's wall time, the step is bound by the host's launches, not the GPU."""
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        step(x)
        best = min(best, time.perf_counter() - t0)
        sync(device)
    return best


def build_step(base: GPTConfig, variant: str, context: int, batch: int, compile_: bool, args) -> tuple:
    """(step, x): a fresh seeded model of `variant` (its MLP matched to softmax's parameters) at `context`, its
    optimizer and training step (compiled with compile_), and a batch of random tokens."""
    attention = "softmax" if variant.startswith("softmax") else variant
    cfg = dataclasses.replace(matched_config(base, attention, multiple_of=32), block_size=context)
    torch.manual_seed(0)
    model = GPT(cfg).to(args.device).set_activation_checkpointing(args.activation_checkpoint)
    opt = model.configure_optimizer(0.1, 1e-3, device_type=args.device)
    fwd = torch.compile(model) if compile_ else model
    step = make_step(fwd, opt, args.device, "chunked-loss" not in args.without)
    return step, torch.randint(0, cfg.vocab_size, (batch, context), device=args.device)


def run_one(base: GPTConfig, variant: str, context: int, batch: int, compile_: bool, args) -> Row:
    mode = "compile" if compile_ else "eager"
    dev = args.device
    step, x = build_step(base, variant, context, batch, compile_, args)
    try:
        with sdpa_context(variant, dev):
            for _ in range(args.warmup):
                step(x)
            sync(dev)
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = step(x)
            sync(dev)
            dt = (time.perf_counter() - t0) / args.steps
            host = host_time(step, x, dev)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)}")
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None
        return Row(context, batch, mode, variant, batch * context / dt, dt * 1e3, peak, host_ms=host * 1e3)
    except torch.cuda.OutOfMemoryError:
        return Row(context, batch, mode, variant, None, None, None, "out of memory")
    except RuntimeError as e:  # e.g. no flash kernel for this device / dtype
        return Row(context, batch, mode, variant, None, None, None, str(e).splitlines()[0][:80])
    finally:
        del step, x  # the step's closure holds the model and its optimizer
        release(dev, compile_)


def release(device: str, compiled: bool):
    """After a step's closure is dropped: free its model, optimizer and (compiled) graphs before the next one."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    if compiled:
        torch._dynamo.reset()


def table(rows: list[Row]) -> str:
    """One line per (context, mode): tok/s and peak GiB per variant, TDA over the faster softmax."""
    def fmt(r):
        if r is None:
            return "-"
        if r.tok_s is None:
            return r.note or "failed"
        mem = f" / {r.peak_gb:.1f} GiB" if r.peak_gb is not None else ""
        return f"{r.tok_s:,.0f}{mem}"
    out = ["| context | batch | mode | TDA tok/s | softmax (default) tok/s | softmax (flash) tok/s "
           "| TDA / faster softmax |",
           "|---:|---:|---|---:|---:|---:|---:|"]
    keys = sorted({(r.context, r.mode) for r in rows}, key=lambda k: (k[1] != "eager", k[0]))
    for ctx, mode in keys:
        by = {r.variant: r for r in rows if (r.context, r.mode) == (ctx, mode)}
        soft = [by[v].tok_s for v in ("softmax", "softmax-flash") if v in by and by[v].tok_s]
        tda = by.get("tda")
        ratio = f"{tda.tok_s / max(soft):.2f}x" if tda is not None and tda.tok_s and soft else "-"
        batch = next(iter(by.values())).batch
        out.append(f"| {ctx} | {batch} | {mode} | {fmt(tda)} | {fmt(by.get('softmax'))} | "
                   f"{fmt(by.get('softmax-flash'))} | {ratio} |")
    return "\n".join(out)


def profile_step(base: GPTConfig, context: int, batch: int, args, variant: str, rows: int = 20) -> dict:
    """Top CUDA kernels of one step of `variant` (after warm-up; compiled with --profile-compile), to explain a
    miss; with --profile-host also its top ops by host time. Returns the step's GPU ms per kernel category."""
    from torch.profiler import ProfilerActivity, profile
    step, x = build_step(base, variant, context, batch, args.profile_compile, args)
    with sdpa_context(variant, args.device):
        for _ in range(2):
            step(x)
        sync(args.device)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with profile(activities=acts) as prof:
            step(x)
            sync(args.device)
    key = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"
    mode = "compiled" if args.profile_compile else "eager"
    print(f"\n== one {mode} {variant} step at context {context} x batch {batch}: top kernels", flush=True)
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70))
    cats = {}
    if args.device == "cuda":
        busy, span = gpu_busy(prof)
        print(f"GPU busy {busy:.1f} ms of the step's {span:.1f} ms kernel span (idle: waiting on the host)")
        cats = kernel_categories(prof)
    if args.profile_host:
        print(f"\n== the same step: top ops by host time", flush=True)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=2 * rows,
                                        max_name_column_width=70))
        import cProfile
        import pstats
        with sdpa_context(variant, args.device):
            py = cProfile.Profile()
            py.runcall(step, x)
            sync(args.device)
        print("== the same step under cProfile: top Python functions by own time", flush=True)
        pstats.Stats(py).sort_stats("tottime").print_stats(rows)
    del step, x
    release(args.device, args.profile_compile)
    return cats


# kernel name fragments -> category, first match wins (inductor / cuBLAS / cuDNN / Triton / ATen names). Inductor's
# kernels come first: it names a fused kernel after the ops it holds or feeds (RoPE before the attention op's
# inputs reads "..._threshold_attention_fwd_..."), so their names say little about what they compute
CATEGORIES = (
    ("inductor fused", ("triton_poi", "triton_red", "triton_per")),
    ("attention", ("attention_fwd", "attention_bwd", "inv_norm_kernel", "flash", "fmha", "cudnn", "sdpa", "attn")),
    ("loss", ("_ce_", "cross_entropy")),
    ("rms norm", ("rms_norm",)),
    ("rope", ("rope",)),
    ("gemm", ("nvjet", "gemm", "cutlass", "xmma", "sm90_", "sm80_", "triton_tem_")),
    ("optimizer", ("multi_tensor", "adam", "foreach")),
    ("copy / cast", ("copy", "cast")),
    ("elementwise", ("elementwise", "reduce_kernel", "fill", "memset", "index")),
)


def kernel_category(name: str) -> str:
    low = name.lower()
    for cat, frags in CATEGORIES:
        if any(f in low for f in frags):
            return cat
    return "other"


def kernel_categories(prof) -> dict:
    """GPU ms of one profiled step per kernel category (CATEGORIES)."""
    out: dict = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            cat = kernel_category(e.name)
            out[cat] = out.get(cat, 0.0) + (e.time_range.end - e.time_range.start) / 1e3
    return out


def category_table(profiles: dict) -> str:
    """One row per kernel category, one column per profiled variant (GPU ms of one step)."""
    names = list(profiles)
    cats = sorted({c for p in profiles.values() for c in p}, key=lambda c: -max(p.get(c, 0) for p in profiles.values()))
    out = ["| kernels | " + " | ".join(f"{n} ms" for n in names) + " |", "|---" + "|---:" * len(names) + "|"]
    for c in cats + ["total"]:
        vals = [sum(p.values()) if c == "total" else p.get(c, 0.0) for p in profiles.values()]
        out.append(f"| {c} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    return "\n".join(out)


def gpu_busy(prof) -> tuple[float, float]:
    """(ms the GPU ran a kernel, ms from the first kernel's start to the last one's end) of a profile."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    if not spans:
        return 0.0, 0.0
    busy, (lo, hi) = 0.0, spans[0]
    for a, b in spans[1:]:
        if a > hi:
            busy += hi - lo
            lo, hi = a, b
        else:
            hi = max(hi, b)
    busy += hi - lo
    return busy / 1e3, (max(b for _, b in spans) - spans[0][0]) / 1e3


def parse_ints(text: str) -> list[int]:
    """'1024,4k' -> [1024, 4096]."""
    return [int(t[:-1]) * 1024 if t.lower().endswith("k") else int(t) for t in text.split(",") if t]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="1024,4096,8192,16384,32768", help="comma list; 4k style allowed")
    ap.add_argument("--tokens-per-step", type=int, default=32768, help="batch = this / context")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--compile-contexts", default="1024,4096,8192,16384,32768",
                    help="contexts also run under torch.compile (tda, softmax); '' for none")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="a 2 x 64 model (smoke tests, CPU)")
    ap.add_argument("--json", default=None, help="write the rows here as JSON")
    ap.add_argument("--profile", type=int, default=0, metavar="CONTEXT",
                    help="also print the top CUDA kernels of one step of each --profile-variant at this context")
    ap.add_argument("--profile-compile", action="store_true", help="profile a compiled step, not an eager one")
    ap.add_argument("--profile-variant", default="tda",
                    help="comma list of the variants --profile runs (then a table of GPU ms per kernel category)")
    ap.add_argument("--profile-host", action="store_true", help="--profile also lists the top ops by host time")
    ap.add_argument("--activation-checkpoint", type=int, default=0, metavar="K",
                    help="recompute every K-th block in the backward (as tda train's activation_checkpoint)")
    ap.add_argument("--without", default="", help=f"comma list of the step's parts to run plain: {', '.join(PARTS)}")
    args = ap.parse_args(argv)
    args.without = [w for w in args.without.split(",") if w]
    for w in args.without:
        if w not in PARTS:
            raise SystemExit(f"--without: unknown part {w!r} (known: {', '.join(PARTS)})")
    args.contexts = parse_ints(args.contexts)
    compile_contexts = parse_ints(args.compile_contexts)
    args.all_contexts = args.contexts + compile_contexts
    if not args.all_contexts:
        raise SystemExit("--contexts / --compile-contexts: no context to run")
    variants = [v for v in args.variants.split(",") if v]
    args.profile_variants = [v for v in args.profile_variant.split(",") if v]
    for flag, names in (("--variants", variants), ("--profile-variant", args.profile_variants)):
        for v in names:
            if v not in VARIANTS:
                raise SystemExit(f"{flag}: unknown variant {v!r} (known: {', '.join(VARIANTS)})")
    for c in args.contexts + compile_contexts:
        if c < 1 or args.tokens_per_step % c:
            raise SystemExit(f"--contexts: {c} does not divide --tokens-per-step {args.tokens_per_step}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available (use --device cpu --tiny)")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}"
              f"{'; without ' + ', '.join(args.without) if args.without else ''}", flush=True)
    with plain_parts(args.without):
        return run(args, variants, compile_contexts)


@contextlib.contextmanager
def plain_parts(without: list[str]):
    """The fused parts named in --without turned off for the duration (the layers' loaders of their Triton
    modules then say none is installed, and the layers run their torch expressions)."""
    import tda.layers.common as common
    saved = common._fused_rms_norm, common._fused_project_rope
    if "fused-norm" in without:
        common._fused_rms_norm = lambda: None
    if "fused-projection" in without:
        common._fused_project_rope = lambda: None
    try:
        yield
    finally:
        common._fused_rms_norm, common._fused_project_rope = saved


def run(args, variants, compile_contexts):
    base = base_config(args)
    args.contexts = sorted(args.contexts)
    t_start = time.perf_counter()
    rows = []
    plan = [(c, v, False) for c in args.contexts for v in variants]
    plan += [(c, v, True) for c in sorted(compile_contexts) for v in variants if v != "softmax-flash"]
    for ctx, variant, comp in plan:
        r = run_one(base, variant, ctx, args.tokens_per_step // ctx, comp, args)
        rows.append(r)
        res = f"{r.tok_s:,.0f} tok/s, {r.step_ms:.1f} ms/step" if r.tok_s else r.note
        mem = f", peak {r.peak_gb:.2f} GiB" if r.peak_gb is not None else ""
        mem += f", host {r.host_ms:.1f} ms" if r.host_ms is not None else ""
        print(f"{variant:>13} ctx {ctx:>6} {'compile' if comp else 'eager':>7}: {res}{mem} "
              f"[{time.perf_counter() - t_start:.0f} s]", flush=True)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                       "torch": torch.__version__, "tokens_per_step": args.tokens_per_step, "without": args.without,
                       "activation_checkpoint": args.activation_checkpoint,
                       "model": dataclasses.asdict(base), "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1)
    if args.profile:
        batch = max(1, args.tokens_per_step // args.profile)
        profiles = {v: profile_step(base, args.profile, batch, args, v) for v in args.profile_variants}
        if any(profiles.values()):
            mode = "compiled" if args.profile_compile else "eager"
            print(f"\n== GPU time of one {mode} step at context {args.profile} by kernel category")
            print(category_table(profiles))
    return rows


if __name__ == "__main__":
    main()
