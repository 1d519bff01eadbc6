"""Length extrapolation: perplexity on held-out long documents at 1x ... 8x the training context.

For each evaluation length L = f · train_len we cut non-overlapping windows of L+1 tokens from the
documents that are long enough (inputs = first L, targets = shifted by one), run one forward per window
with no truncation, and report

    ppl       exp(mean NLL over all L positions of every window)
    ppl_tail  exp(mean NLL over the last train_len positions) — the tokens that sit beyond the trained
              range when f > 1 (equal to ppl at f = 1)
    nll_by_position  mean NLL in position buckets (for the curve)

Windows come from the same documents, in the same order, for every model; the number of windows per
length is min(max_windows, available, max(1, token_budget // L)) so each length sees a similar number
of tokens. With `rope_scaling=True` the model's RoPE is NTK-scaled by s = L / train_len
(`model.set_rope_scaling(s)`) for that length and restored afterwards.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from .bos import with_bos


def make_windows(docs, L: int, n: int, bos_id: int | None = None) -> list:
    """Up to n token windows of length L+1, non-overlapping, taken document by document in order.
    With bos_id (a model trained with a fixed first token) a window is [bos_id] + L document tokens, so
    the inputs start with bos_id and all L targets are document tokens, as in training."""
    if bos_id is not None:
        return list(itertools.islice((with_bos(doc[s:s + L], bos_id) for doc in docs
                                      for s in range(0, len(doc) - L + 1, L)), n))
    out = []
    for doc in docs:
        for s in range(0, len(doc) - L, L + 1):
            if len(out) >= n:
                return out
            w = doc[s:s + L + 1]
            if len(w) == L + 1:
                out.append(list(w))
    return out


@torch.no_grad()
def window_nll(model, window) -> torch.Tensor:
    """Per-position NLL (L,) of one window of L+1 tokens."""
    device = next(model.parameters()).device
    t = torch.tensor([window], dtype=torch.long, device=device)
    logits = model(t[:, :-1])
    return F.cross_entropy(logits[0].float(), t[0, 1:], reduction="none").cpu()


@torch.no_grad()
def extrapolation_perplexity(model, docs, train_len: int, factors=(1, 2, 4, 8), rope_scaling: bool = False,
                             max_windows: int = 8, token_budget: int = 32768, n_buckets: int = 16,
                             progress: bool = False, bos_id: int | None = None) -> dict:
    """docs: list of token-id lists (held-out). Returns {"train_len", "rope_scaling", "results": [
    {"factor", "length", "n_windows", "ppl", "ppl_tail", "bucket_edges", "nll_by_position"}]};
    a length with no window long enough gets n_windows 0 and NaN values. bos_id: see make_windows."""
    model.eval()
    original = getattr(model.config, "rope_scaling", 1.0)
    results = []
    it = factors
    if progress:
        from tqdm import tqdm
        it = tqdm(factors, desc="extrapolation")
    try:
        for f in it:
            L = int(round(f * train_len))
            n = min(max_windows, max(1, token_budget // L))
            wins = make_windows(docs, L, n, bos_id)
            if rope_scaling:
                model.set_rope_scaling(max(1.0, L / train_len))
            if not wins:
                results.append({"factor": f, "length": L, "n_windows": 0, "ppl": float("nan"),
                                "ppl_tail": float("nan"), "bucket_edges": [], "nll_by_position": []})
                continue
            nll = torch.stack([window_nll(model, w) for w in wins])            # (n, L)
            edges = torch.linspace(0, L, n_buckets + 1).round().long().tolist()
            buckets = [nll[:, a:b].mean().item() for a, b in zip(edges[:-1], edges[1:]) if b > a]
            tail = nll[:, -min(train_len, L):]
            results.append({
                "factor": f, "length": L, "n_windows": len(wins),
                "ppl": math.exp(nll.mean().item()), "ppl_tail": math.exp(tail.mean().item()),
                "bucket_edges": edges, "nll_by_position": buckets,
            })
    finally:
        if rope_scaling:
            model.set_rope_scaling(original)
    return {"train_len": train_len, "rope_scaling": rope_scaling, "results": results}
