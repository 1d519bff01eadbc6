"""Parameter-count matching across attention variants.

Attention families differ in parameter count (a gate projection, a second q/k view, a few scalars). To
compare them at equal size, each variant's MLP width is chosen so the model's non-embedding parameter
count equals the softmax model's: every block has 2·C·h MLP weights (+ h + C biases when bias=True), so
the count is affine in h = mlp_hidden. `match_mlp_hidden` measures that line at two widths (a model built
on the meta device: no memory, no init cost) and solves for h, rounded to a multiple of `multiple_of`.
"""
from __future__ import annotations

import dataclasses

import torch

from .gpt import GPT

REFERENCE = "softmax"


def count_params(config, non_embedding: bool = True) -> int:
    """Non-embedding parameter count of GPT(config), without allocating it."""
    with torch.device("meta"):
        model = GPT(config)
    return model.num_params(non_embedding=non_embedding)


def match_mlp_hidden(config, target_params: int, multiple_of: int = 1) -> int:
    """The mlp_hidden for which GPT(config) has ~target_params non-embedding parameters."""
    h0 = config.mlp_hidden
    p0 = count_params(dataclasses.replace(config, mlp_hidden=h0))
    p1 = count_params(dataclasses.replace(config, mlp_hidden=h0 + multiple_of))
    per_unit = (p1 - p0) / multiple_of
    h = h0 + (target_params - p0) / per_unit
    h = int(round(h / multiple_of)) * multiple_of
    if h < multiple_of:
        raise ValueError(f"attention={config.attention!r} alone exceeds target_params={target_params}: "
                         f"no mlp_hidden >= {multiple_of} can match it")
    return h


def matched_config(config, attention: str, reference: str = REFERENCE, multiple_of: int = 1):
    """A copy of `config` with `attention` set and mlp_hidden matched to the `reference` variant's size
    (the reference keeps config.mlp_hidden)."""
    ref = dataclasses.replace(config, attention=reference)
    out = dataclasses.replace(config, attention=attention)
    if attention == reference:
        return out
    return dataclasses.replace(out, mlp_hidden=match_mlp_hidden(out, count_params(ref), multiple_of))
