"""Exact-zero fraction of the causal attention weights (the paper reports > 99% for TDA)."""
from __future__ import annotations

import torch


@torch.no_grad()
def exact_zero_fraction(model, input_ids: torch.Tensor) -> dict:
    """Fraction of weights that are exactly 0.0 among the causal entries (j <= i, diagonal included).

    Runs one forward of `input_ids` (B, N) with attention recording on, then turns it off again.
    Returns {"overall": float, "per_layer": [float, ...], "causal_weights": int (per layer)}.
    Softmax layers record probabilities (exact zeros only by underflow); TDA records the signed
    weights a1 - lam * a2.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, N), got shape {tuple(input_ids.shape)}")
    was_training = model.training
    model.eval()
    model.record_attention(True)
    try:
        model(input_ids)
        weights = model.attention_weights()
    finally:
        model.record_attention(False)
        model.train(was_training)
    per_layer, zeros_total, count_total = [], 0, 0
    for w in weights:
        if w is None:
            raise ValueError("a layer recorded no attention weights (does it support record_attention?)")
        M, N = w.shape[-2:]
        causal = torch.ones(M, N, dtype=torch.bool, device=w.device).tril(N - M)  # bottom-right aligned
        vals = w[..., causal]
        zeros = int((vals == 0).sum())
        per_layer.append(zeros / vals.numel())
        zeros_total += zeros
        count_total += vals.numel()
    return {"overall": zeros_total / max(count_total, 1), "per_layer": per_layer,
            "causal_weights": count_total // max(len(weights), 1)}
