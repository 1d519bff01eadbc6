"""Cached generation on CUDA against full forwards, for every attention variant (the CPU tests' check, on the
GPU paths: fused prefill kernels, fused RoPE, SDPA with a key mask, the cached TDA entry's "auto" backend).

For each variant and dtype: two sequences with prompts of different lengths prefilled into one cache, then
decoded token by token; the worst relative error of the step logits against one full forward over the same
tokens, whether greedy generation with the cache gives the tokens of generation without it, and whether
decode steps replayed from a CUDA graph (cuda_graph=True) give the eager path's tokens.

    PYTHONPATH=src python3 benchmarks/check_generate_cuda.py [--variants tda,softmax]

Exits non-zero when a variant fails (an error, or greedy tokens that differ from the uncached path's).
"""
import argparse
import sys

import torch

from tda.models.config import GPTConfig
from tda.layers import ATTENTION
from tda.models import GPT


@torch.no_grad()
def check(attention, dtype, n_kv_head=2):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=512, block_size=256, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=256,
                    attention=attention, beta_init=0.5)
    model = GPT(cfg).cuda().to(dtype).eval()
    g = torch.Generator(device="cuda").manual_seed(1)
    seqs = [torch.randint(0, 512, (n,), device="cuda", generator=g) for n in (150, 200)]
    prompt = [100, 137]
    full = [model(s[None])[0].float() for s in seqs]
    cache = model.new_cache(2, 256)
    for b, (s, n) in enumerate(zip(seqs, prompt)):
        model(s[None, :n], cache=cache.row(b))
    worst = 0.0
    for t in range(48):
        step = torch.stack([s[n + t] for s, n in zip(seqs, prompt)])[:, None]
        logits = model(step, cache=cache)[:, 0].float()
        for b, n in enumerate(prompt):
            ref = full[b][n + t]
            worst = max(worst, ((logits[b] - ref).norm() / ref.norm()).item())
    x = seqs[0][None, :64]
    eager = model.generate(x, 32, temperature=0)
    same = torch.equal(eager, model.generate(x, 32, temperature=0, use_cache=False))
    # decode steps replayed from one CUDA graph (static decoding): the eager path's tokens, for prompts of
    # two lengths in one batch
    prompts = [seqs[0][:37], seqs[1][:64]]
    graphed = model.generate(prompts, 32, temperature=0, cuda_graph=True)
    same_graph = all(torch.equal(a, b) for a, b in zip(graphed, model.generate(prompts, 32, temperature=0)))
    return worst, same, same_graph


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(sorted(ATTENTION)), help="comma-separated attention variants")
    variants = [v for v in ap.parse_args().variants.split(",") if v]
    unknown = set(variants) - set(ATTENTION)
    if unknown:
        ap.error(f"--variants: {sorted(unknown)} not among {sorted(ATTENTION)}")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'variant':<14}{'dtype':<10}{'max rel err':>12}  greedy == uncached  CUDA graph == eager")
    failed = 0
    for att in variants:
        for dtype in (torch.float32, torch.bfloat16):
            try:
                err, same, same_graph = check(att, dtype)
                failed += not (same and same_graph)
                print(f"{att:<14}{str(dtype)[6:]:<10}{err:>12.2e}  {str(same):<18}  {same_graph}", flush=True)
            except Exception as e:  # report every variant, not just the first failure
                failed += 1
                print(f"{att:<14}{str(dtype)[6:]:<10}  FAILED: {type(e).__name__}: {e}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
