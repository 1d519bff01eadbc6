"""Cached generation on CUDA against full forwards, for every attention variant (the CPU tests' check, on the
GPU paths: fused prefill kernels, fused RoPE, SDPA with a key mask, the cached TDA entry's "auto" backend).

For each variant and dtype: two sequences with prompts of different lengths prefilled into one cache, then
decoded token by token. Per step, the logits are compared three ways:
- against one full forward over the same tokens in the same dtype (the relative difference);
- against the same model in float64 (the same rounded weights), as ref64;
- the precision criterion: |cached - ref64| <= 2 |full - ref64| + 1e-6 |ref64| (relative norms), i.e. the
  cached path's error stays within twice the plain forward's own error at that precision.
It also checks whether greedy generation with the cache gives the tokens of generation without it, and
whether decode steps replayed from a CUDA graph (cuda_graph=True) give the eager path's tokens. In fp32 the
greedy tokens must be identical. In bf16 the cached and uncached paths round differently, so where the two
best tokens lie within that rounding they may part: reported "tie at N" (the decode step, and the float64
model's logit gap between the two tokens relative to its largest logit), and a pass only if the cached
logits at that step are still within the precision criterion.

    PYTHONPATH=src python3 benchmarks/check_generate_cuda.py [--variants tda,softmax]

Exits non-zero when a variant fails: an error, the precision criterion, or greedy tokens that differ.
--device cpu runs the same checks without the CUDA graph (a smoke test; tests/test_generate.py uses it).
"""
import argparse
import copy
import sys

import torch

from tda.models.config import GPTConfig
from tda.layers import ATTENTION
from tda.models import GPT


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def _near_tie(model, model64, x, eager, plain):
    """Greedy tokens with and without the cache part at some step t: a near-tie, i.e. "tie at t", when the
    cached logits there are still within the precision bound (the two paths round differently and the two
    top tokens lie within that rounding), else False (a real fault)."""
    t = int((eager[0] != plain[0]).nonzero()[0])
    cache = model.new_cache(1, t)
    logits = model(x, cache=cache)[0, -1]
    for tok in eager[0, x.shape[1]:t]:   # the decode steps eager generation took, one token at a time
        logits = model(tok.view(1, 1), cache=cache)[0, -1]
    prefix = eager[:, :t]
    full, ref = model(prefix)[0, -1].double(), model64(prefix)[0, -1]
    a, b = int(eager[0, t]), int(plain[0, t])
    ratio = _rel(logits.double(), ref) / (2 * _rel(full, ref) + 1e-6)
    gap = abs(float(ref[a] - ref[b])) / float(ref.abs().max())
    return f"tie at {t - x.shape[1]} (gap {gap:.0e})" if ratio <= 1.0 else False


@torch.no_grad()
def check(attention, dtype, n_kv_head=2, device="cuda", steps=48, sizes=(256, 150, 200, 100, 137)):
    """(worst relative difference cached vs full, worst |cached - ref64| / (2 |full - ref64| + atol), greedy
    tokens equal to uncached, CUDA-graph tokens equal to eager or None off CUDA)."""
    width, *lens = sizes
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=512, block_size=256, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=width,
                    attention=attention, beta_init=0.5)
    model = GPT(cfg).to(device).to(dtype).eval()
    model64 = copy.deepcopy(model).double()       # the same rounded weights, in float64
    g = torch.Generator(device=device).manual_seed(1)
    seqs = [torch.randint(0, 512, (n,), device=device, generator=g) for n in lens[:2]]
    prompt = lens[2:]
    full = [model(s[None])[0].double() for s in seqs]
    ref64 = [model64(s[None])[0] for s in seqs]
    cache = model.new_cache(2, 256)
    for b, (s, n) in enumerate(zip(seqs, prompt)):
        model(s[None, :n], cache=cache.row(b))
    worst, worst_ratio = 0.0, 0.0
    for t in range(steps):
        step = torch.stack([s[n + t] for s, n in zip(seqs, prompt)])[:, None]
        logits = model(step, cache=cache)[:, 0].double()
        for b, n in enumerate(prompt):
            ref, full_lo = ref64[b][n + t], full[b][n + t]
            worst = max(worst, _rel(logits[b], full_lo))
            worst_ratio = max(worst_ratio, _rel(logits[b], ref) / (2 * _rel(full_lo, ref) + 1e-6))
    x = seqs[0][None, :64]
    eager = model.generate(x, 32, temperature=0)
    plain = model.generate(x, 32, temperature=0, use_cache=False)
    same = torch.equal(eager, plain)
    if not same and dtype != torch.float32:
        same = _near_tie(model, model64, x, eager, plain)
    same_graph = None
    if device == "cuda":
        # decode steps replayed from one CUDA graph (static decoding): the eager path's tokens, for prompts of
        # two lengths in one batch
        prompts = [seqs[0][:37], seqs[1][:64]]
        graphed = model.generate(prompts, 32, temperature=0, cuda_graph=True)
        same_graph = all(torch.equal(a, b) for a, b in zip(graphed, model.generate(prompts, 32, temperature=0)))
    return worst, worst_ratio, same, same_graph


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(sorted(ATTENTION)), help="comma-separated attention variants")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(ATTENTION)
    if unknown:
        ap.error(f"--variants: {sorted(unknown)} not among {sorted(ATTENTION)}")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}")
    print(f"{'variant':<14}{'dtype':<10}{'cached vs full':>15}{'err / bound':>13}  greedy == uncached  "
          f"CUDA graph == eager")
    failed = 0
    for att in variants:
        for dtype in (torch.float32, torch.bfloat16):
            try:
                err, ratio, same, same_graph = check(att, dtype, device=args.device)
                failed += not (same is not False and same_graph is not False and ratio <= 1.0)
                print(f"{att:<14}{str(dtype)[6:]:<10}{err:>15.2e}{ratio:>13.3f}  {str(same):<18}  {same_graph}",
                      flush=True)
            except Exception as e:  # report every variant, not just the first failure
                failed += 1
                print(f"{att:<14}{str(dtype)[6:]:<10}  FAILED: {type(e).__name__}: {e}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
